"""Benchmark: style transfer by a reference image, learned (AdaIN-style
:class:`~medgen.generative.StyleTransfer`) against histogram matching to the same reference
(:func:`~medgen.generative.translation.transfer_style`), on the simulator's counterfactual truth
(issue 14).

Cohort: the ``demo`` preset's three sites (site_A FLAIR; site_B FLAIR, blurred, noisier, other
units; site_C T2) at ``--n-subjects`` subjects, ``--image-size`` pixels (64x64 slices), seed
``--seed``, every subject also rendered at the two other sites (``counterfactual=("site",)``).

The model trains on the training split's triples (content, a reference of another training
subject at another site, the content's counterfactual render at the reference's site) for
``--budget-s`` seconds or ``--max-steps`` steps, whichever comes first. Every test image is then
given the style of a test reference of another subject at each other site (the same reference
for every method) and scored against its counterfactual render there: masked PSNR / SSIM (the
truth's foreground, data range 1, each image in its robust range) and the median lesion contrast
ratio (1 = preserved), for the identity, reference histogram matching and the model.

Held-out style (``--held-out site_C``, the default; ``--held-out none`` skips it): a second model
trains with site_C never a reference or target (its images still serve as content), for
``--held-out-budget-s`` seconds; its rows with a site_C reference show whether the model
generalises to a style it never saw.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/style_transfer.py --out /tmp/st   # full (~25 min)
    python benchmarks/style_transfer.py --quick                           # smoke (~30 s)

Writes ``results.csv`` (one row per test image, reference site, method and model),
``summary.csv`` (per direction and overall) and ``summary.json`` (the same with the run's
conditions) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

LEARNED = "style-transfer"
BASELINE = "reference-histogram"


def cohort_config(args: argparse.Namespace) -> Any:
    """The ``--preset`` config at ``--n-subjects`` and ``--image-size``."""
    from medgen.simulate import preset

    cfg = preset(args.preset)
    cfg.population.n_subjects = args.n_subjects
    cfg.anatomy.image_size = args.image_size
    return cfg.validate()


def train(
    cohort: Any, args: argparse.Namespace, held_out: list[str], budget: float
) -> tuple[Any, float]:
    """A fitted model (``held_out`` sites never a reference) and its training seconds."""
    from medgen.generative.style import StyleTransfer

    model = StyleTransfer(
        channels=tuple(args.channels),
        style_channels=tuple(args.style_channels),
        patch_size=args.patch_size,
        adv_weight=args.adv_weight,
        mse_weight=args.mse_weight,
        lr_g=args.lr,
    )
    engine = {
        "epochs": max(1, args.max_steps // args.steps_per_epoch),
        "steps_per_epoch": min(args.steps_per_epoch, args.max_steps),
        "batch_size": args.batch_size,
        "time_budget_s": budget,
        "lr_schedule": args.lr_schedule,
        "device": args.device,
    }
    t0 = time.perf_counter()
    model.fit(cohort, config=engine, held_out=held_out, seed=args.seed)
    seconds = time.perf_counter() - t0
    logging.info(
        "trained (held out: %s) %d steps in %.0f s; last epoch l1 %.4f",
        held_out or "none",
        model.steps_trained,
        seconds,
        model.history[-1]["l1"] if model.history else float("nan"),
    )
    return model, seconds


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, direction, method) and overall: n, mean PSNR / SSIM, median lesion contrast
    ratio; the learned rows' PSNR gain over reference histogram matching (same pairs)."""
    rows = []
    keys = ["model", "source_value", "reference_value"]
    for direction, part in [*table.groupby(keys, sort=False), *table.groupby(["model"])]:
        if not isinstance(direction, tuple) or len(direction) == 1:
            label = {"source_value": "all", "reference_value": "all"}
            model = direction[0] if isinstance(direction, tuple) else direction
        else:
            model, src, ref = direction
            label = {"source_value": src, "reference_value": ref}
        base = part[part["method"] == BASELINE]["psnr"].mean()
        for method, m in part.groupby("method", sort=False):
            rows.append(
                {
                    "model": model,
                    **label,
                    "method": method,
                    "n": len(m),
                    "psnr": m["psnr"].mean(),
                    "ssim": m["ssim"].mean(),
                    "lesion_contrast_ratio": m["lesion_contrast_ratio"].median(),
                    "gain_db": m["psnr"].mean() - base if method == LEARNED else np.nan,
                }
            )
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="demo", help="a preset with at least 3 sites")
    p.add_argument("--n-subjects", type=int, default=400)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--budget-s", type=float, default=600.0, help="training seconds")
    p.add_argument("--max-steps", type=int, default=20000)
    p.add_argument("--steps-per-epoch", type=int, default=250)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=64)
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--style-channels", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-schedule", default="constant")
    p.add_argument("--adv-weight", type=float, default=0.0, help="conditional PatchGAN weight")
    p.add_argument("--mse-weight", type=float, default=0.0)
    p.add_argument(
        "--held-out",
        default="site_C",
        help="train a second model with this site never a reference ('none': skip)",
    )
    p.add_argument("--held-out-budget-s", type=float, default=None, help="default: --budget-s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="smoke run: 40 subjects, 32x32, 20 steps")
    args = p.parse_args()
    if args.quick:
        args.n_subjects, args.image_size, args.max_steps = 40, 32, 20
        args.steps_per_epoch, args.budget_s, args.batch_size = 10, 30.0, 4
        args.patch_size, args.channels, args.style_channels = 32, [4, 8], [4, 8]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    from medgen.cohort import Cohort
    from medgen.generative.style import evaluate_style_transfer
    from medgen.simulate import simulate

    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="medgen_style_"))
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    load_start = os.getloadavg()
    manifest = simulate(
        cohort_config(args),
        out / "cohort",
        seed=args.seed,
        progress=False,
        counterfactual=("site",),
    )
    cohort = Cohort.from_manifest(manifest)
    logging.info("simulated %d images in %.0f s", len(cohort.df), time.perf_counter() - t_all)
    fitted = {"all sites": train(cohort, args, [], args.budget_s)}
    if args.held_out.lower() != "none":
        budget = args.held_out_budget_s if args.held_out_budget_s is not None else args.budget_s
        fitted[f"{args.held_out} held out"] = train(cohort, args, [args.held_out], budget)
    models = {name: m for name, (m, _) in fitted.items()}
    tables = []
    for name, model in models.items():
        t = evaluate_style_transfer(model, cohort, seed=args.seed)
        if tables:  # the identity and the baseline are the same rows for every model
            t = t[t["method"] == LEARNED]
        t.insert(0, "model", name)
        tables.append(t)
    results = pd.concat(tables, ignore_index=True)
    shared = results["method"] != LEARNED
    both = [results[~shared]]
    for name in models:  # each model's table: its rows beside the shared baselines
        both.append(results[shared].assign(model=name))
    scored = pd.concat(both, ignore_index=True)
    order = {"identity": 0, BASELINE: 1, LEARNED: 2}
    scored = scored.sort_values(
        ["model", "source_value", "reference_value", "method"],
        key=lambda c: c.map(order) if c.name == "method" else c,
        kind="stable",
    )
    summary = summarise(scored)
    results.to_csv(out / "results.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    meta = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch_threads": torch.get_num_threads(),
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "wall_s": round(time.perf_counter() - t_all, 1),
        "models": {
            name: {
                "steps": m.steps_trained,
                "fit_s": round(fitted[name][1], 1),
                "held_out": m.held_out,
                "last_l1": m.history[-1]["l1"] if m.history else None,
                "weights_sha256": m.weights_sha256,
            }
            for name, m in models.items()
        },
        "n_test_pairs": int((results["method"] == "identity").sum()),
    }
    (out / "summary.json").write_text(
        json.dumps({"meta": meta, "summary": summary.to_dict("records")}, indent=1, default=float)
    )
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary.round(3).to_string(index=False))
    for name, m in meta["models"].items():
        print(f"{name}: {m['steps']} steps in {m['fit_s']} s")
    print(
        f"wall time {meta['wall_s']} s, {meta['torch_threads']} torch thread(s), load "
        f"{load_start[0]:.2f} -> {meta['load_end'][0]:.2f}; results in {out}"
    )


if __name__ == "__main__":
    main()
