"""``compare(a, b)``: per-group differences between two audits of the same rows, paired bootstrap."""

from __future__ import annotations

import html
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from medgen._internal.report import (
    atomic_write_text,
    figure_png,
    fmt,
    fmt_ci,
    html_table,
    markdown_table,
    render_html,
)
from medgen._version import __version__
from medgen.audit._audit import OVERALL, Grouping, RowData, _boot_key
from medgen.audit._bootstrap import cluster_map, draw_counts, percentile_ci
from medgen.audit._disparity import P_ADJUST, adjust_pvalues, bootstrap_pvalue
from medgen.audit._metrics import METRICS, Cells, cell_metrics, ece_bins, make_cells
from medgen.audit._report import AuditReport
from medgen.errors import MedgenValueError

__all__ = ["ComparisonReport", "compare"]

#: Metrics compared (prevalence is the same for both by construction).
COMPARE_METRICS: tuple[str, ...] = tuple(m for m in METRICS if m != "prevalence")
#: Metrics whose worst group and max - min gap over an attribute's groups are compared too.
GAP_METRICS: tuple[str, ...] = ("auc", "tpr")
#: The statistics of ``ComparisonReport.gaps``: the lowest group value and max - min.
GAP_STATISTICS: tuple[str, ...] = ("worst", "gap")


@dataclass
class ComparisonReport:
    """The result of :func:`medgen.audit.compare`.

    Attributes:
        table: one row per ``(attribute, group, metric)`` (attribute ``"overall"`` for everyone):
            ``a``, ``b``, ``delta = b - a`` with its paired-bootstrap CI, ``p_value`` (two-sided
            paired bootstrap test of ``delta == 0``), ``p_adjusted`` and ``significant``.
        gaps: one row per ``(attribute, metric, statistic)`` for :data:`GAP_METRICS`:
            ``statistic`` ``"worst"`` (the lowest group value) or ``"gap"`` (max - min over the
            attribute's groups; NaN groups ignored), ``a``, ``b``, ``delta`` with its CI from
            the same paired resamples as ``table`` (each resample's worst group and gap, so the
            worst group may change between resamples), ``p_value``, and ``p_adjusted`` /
            ``significant`` within this table (its own family).
        provenance: labels of the two audits, resamples, seed, versions.
    """

    table: pd.DataFrame
    provenance: dict[str, Any] = field(default_factory=dict)
    gaps: pd.DataFrame | None = None

    def to_html(self, path: str | os.PathLike[str] | None = None, *, images: bool = True) -> str:
        """One self-contained HTML page: a delta plot per attribute and the full table."""
        p = self.provenance
        la, lb = p.get("label_a", "a"), p.get("label_b", "b")
        sections: list[dict[str, Any]] = []
        for attr in dict.fromkeys(self.table.index.get_level_values("attribute")):
            sub = cast(pd.DataFrame, self.table.xs(attr, level="attribute"))
            header = ["group", "metric", la, lb, f"{lb} - {la} [CI]", "p", "p adjusted"]
            rows = []
            for key, r in sub.iterrows():
                group, metric = cast(tuple[str, str], key)
                rows.append(
                    (
                        [
                            str(group),
                            str(metric),
                            fmt(r["a"]),
                            fmt(r["b"]),
                            fmt_ci(r["delta"], r["delta_low"], r["delta_high"]),
                            fmt(r["p_value"], 4),
                            fmt(r["p_adjusted"], 4),
                        ],
                        "significant" if r["significant"] else "",
                    )
                )
            imgs = (
                [{"alt": f"{attr} deltas", "data": _delta_figure(attr, sub, la, lb)}]
                if images
                else []
            )
            sections.append(
                {
                    "title": f"By {attr}",
                    "note": "",
                    "table": html_table(header, rows),
                    "images": imgs,
                }
            )
        text = render_html(
            title=f"medgen audit comparison: {lb} vs {la}",
            subtitle=(
                f"{p.get('rows')} rows, paired bootstrap with {p.get('n_boot')} resamples, "
                f"seed {p.get('seed')}; red rows: adjusted p < {1 - p.get('ci', 0.95):.2g}"
            ),
            warnings=[],
            sections=sections,
            provenance=p,
        )
        if path is not None:
            atomic_write_text(Path(path), text)
        return text

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the table as one CSV file (atomically)."""
        return atomic_write_text(Path(path), self.table.to_csv())

    def to_markdown(self, *, digits: int = 3) -> str:
        """The table as Markdown."""
        return markdown_table(self.table, digits) + "\n"

    def _repr_html_(self) -> str:
        return f"<h4>{html.escape(str(self.provenance.get('label_b')))} vs " + (
            f"{html.escape(str(self.provenance.get('label_a')))}</h4>"
            + self.table.to_html(float_format=lambda v: f"{v:.3f}")
        )


def _delta_figure(attr: str, sub: pd.DataFrame, la: str, lb: str) -> str:
    from matplotlib.figure import Figure

    metrics = ["auc", "tpr", "fpr", "ppv", "brier", "ece"]
    groups = list(dict.fromkeys(sub.index.get_level_values("group")))
    fig = Figure(figsize=(12, max(2.5, 0.3 * len(groups) + 1.2) * 2), layout="constrained")
    axes = fig.subplots(2, 3)
    ypos = np.arange(len(groups))
    for ax, m in zip(axes.ravel(), metrics, strict=True):
        d = sub.xs(m, level="metric").reindex(groups)
        v = d["delta"].to_numpy(dtype=np.float64)
        err = np.vstack(
            [
                np.nan_to_num(v - d["delta_low"].to_numpy(dtype=np.float64)),
                np.nan_to_num(d["delta_high"].to_numpy(dtype=np.float64) - v),
            ]
        ).clip(0.0)
        ax.errorbar(np.nan_to_num(v), ypos, xerr=err, fmt="o", color="#4c78a8", capsize=2, ms=4)
        ax.axvline(0.0, color="#999", lw=0.8, ls="--")
        ax.set_yticks(ypos, groups, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{m}: {lb} - {la}", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    return figure_png(fig)


def _model_cells(
    order_key: NDArray[np.int64],
    cell_group: NDArray[np.int64],
    cell_y: NDArray[np.float64],
    count: NDArray[np.float64],
    inverse: NDArray[np.intp],
    first: NDArray[np.intp],
    score: NDArray[np.float64],
    y: NDArray[np.int8],
    pred: NDArray[np.bool_],
) -> tuple[Cells, NDArray[np.intp]]:
    """Cells of one model over the joint cells, re-sorted by that model's score key."""
    c = count.shape[0]
    resid = score - y
    s_sum = np.asarray(np.bincount(inverse, weights=score, minlength=c), np.float64)
    sq_sum = np.asarray(np.bincount(inverse, weights=resid * resid, minlength=c), np.float64)
    perm = np.lexsort((cell_y, order_key, cell_group))
    cells = make_cells(
        group=cell_group[perm],
        key=order_key[perm],
        y=cell_y[perm],
        count=count[perm],
        s_sum=s_sum[perm],
        sq_sum=sq_sum[perm],
        pred=pred[first][perm].astype(np.float64),
        ece=ece_bins(score[first])[perm],
    )
    return cells, perm


def compare(
    a: AuditReport,
    b: AuditReport,
    *,
    n_boot: int | None = None,
    ci: float | None = None,
    p_adjust: str = "holm",
    boot_bins: int = 200,
    seed: int | None = None,
    labels: tuple[str, str] = ("a", "b"),
) -> ComparisonReport:
    """Per-group metric differences ``b - a`` between two audits of the same rows.

    Both audits must come from the same rows in the same order (same ``y_true`` and sensitive
    values), e.g. one model trained on real images and one on real + synthetic, each predicting
    the same test set. The bootstrap is paired: each resample draws the same rows (stratified by
    group) for both models, so the CI of the difference accounts for their correlation. If the
    audits were run with ``cluster=`` (e.g. ``"subject_id"``) whole clusters are resampled.

    Args:
        a, b: reports of :func:`medgen.audit.audit`.
        n_boot: resamples (default: ``a``'s).
        ci: CI coverage (default: ``a``'s).
        p_adjust: ``"holm"`` or ``"bh"`` over the whole table.
        boot_bins: score bins per model for the bootstrap cells (``boot_bins**2`` joint bins at
            most); point estimates are exact.
        seed: bootstrap seed (``None``: drawn and recorded).
        labels: names of ``a`` and ``b`` in the report.

    Returns:
        A :class:`ComparisonReport`.
    """
    for name, rep in (("a", a), ("b", b)):
        if isinstance(rep, AuditReport) and rep.classes is not None:
            raise MedgenValueError(
                f"{name} is a multi-class audit ({len(rep.classes)} classes); compare() pairs "
                "binary audits only. Compare one class against the rest: audit each model with "
                "y_true == k and its score column of class k as a binary audit"
            )
        if not isinstance(rep, AuditReport) or rep.rows is None:
            raise MedgenValueError(f"{name} must be an AuditReport returned by medgen.audit.audit")
    ra, rb = cast(RowData, a.rows), cast(RowData, b.rows)
    if ra.y.shape != rb.y.shape or not np.array_equal(ra.y, rb.y):
        raise MedgenValueError(
            f"a and b must audit the same rows in the same order: they have {ra.y.shape[0]} and "
            f"{rb.y.shape[0]} rows{'' if ra.y.shape != rb.y.shape else ' with different y_true'};"
            " sort both prediction tables by image_id before auditing"
        )
    names_a = [g.name for g in ra.groupings]
    names_b = [g.name for g in rb.groupings]
    if names_a != names_b or any(
        not np.array_equal(ga.codes, gb.codes) or ga.labels != gb.labels
        for ga, gb in zip(ra.groupings, rb.groupings, strict=True)
    ):
        raise MedgenValueError(
            f"a and b must use the same sensitive columns and values (a: {names_a}, b: {names_b})"
        )
    same_cluster = (
        ra.cluster is None
        if rb.cluster is None
        else ra.cluster is not None and np.array_equal(ra.cluster, rb.cluster)
    )
    if not same_cluster:
        raise MedgenValueError(
            "a and b must use the same cluster column (audit(..., cluster=...)) or none"
        )
    if p_adjust not in P_ADJUST:
        raise MedgenValueError(f"p_adjust must be one of {P_ADJUST}, not {p_adjust!r}")
    n_boot = int(a.provenance.get("n_boot", 1000)) if n_boot is None else int(n_boot)
    ci = float(a.provenance.get("ci", 0.95)) if ci is None else float(ci)
    if n_boot < 1:
        raise MedgenValueError(f"n_boot must be >= 1 for a paired comparison, not {n_boot}")
    if not 0.0 < ci < 1.0:
        raise MedgenValueError(f"ci must be in (0, 1), not {ci!r}")
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**63))  # type: ignore[operator]

    y = ra.y
    n = y.shape[0]
    keys = []
    for r in (ra, rb):
        uniq, exact = np.unique(r.score, return_inverse=True)
        key, nkeys, _ = _boot_key(
            r.score, exact.astype(np.int64), int(uniq.shape[0]), r.threshold, boot_bins
        )
        keys.append((key, nkeys))
    (ka, na), (kb, nb) = keys
    overall = Grouping(OVERALL[0], (), np.zeros(n, dtype=np.int64), (OVERALL[1],))
    groupings = [overall, *ra.groupings]
    seeds = np.random.SeedSequence(seed).spawn(len(groupings))
    frames = []
    gap_rows: list[dict[str, Any]] = []
    for gi, (grouping, ss) in enumerate(zip(groupings, seeds, strict=True)):
        code = ((grouping.codes * na + ka) * nb + kb) * 2 + y
        uniq, first, inverse, counts = np.unique(
            code, return_index=True, return_inverse=True, return_counts=True
        )
        cell_group = uniq // (2 * na * nb)
        cell_y = (uniq % 2).astype(np.float64)
        count = counts.astype(np.float64)
        cells_a, perm_a = _model_cells(
            (uniq // (2 * nb)) % na, cell_group, cell_y, count, inverse, first, ra.score, y, ra.pred
        )
        cells_b, perm_b = _model_cells(
            (uniq // 2) % nb, cell_group, cell_y, count, inverse, first, rb.score, y, rb.pred
        )
        if grouping.name == OVERALL[0]:
            est_a = {m: a.overall[m].to_numpy(dtype=np.float64) for m in METRICS}
            est_b = {m: b.overall[m].to_numpy(dtype=np.float64) for m in METRICS}
        else:
            ta, tb = a.group_table(grouping.name), b.group_table(grouping.name)
            est_a = {m: ta[m].to_numpy(dtype=np.float64) for m in METRICS}
            est_b = {m: tb[m].to_numpy(dtype=np.float64) for m in METRICS}
        approx_a, approx_b = cell_metrics(cells_a), cell_metrics(cells_b)
        # canonical cells are sorted by group, so group blocks are contiguous
        bounds = np.append(
            np.searchsorted(cell_group, np.arange(len(grouping.labels))), count.shape[0]
        )
        rng = np.random.default_rng(ss)
        batch = max(1, min(n_boot, 4_000_000 // max(count.shape[0], 1)))
        deltas: dict[str, list[NDArray[np.float64]]] = {m: [] for m in COMPARE_METRICS}
        track = grouping.name != OVERALL[0]
        values: dict[str, list[NDArray[np.float64]]] = {
            f"{ab}{m}": [] for m in GAP_METRICS for ab in "ab"
        }
        cmap = None
        if ra.cluster is not None:
            cmap = cluster_map(
                cell_group, np.asarray(inverse, dtype=np.intp).reshape(-1), ra.cluster
            )
        for b0 in range(0, n_boot, batch):
            nbt = min(batch, n_boot - b0)
            draws = draw_counts(rng, count, bounds, nbt, cmap)
            rep_a = cell_metrics(cells_a, draws[:, perm_a])
            rep_b = cell_metrics(cells_b, draws[:, perm_b])
            for m in COMPARE_METRICS:
                da = rep_a[m] + (est_a[m] - approx_a[m])
                db = rep_b[m] + (est_b[m] - approx_b[m])
                deltas[m].append(db - da)
                if track and m in GAP_METRICS:
                    values[f"a{m}"].append(da)
                    values[f"b{m}"].append(db)
        if track:
            gap_rows += _gap_rows(grouping.name, values, est_a, est_b, ci)
        for m in COMPARE_METRICS:
            d_reps = np.concatenate(deltas[m], axis=0)
            delta = est_b[m] - est_a[m]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                lo, hi = percentile_ci(d_reps, ci)
            frames.append(
                pd.DataFrame(
                    {
                        "attribute": grouping.name,
                        "group": list(grouping.labels),
                        "metric": m,
                        "a": est_a[m],
                        "b": est_b[m],
                        "delta": delta,
                        "delta_low": lo,
                        "delta_high": hi,
                        "p_value": bootstrap_pvalue(delta, d_reps),
                        "_attr": gi,
                        "_group": np.arange(len(grouping.labels)),
                        "_metric": COMPARE_METRICS.index(m),
                    }
                )
            )
    table = pd.concat(frames, ignore_index=True)
    # order rows by attribute, then group (as audited), then metric
    table = table.sort_values(["_attr", "_group", "_metric"], kind="stable").drop(
        columns=["_attr", "_group", "_metric"]
    )
    table["p_adjusted"] = adjust_pvalues(table["p_value"].to_numpy(dtype=np.float64), p_adjust)
    table["significant"] = table["p_adjusted"].to_numpy(dtype=np.float64) < 1.0 - ci
    table = table.set_index(["attribute", "group", "metric"])
    provenance: dict[str, Any] = {
        "label_a": labels[0],
        "label_b": labels[1],
        "rows": int(n),
        "n_boot": n_boot,
        "ci": ci,
        "p_adjust": p_adjust,
        "seed": seed,
        "bootstrap": "paired, stratified by group"
        + (", clusters resampled" if ra.cluster is not None else ""),
        "thresholds_a": a.thresholds,
        "thresholds_b": b.thresholds,
        "data_sha256_a": a.provenance.get("data_sha256"),
        "data_sha256_b": b.provenance.get("data_sha256"),
        "medgen_version": __version__,
    }
    gaps = pd.DataFrame(
        gap_rows,
        columns=[
            "attribute",
            "metric",
            "statistic",
            "a",
            "b",
            "delta",
            "delta_low",
            "delta_high",
            "p_value",
        ],
    )
    gaps["p_adjusted"] = adjust_pvalues(gaps["p_value"].to_numpy(dtype=np.float64), p_adjust)
    gaps["significant"] = gaps["p_adjusted"].to_numpy(dtype=np.float64) < 1.0 - ci
    gaps = gaps.set_index(["attribute", "metric", "statistic"])
    return ComparisonReport(table=table, provenance=provenance, gaps=gaps)


def _worst_and_gap(x: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per row (last axis: groups), the lowest value and max - min, NaN groups ignored."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN
        lo = np.nanmin(x, axis=-1)
        return lo, np.nanmax(x, axis=-1) - lo


def _gap_rows(
    attribute: str,
    values: dict[str, list[NDArray[np.float64]]],
    est_a: dict[str, NDArray[np.float64]],
    est_b: dict[str, NDArray[np.float64]],
    ci: float,
) -> list[dict[str, Any]]:
    """The worst-group and gap rows of one attribute from the paired resamples."""
    rows = []
    for m in GAP_METRICS:
        point_a, point_b = _worst_and_gap(est_a[m]), _worst_and_gap(est_b[m])
        reps_a = _worst_and_gap(np.concatenate(values[f"a{m}"], axis=0))
        reps_b = _worst_and_gap(np.concatenate(values[f"b{m}"], axis=0))
        for k, stat in enumerate(GAP_STATISTICS):
            delta = float(point_b[k] - point_a[k])
            d_reps = reps_b[k] - reps_a[k]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                lo, hi = percentile_ci(d_reps[:, None], ci)
            rows.append(
                {
                    "attribute": attribute,
                    "metric": m,
                    "statistic": stat,
                    "a": float(point_a[k]),
                    "b": float(point_b[k]),
                    "delta": delta,
                    "delta_low": float(np.asarray(lo).reshape(-1)[0]),
                    "delta_high": float(np.asarray(hi).reshape(-1)[0]),
                    "p_value": float(
                        np.asarray(bootstrap_pvalue(np.array([delta]), d_reps[:, None])).reshape(
                            -1
                        )[0]
                    ),
                }
            )
    return rows
