"""``AuditReport``: the audit's tables and their renderings (HTML, CSV, Markdown)."""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
from numpy.typing import NDArray

# the self-contained page and its table/figure helpers, shared with the other reports
from medgen._internal.report import (
    atomic_write_text,
    figure_png,
    fmt,
    fmt_ci,
    html_table,
    markdown_table,
    render_html,
)
from medgen.audit._audit import RowData
from medgen.audit._metrics import METRICS, ece_bins
from medgen.errors import MedgenValueError

__all__ = ["AuditReport"]

#: Metrics drawn as bar charts with CI whiskers.
PLOT_METRICS = ("auc", "tpr", "fpr", "ppv", "selection_rate", "ece")
#: At most this many groups get their own ROC / calibration curve (the largest ones).
MAX_CURVES = 12


def roc_points(
    y: NDArray[np.int8], s: NDArray[np.float64], max_points: int = 300
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """ROC curve ``(fpr, tpr)`` at every distinct threshold, thinned to ``max_points``."""
    uniq, inv = np.unique(s, return_inverse=True)
    pos = np.bincount(inv, weights=y.astype(np.float64), minlength=uniq.shape[0])[::-1]
    cnt = np.bincount(inv, minlength=uniq.shape[0]).astype(np.float64)[::-1]
    tp = np.concatenate([[0.0], np.cumsum(pos)])
    fp = np.concatenate([[0.0], np.cumsum(cnt - pos)])
    tpr = tp / max(tp[-1], 1.0)
    fpr = fp / max(fp[-1], 1.0)
    if tpr.shape[0] > max_points:
        keep = np.unique(np.linspace(0, tpr.shape[0] - 1, max_points).astype(int))
        tpr, fpr = tpr[keep], fpr[keep]
    return fpr, tpr


def _attribute_figures(
    name: str,
    table: pd.DataFrame,
    rows: RowData | None,
    metrics: tuple[str, ...] = PLOT_METRICS,
) -> list[dict[str, str]]:
    from matplotlib.figure import Figure

    labels = [str(g) for g in table.index.get_level_values("group")]
    images = []
    height = max(2.2, 0.28 * len(labels) + 1.0)
    n_rows = -(-len(metrics) // 3)
    fig = Figure(figsize=(12, height * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, 3)
    ypos = np.arange(len(labels))
    for ax in axes.ravel()[len(metrics) :]:
        ax.set_visible(False)
    for ax, m in zip(axes.ravel(), metrics, strict=False):
        v = table[m].to_numpy(dtype=np.float64)
        lo = table[f"{m}_low"].to_numpy(dtype=np.float64)
        hi = table[f"{m}_high"].to_numpy(dtype=np.float64)
        err = np.clip(np.vstack([np.nan_to_num(v - lo), np.nan_to_num(hi - v)]), 0.0, None)
        ax.barh(ypos, np.nan_to_num(v), xerr=err, color="#4c78a8", ecolor="#333", capsize=2)
        ax.set_yticks(ypos, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(m, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"{name}: metrics by group (bars: estimate, whiskers: bootstrap CI)", fontsize=10)
    images.append({"alt": f"{name} metrics by group", "data": figure_png(fig)})

    if rows is None:
        return images
    grouping = next((g for g in rows.groupings if g.name == name), None)
    if grouping is None:
        return images
    order = np.argsort(-np.bincount(grouping.codes, minlength=len(grouping.labels)))[:MAX_CURVES]
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax_roc, ax_cal = fig.subplots(1, 2)
    for g in order:
        sel = grouping.codes == g
        y, s = rows.y[sel], rows.score[sel]
        label = grouping.labels[g]
        if 0 < y.sum() < y.shape[0]:
            fpr, tpr = roc_points(y, s)
            ax_roc.plot(fpr, tpr, lw=1.2, label=label)
        b = ece_bins(s)
        cnt = np.bincount(b, minlength=10)
        ok = cnt > 0
        mean_s = np.bincount(b, weights=s, minlength=10)[ok] / cnt[ok]
        mean_y = np.bincount(b, weights=y.astype(np.float64), minlength=10)[ok] / cnt[ok]
        ax_cal.plot(mean_s, mean_y, marker="o", ms=3, lw=1.2, label=label)
    for ax in (ax_roc, ax_cal):
        ax.plot([0, 1], [0, 1], ls="--", color="#999", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
    ax_roc.set_xlabel("false positive rate", fontsize=8)
    ax_roc.set_ylabel("true positive rate", fontsize=8)
    ax_roc.set_title("ROC by group", fontsize=9)
    ax_cal.set_xlabel("mean predicted probability (10 bins)", fontsize=8)
    ax_cal.set_ylabel("observed frequency", fontsize=8)
    ax_cal.set_title("calibration by group", fontsize=9)
    ax_cal.legend(fontsize=7, loc="upper left")
    images.append({"alt": f"{name} ROC and calibration curves", "data": figure_png(fig)})
    return images


# ---------------------------------------------------------------- the report
@dataclass(repr=False)
class AuditReport:
    """The result of :func:`medgen.audit.audit`.

    Attributes:
        by_group: one row per ``(attribute, group)``: ``n``, ``n_pos``, every metric of
            :data:`~medgen.audit.METRICS`, ``<metric>_low`` / ``<metric>_high`` (bootstrap
            percentile CI) and ``small_group``.
        overall: the same columns for everyone (index ``("overall", "all")``).
        disparities: one row per ``(attribute, group, metric)`` with the reference group,
            ``difference`` (group - reference) with its CI, ``ratio``, ``p_value``,
            ``p_adjusted``, ``flagged`` (ratio outside the tolerance band) and ``significant``
            (``p_adjusted < 1 - ci``).
        summary: one row per attribute: group count, smallest group, worst-group AUC and the
            gaps (max - min over groups) with CIs, including fairlearn's
            ``equalized_odds_difference`` and ``demographic_parity_difference``.
        thresholds: the resolved decision threshold(s).
        provenance: rows, columns, threshold, seed, versions, data hash, time.
        warnings: the ``MetricWarning`` messages raised during the audit.
        metrics: the metric columns of ``by_group`` in report order (:data:`~medgen.audit.METRICS`
            for a binary audit; :func:`~medgen.audit.multiclass_metric_names` for a multi-class one).
        classes: the class names of a multi-class audit (``None``: binary).
    """

    by_group: pd.DataFrame
    overall: pd.DataFrame
    disparities: pd.DataFrame
    summary: pd.DataFrame
    thresholds: dict[str, float]
    provenance: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    rows: RowData | None = field(default=None, repr=False)
    metrics: tuple[str, ...] = METRICS
    classes: tuple[str, ...] | None = None

    # ------------------------------------------------------------ accessors
    @property
    def attributes(self) -> list[str]:
        """Audited attributes in order (sensitive columns, then intersections)."""
        return list(dict.fromkeys(self.by_group.index.get_level_values("attribute")))

    def group_table(self, attribute: str) -> pd.DataFrame:
        """``by_group`` rows of one attribute, indexed by group."""
        if attribute not in self.attributes:
            raise MedgenValueError(
                f"attribute {attribute!r} was not audited; audited attributes: {self.attributes}"
            )
        return cast(pd.DataFrame, self.by_group.xs(attribute, level="attribute"))

    # ------------------------------------------------------------ renderings
    def _summary_section(self) -> dict[str, Any]:
        if self.classes is not None:
            return self._multiclass_summary_section()
        header = [
            "attribute",
            "groups",
            "smallest group (n)",
            "worst-group AUC",
            "AUC gap",
            "equalized odds diff.",
            "demographic parity diff.",
            "ECE gap",
            "FNR gap",
        ]
        rows = []
        for attr, r in self.summary.iterrows():
            rows.append(
                (
                    [
                        str(attr),
                        fmt(r["n_groups"]),
                        f"{r['smallest_group']} ({fmt(r['smallest_group_n'])})",
                        f"{fmt(r['worst_group_auc'])} ({r['worst_group']})",
                        *[
                            fmt_ci(r[k], r[f"{k}_low"], r[f"{k}_high"])
                            for k in (
                                "auc_gap",
                                "equalized_odds_difference",
                                "demographic_parity_difference",
                                "ece_gap",
                                "fnr_gap",
                            )
                        ],
                    ],
                    "",
                )
            )
        ov = self.overall.iloc[0]
        note = (
            f"Everyone: n={fmt(ov['n'])}, AUC {fmt_ci(ov['auc'], ov['auc_low'], ov['auc_high'])}, "
            f"accuracy {fmt_ci(ov['accuracy'], ov['accuracy_low'], ov['accuracy_high'])}, "
            f"threshold(s) {', '.join(f'{k}: {v:.4g}' for k, v in self.thresholds.items())}. "
            "Gaps are max - min over groups with bootstrap percentile CIs."
        )
        return {"title": "Summary", "note": note, "table": html_table(header, rows), "images": []}

    def _multiclass_summary_section(self) -> dict[str, Any]:
        from medgen.audit._multiclass import summary_gap_names

        classes = self.classes or ()
        gaps = summary_gap_names(classes)
        header = ["attribute", "groups", "smallest group (n)", "worst-group macro AUC", *gaps]
        rows = []
        for attr, r in self.summary.iterrows():
            cells = [
                str(attr),
                fmt(r["n_groups"]),
                f"{r['smallest_group']} ({fmt(r['smallest_group_n'])})",
                f"{fmt(r['worst_group_macro_auc'])} ({r['worst_group']})",
            ]
            cells += [fmt_ci(r[k], r[f"{k}_low"], r[f"{k}_high"]) for k in gaps]
            rows.append((cells, ""))
        ov = self.overall.iloc[0]
        per_class = ", ".join(
            f"{c}: {fmt_ci(ov[f'auc[{c}]'], ov[f'auc[{c}]_low'], ov[f'auc[{c}]_high'])}"
            for c in classes
        )
        note = (
            f"{len(classes)} classes ({', '.join(classes)}); decisions are the most probable "
            f"class. Everyone: n={fmt(ov['n'])}, macro AUC "
            f"{fmt_ci(ov['macro_auc'], ov['macro_auc_low'], ov['macro_auc_high'])}, accuracy "
            f"{fmt_ci(ov['accuracy'], ov['accuracy_low'], ov['accuracy_high'])}, top-label ECE "
            f"{fmt_ci(ov['ece'], ov['ece_low'], ov['ece_high'])}; one-vs-rest AUC per class "
            f"{per_class}. Gaps are max - min over groups with bootstrap percentile CIs; "
            "equalized_odds_difference[c] is the larger of the TPR and FPR gaps of class c."
        )
        return {"title": "Summary", "note": note, "table": html_table(header, rows), "images": []}

    @property
    def _count_columns(self) -> list[str]:
        if self.classes is None:
            return ["n", "n_pos"]
        return ["n", *(f"n[{c}]" for c in self.classes)]

    def _group_section(self, attribute: str, *, images: bool) -> dict[str, Any]:
        table = self.group_table(attribute)
        counts = self._count_columns
        header = ["group", *counts, *self.metrics]
        rows = []
        for group, r in table.iterrows():
            cells = [str(group), *(fmt(r[c]) for c in counts)]
            cells += [fmt_ci(r[m], r[f"{m}_low"], r[f"{m}_high"]) for m in self.metrics]
            rows.append((cells, "small" if bool(r["small_group"]) else ""))
        section: dict[str, Any] = {
            "title": f"By {attribute}",
            "note": "estimate [95% bootstrap CI]; grey italic rows are below min_group_size."
            if self.provenance.get("ci") == 0.95
            else "estimate [bootstrap CI]; grey italic rows are below min_group_size.",
            "table": html_table(header, rows),
            "images": _attribute_figures(attribute, table, self.rows, self._plot_metrics)
            if images
            else [],
        }
        return section

    @property
    def _plot_metrics(self) -> tuple[str, ...]:
        if self.classes is None:
            return PLOT_METRICS
        per_class = tuple(f"{m}[{c}]" for m in ("auc", "tpr", "fpr") for c in self.classes)
        return ("macro_auc", "accuracy", "ece", *per_class)

    def _disparity_section(self) -> dict[str, Any]:
        d = self.disparities
        header = [
            "attribute",
            "group",
            "metric",
            "reference",
            "value",
            "ref. value",
            "difference [CI]",
            "ratio",
            "p",
            "p adjusted",
        ]
        rows = []
        for key, r in d.iterrows():
            attr, group, metric = cast(tuple[str, str, str], key)
            cls = (
                "significant"
                if r["significant"] and r["flagged"]
                else ("flagged" if r["flagged"] or r["significant"] else "")
            )
            rows.append(
                (
                    [
                        str(attr),
                        str(group),
                        str(metric),
                        str(r["reference_group"]),
                        fmt(r["value"]),
                        fmt(r["reference_value"]),
                        fmt_ci(r["difference"], r["difference_low"], r["difference_high"]),
                        fmt(r["ratio"]),
                        fmt(r["p_value"], 4),
                        fmt(r["p_adjusted"], 4),
                    ],
                    cls,
                )
            )
        lo, hi = self.provenance.get("tolerance", (0.8, 1.25))
        note = (
            f"Difference and ratio to the reference group (largest group unless chosen). Orange: "
            f"ratio outside [{lo}, {hi}] or adjusted p < {1 - self.provenance.get('ci', 0.95):.2g};"
            f" red bold: both. p-values: two-sided bootstrap test, adjusted with "
            f"{self.provenance.get('p_adjust', 'holm')} over the whole table."
        )
        return {
            "title": "Disparities",
            "note": note,
            "table": html_table(header, rows),
            "images": [],
        }

    def _findings_section(self) -> dict[str, Any]:
        """One row per attribute: how many disparities are significant / outside the band, and
        the strongest one, so a reviewer sees the verdict before the detail tables."""
        d = self.disparities
        header = [
            "attribute",
            "significant (adjusted p)",
            "outside tolerance band",
            "strongest: group, metric, value vs reference (ratio, adjusted p)",
        ]
        rows = []
        for attr in self.attributes:
            sub = d[d.index.get_level_values(0) == attr] if len(d) else d
            n_sig = int(sub["significant"].sum()) if len(sub) else 0
            n_band = int(sub["flagged"].sum()) if len(sub) else 0
            strongest = "none"
            if len(sub) and sub["p_adjusted"].notna().any():
                pos = int(sub["p_adjusted"].astype(float).fillna(float("inf")).to_numpy().argmin())
                r = sub.iloc[pos]
                _, group, metric = cast(tuple[str, str, str], sub.index[pos])
                strongest = (
                    f"{group}, {metric}: {fmt(r['value'])} vs {fmt(r['reference_value'])} "
                    f"({r['reference_group']}) (ratio {fmt(r['ratio'])}, p {fmt(r['p_adjusted'], 4)})"
                )
            cls = "significant" if n_sig else ("flagged" if n_band else "")
            rows.append(([str(attr), str(n_sig), str(n_band), strongest], cls))
        lo, hi = self.provenance.get("tolerance", (0.8, 1.25))
        note = (
            f"Red bold: at least one disparity significant after "
            f"{self.provenance.get('p_adjust', 'holm')} adjustment; orange: only ratios outside "
            f"[{lo}, {hi}]. Details in the Disparities table at the end."
        )
        return {"title": "Findings", "note": note, "table": html_table(header, rows), "images": []}

    def html_sections(self, *, images: bool = True) -> list[dict[str, Any]]:
        """The report's sections (summary, findings, one per attribute, disparities) in the
        report template's format, for embedding in another report (the demo's)."""
        sections = [self._summary_section(), self._findings_section()]
        sections += [self._group_section(a, images=images) for a in self.attributes]
        sections.append(self._disparity_section())
        return sections

    def to_html(self, path: str | os.PathLike[str] | None = None, *, images: bool = True) -> str:
        """Render the report as one self-contained HTML page (inline PNGs, no network).

        Args:
            path: where to write it (atomically); ``None`` only returns the text.
            images: include bar charts, ROC and calibration curves (matplotlib, Agg).

        Returns:
            The HTML text.
        """
        sections = self.html_sections(images=images)
        p = self.provenance
        text = render_html(
            title="medgen fairness audit",
            subtitle=(
                f"{p.get('rows')} rows, label {p.get('y_true')!r}, score {p.get('y_score')!r}, "
                f"sensitive {p.get('sensitive')}, {p.get('n_boot')} bootstrap resamples, "
                f"seed {p.get('seed')}"
            ),
            warnings=self.warnings,
            sections=sections,
            provenance=p,
        )
        if path is not None:
            atomic_write_text(Path(path), text)
        return text

    def to_csv(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write ``by_group.csv``, ``overall.csv``, ``disparities.csv``, ``summary.csv`` and
        ``provenance.json`` into ``directory`` (created if needed; each file written atomically).
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name, frame in [
            ("by_group", self.by_group),
            ("overall", self.overall),
            ("disparities", self.disparities),
            ("summary", self.summary),
        ]:
            written.append(atomic_write_text(out / f"{name}.csv", frame.to_csv()))
        prov = dict(self.provenance, warnings=self.warnings)
        written.append(
            atomic_write_text(out / "provenance.json", json.dumps(prov, indent=2, default=str))
        )
        return written

    def to_markdown(self, *, digits: int = 3) -> str:
        """Summary, per-group point estimates and flagged disparities as Markdown."""
        parts = [
            "# medgen fairness audit",
            "",
            "## Summary",
            "",
            markdown_table(self.summary, digits),
        ]
        parts += [
            "",
            "## By group",
            "",
            markdown_table(self.by_group[[*self._count_columns, *self.metrics]], digits),
        ]
        flagged = self.disparities[self.disparities["flagged"] | self.disparities["significant"]]
        parts += ["", "## Flagged disparities", ""]
        parts.append(markdown_table(flagged, digits) if len(flagged) else "None.")
        if self.warnings:
            parts += ["", "## Warnings", ""] + [f"- {w}" for w in self.warnings]
        return "\n".join(parts) + "\n"

    def __repr__(self) -> str:
        d = self.disparities
        return (
            f"AuditReport(rows={self.provenance.get('rows')}, attributes={self.attributes}, "
            f"n_boot={self.provenance.get('n_boot')}, seed={self.provenance.get('seed')}, "
            f"flagged={int(d['flagged'].sum())}, significant={int(d['significant'].sum())}, "
            f"warnings={len(self.warnings)})"
        )

    def _repr_html_(self) -> str:
        sections = [self._summary_section()]
        sections += [self._group_section(a, images=False) for a in self.attributes]
        return "".join(f"<h4>{html.escape(s['title'])}</h4>{s['table']}" for s in sections)
