"""Benchmark: medgen.audit against fairlearn's MetricFrame on the same data, in one process.

Data: N rows (1e5 and 1e6 by default), a binary label, a continuous score, two sensitive attributes
(``sex``: 2 groups, ``site``: 8 groups) and their intersection (16 groups).

- medgen: ``audit(..., n_boot=0)`` (point estimates, disparities, summary) and
  ``audit(..., n_boot=1000)`` (plus 1,000-resample stratified bootstrap CIs and p-values).
- fairlearn: one ``MetricFrame`` per attribute (``sex``, ``site``, ``[sex, site]``) with AUC, Brier,
  accuracy, TPR, FPR and selection rate: "one pass without CIs". fairlearn's own bootstrap
  (``MetricFrame(n_boot=...)``) is timed with a few resamples and extrapolated linearly to 1,000
  (it refits every MetricFrame per resample, so its cost is linear in ``n_boot``).

Peak memory is the rise of the process's resident set size during the call, sampled every 5 ms.

Usage::

    python benchmarks/audit.py                  # 1e5 and 1e6 rows
    python benchmarks/audit.py --sizes 100000 --fairlearn-boot 3
"""

from __future__ import annotations

import argparse
import gc
import os
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd


def make_data(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], n)
    site = rng.choice([f"site{i}" for i in range(8)], n)
    y = (rng.random(n) < np.where(sex == "F", 0.3, 0.4)).astype(int)
    logit = rng.normal(0, 1, n) + 1.5 * y - 0.8 + 0.1 * (site == "site3")
    return pd.DataFrame(
        {"y_true": y, "y_score": 1 / (1 + np.exp(-logit)), "sex": sex, "site": site}
    )


def _rss() -> int:
    """Resident set size of this process in bytes (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn: Callable[[], Any]) -> tuple[float, float]:
    """(seconds, peak MiB above the starting RSS) of one call.

    A thread samples the RSS every 5 ms (tracemalloc would slow pandas-heavy code by 10x).
    """
    gc.collect()
    base = _rss()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    stop.set()
    th.join()
    return dt, (max(peak[0], _rss()) - base) / 2**20


def fairlearn_pass(df: pd.DataFrame, n_boot: int | None = None) -> None:
    from fairlearn.metrics import (
        MetricFrame,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )
    from sklearn.metrics import accuracy_score, brier_score_loss, roc_auc_score

    y = df["y_true"].to_numpy()
    s = df["y_score"].to_numpy()
    y_pred = (s >= 0.5).astype(int)
    pred_metrics = {
        "accuracy": accuracy_score,
        "tpr": true_positive_rate,
        "fpr": false_positive_rate,
        "selection_rate": selection_rate,
    }
    score_metrics = {"auc": roc_auc_score, "brier": brier_score_loss}
    kw: dict[str, Any] = {}
    if n_boot:
        kw = {"n_boot": n_boot, "ci_quantiles": [0.025, 0.975], "random_state": 0}
    for feature in (df["sex"], df["site"], df[["sex", "site"]]):
        MetricFrame(metrics=pred_metrics, y_true=y, y_pred=y_pred, sensitive_features=feature, **kw)
        MetricFrame(metrics=score_metrics, y_true=y, y_pred=s, sensitive_features=feature, **kw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument(
        "--fairlearn-boot",
        type=int,
        default=2,
        help="resamples for fairlearn's bootstrap (extrapolated to --n-boot); 0 skips it",
    )
    args = parser.parse_args()

    from medgen.audit import audit
    from medgen.errors import MetricWarning

    warnings.simplefilter("ignore", MetricWarning)
    rows = []
    for n in args.sizes:
        df = make_data(n)
        # warm-up (imports, caches) on a small slice so no timing pays one-off costs
        audit(df.iloc[:2000], sensitive=["sex", "site"], n_boot=10, seed=0)
        fairlearn_pass(df.iloc[:2000])

        t_fl, m_fl = measure(lambda df=df: fairlearn_pass(df))
        t_pt, m_pt = measure(lambda df=df: audit(df, sensitive=["sex", "site"], n_boot=0, seed=0))
        t_ci, m_ci = measure(
            lambda df=df: audit(df, sensitive=["sex", "site"], n_boot=args.n_boot, seed=0)
        )
        row = {
            "rows": n,
            "fairlearn pass s": t_fl,
            "fairlearn MiB": m_fl,
            "medgen no-CI s": t_pt,
            "medgen no-CI MiB": m_pt,
            f"medgen {args.n_boot}-boot s": t_ci,
            f"medgen {args.n_boot}-boot MiB": m_ci,
            "fl pass / medgen no-CI": t_fl / t_pt,
            f"fl pass / medgen {args.n_boot}-boot": t_fl / t_ci,
        }
        if args.fairlearn_boot:
            t_fb, _m_fb = measure(lambda df=df: fairlearn_pass(df, n_boot=args.fairlearn_boot))
            # per-resample cost = (bootstrapped run - plain pass) / resamples
            per = max(t_fb - t_fl, 0.0) / args.fairlearn_boot
            est = t_fl + per * args.n_boot
            row[f"fairlearn {args.n_boot}-boot s (extrapolated from {args.fairlearn_boot})"] = est
            row["fl boot / medgen boot"] = est / t_ci
        rows.append(row)
        print(pd.Series(row).to_string(float_format=lambda v: f"{v:,.2f}"), flush=True)
        print()
    table = pd.DataFrame(rows).set_index("rows").T
    print("## medgen.audit vs fairlearn MetricFrame (ratios > 1: medgen faster)")
    print(table.to_string(float_format=lambda v: f"{v:,.2f}"))


if __name__ == "__main__":
    main()
