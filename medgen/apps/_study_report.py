"""The augmentation study's report: "Does augmentation help, and whom?" and one section per arm.

Built with the shared report helpers (``medgen._internal.report``: the self-contained template,
table and number formatting, base64 PNG figures) so the study reads like the audit it extends.
Matplotlib is imported here only, through ``Figure`` objects (no pyplot state).
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from medgen.apps._study_arms import BASELINE

if TYPE_CHECKING:
    import pandas as pd

    from medgen.apps._study import StudyResult

#: One colour per non-baseline arm (matplotlib's tab10), in arm order.
_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
#: Metrics drawn in the forest plot (those of the study's ``metrics`` that are among them).
FOREST_METRICS = ("auc", "tpr")

ARM_DESCRIPTIONS = {
    "real": "the real training rows, uniform sampling: the baseline every arm is compared with.",
    "reweight": (
        "the real training rows, resampled so every label x attribute cell is drawn equally "
        "often (train(balance=...))."
    ),
    "augment": "the real training rows with the stronger classical augmentation preset.",
    "focal": "the real training rows, trained with the focal loss (gamma 2) instead of "
    "cross-entropy.",
    "synthetic-balanced": (
        "the real training rows plus synthetic images filling each under-represented label x "
        "attribute cell up to the largest cell."
    ),
    "synthetic-only": "synthetic images only (train on synthetic, test on real).",
    "custom": "the real training rows plus the arm's extra rows (user-defined).",
}


def _rows(frame: pd.DataFrame | pd.Series) -> Iterator[tuple[Any, pd.Series]]:
    """``iterrows`` with the index key typed loosely (MultiIndex keys are tuples)."""
    for key, row in cast("pd.DataFrame", frame).iterrows():
        yield cast(Any, key), row


def _colour(i: int) -> str:
    return _COLOURS[i % len(_COLOURS)]


def _group_label(attr: Any, group: Any) -> str:
    return "everyone" if attr == "overall" else f"{attr}={group}"


def _forest_figure(res: StudyResult) -> str:
    import numpy as np
    from matplotlib.figure import Figure

    from medgen._internal.report import figure_png

    d = res.deltas
    metrics = [m for m in FOREST_METRICS if m in set(d.index.get_level_values("metric"))]
    metrics = metrics or list(dict.fromkeys(d.index.get_level_values("metric")))[:2]
    arms = [a for a in res.arms if a != BASELINE]
    rows = list(
        dict.fromkeys(
            (a, g)
            for a, g in zip(
                d.index.get_level_values("attribute"),
                d.index.get_level_values("group"),
                strict=True,
            )
        )
    )
    fig = Figure(
        figsize=(5.5 * len(metrics), max(2.5, 0.42 * len(rows) * max(1, len(arms)) ** 0.5 + 1.3)),
        layout="constrained",
    )
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    ypos = np.arange(len(rows), dtype=float)
    width = 0.8 / max(len(arms), 1)
    for ax, m in zip(axes, metrics, strict=True):
        for k, arm in enumerate(arms):
            sub = d.xs((arm, m), level=("arm", "metric"))
            sub = sub.reindex(rows)
            v = sub["delta"].to_numpy(dtype=float)
            lo = sub["delta_low"].to_numpy(dtype=float)
            hi = sub["delta_high"].to_numpy(dtype=float)
            err = np.vstack([np.nan_to_num(v - lo), np.nan_to_num(hi - v)]).clip(0.0)
            y = ypos + (k - (len(arms) - 1) / 2) * width
            sig = sub["significant"].fillna(False).to_numpy(dtype=bool)
            ax.errorbar(v, y, xerr=err, fmt="none", ecolor=_colour(k), capsize=2, lw=1)
            ax.plot(v[sig], y[sig], "o", color=_colour(k), ms=5)
            ax.plot(v[~sig], y[~sig], "o", mfc="white", color=_colour(k), ms=5)
            ax.plot([], [], "o", color=_colour(k), ms=5, label=arm)
        ax.axvline(0.0, color="#999", lw=0.8, ls="--")
        ax.set_yticks(ypos, [_group_label(a, g) for a, g in rows], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(
            f"{m}: arm - {BASELINE} (mean over seeds, CI; filled: significant)", fontsize=9
        )
        ax.tick_params(axis="x", labelsize=8)
    axes[-1].legend(fontsize=7, loc="best")
    return figure_png(fig)


def _worst_figure(res: StudyResult) -> str:
    import numpy as np
    from matplotlib.figure import Figure

    from medgen._internal.report import figure_png

    w = res.worst_group_summary
    attrs = list(dict.fromkeys(w.index.get_level_values("attribute")))
    arms = res.arms
    fig = Figure(figsize=(max(4.0, 1.1 * len(arms) + 1.5) * len(attrs), 3.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(attrs)))
    x = np.arange(len(arms), dtype=float)
    for ax, attr in zip(axes, attrs, strict=True):
        sub = w.xs(attr, level="attribute").reindex(arms)
        for j, (m, colour) in enumerate((("auc", "#4c78a8"), ("tpr", "#f58518"))):
            mean = sub[f"worst_group_{m}_mean"].to_numpy(dtype=float)
            sd = np.nan_to_num(sub[f"worst_group_{m}_sd"].to_numpy(dtype=float))
            ax.bar(
                x + (j - 0.5) * 0.38,
                np.nan_to_num(mean),
                0.36,
                yerr=sd,
                color=colour,
                capsize=3,
                label=f"worst-group {m.upper()}",
            )
        ax.set_xticks(x, arms, fontsize=8, rotation=20)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"by {attr}: worst group (mean ± s.d. over seeds)", fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    axes[0].legend(fontsize=7, loc="lower left")
    return figure_png(fig)


def _tradeoff_figure(res: StudyResult) -> str:
    import numpy as np
    from matplotlib.figure import Figure

    from medgen._internal.report import figure_png

    w = res.worst_group
    attrs = list(dict.fromkeys(w.index.get_level_values("attribute")))
    fig = Figure(figsize=(4.5 * len(attrs), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(attrs)))
    for ax, attr in zip(axes, attrs, strict=True):
        sub = w.xs(attr, level="attribute")
        for k, arm in enumerate(res.arms):
            pts = sub.xs(arm, level="arm")
            colour = "#333333" if arm == BASELINE else _colour(k - 1)
            ax.scatter(pts["auc_gap"], pts["overall_auc"], color=colour, s=22, alpha=0.8, label=arm)
            ax.scatter(
                [pts["auc_gap"].mean()],
                [pts["overall_auc"].mean()],
                color=colour,
                s=80,
                marker="X",
                edgecolor="white",
            )
        ax.set_xlabel(f"AUC gap across {attr} (max - min)", fontsize=8)
        ax.set_ylabel("overall AUC", fontsize=8)
        ax.set_title("fairness / accuracy: one dot per arm and seed (X: mean)", fontsize=9)
        ax.tick_params(labelsize=8)
    axes[-1].legend(fontsize=7, loc="best")
    return figure_png(fig)


def _headline_rows(res: StudyResult) -> list[tuple[list[str], str]]:
    from medgen._internal.report import fmt

    rows = []
    for arm, r in res.summary.iterrows():
        auc = fmt(r["overall_auc_mean"])
        if not math.isnan(float(r["overall_auc_sd"])):
            auc += f" ± {fmt(r['overall_auc_sd'])}"
        delta = "—" if arm == BASELINE else f"{float(r['overall_auc_delta']):+.3f}"
        cls = (
            "significant" if r.get("n_worse", 0) else ("flagged" if r.get("n_improved", 0) else "")
        )
        rows.append(
            (
                [str(arm), auc, delta, str(r.get("improved") or "—"), str(r.get("worse") or "—")],
                cls if arm != BASELINE else "",
            )
        )
    return rows


def _sentences(res: StudyResult) -> str:
    out = []
    for arm, r in res.summary.iterrows():
        if arm == BASELINE:
            continue
        parts = []
        if r.get("improved"):
            parts.append(f"improved {r['improved']}")
        if r.get("worse"):
            parts.append(f"made worse {r['worse']}")
        text = " and ".join(parts) if parts else "changed nothing significantly"
        out.append(f"{arm}: {text}.")
    return " ".join(out)


def study_sections(res: StudyResult, *, images: bool = True) -> list[dict[str, Any]]:
    """The study's report sections, in the audit template's format."""
    from medgen._internal.report import fmt, fmt_ci, html_table

    s = res.settings
    sections: list[dict[str, Any]] = []
    note = (
        f"{len(res.arms)} arms x {len(res.seeds)} seeds, each arm compared with {BASELINE!r} "
        f"trained with the same seed on {s.get('test_rows')} common real test images (rows "
        f"paired by image_id). Deltas are means over seeds with CIs from the paired bootstrap "
        f"over test cases and the spread over seeds; significant = {s.get('p_adjust')}-adjusted "
        f"p < {1 - float(s.get('ci', 0.95)):.2g} over every arm, group and metric "
        f"({', '.join(s.get('metrics', []))}). " + _sentences(res)
    )
    imgs = []
    if images:
        imgs = [
            {"alt": "forest plot of per-subgroup deltas per arm", "data": _forest_figure(res)},
            {"alt": "worst-group AUC and TPR per arm", "data": _worst_figure(res)},
            {"alt": "overall AUC vs AUC gap per arm and seed", "data": _tradeoff_figure(res)},
        ]
    sections.append(
        {
            "title": "Does augmentation help, and whom?",
            "note": note,
            "table": html_table(
                ["arm", "overall AUC", f"Δ AUC vs {BASELINE}", "improved", "made worse"],
                _headline_rows(res),
            ),
            "images": imgs,
        }
    )
    v = res.verdict
    vrows = [
        (
            [
                str(arm),
                _group_label(a, g),
                str(m),
                fmt(r["real"]),
                fmt(r["value"]),
                fmt_ci(r["delta"], r["delta_low"], r["delta_high"]),
                fmt(r["p_adjusted"], 4),
                str(r["effect"]),
            ],
            "flagged" if r["effect"] == "improved" else "significant",
        )
        for (arm, a, g, m), r in _rows(v)
    ]
    sections.append(
        {
            "title": "Verdict: significant changes after adjustment",
            "note": "Only rows whose adjusted p-value is below the threshold; orange: the arm "
            "improved the group, red: it made the group worse."
            + ("" if vrows else " No arm changed any group significantly."),
            "table": html_table(
                ["arm", "group", "metric", BASELINE, "arm", "Δ [CI]", "p adjusted", "effect"],
                vrows,
            )
            if vrows
            else "",
            "images": [],
        }
    )
    w = res.worst_group_summary
    gd = res.worst_group_deltas
    paired = {
        "worst_group_auc": ("auc", "worst"),
        "worst_group_tpr": ("tpr", "worst"),
        "auc_gap": ("auc", "gap"),
        "tpr_gap": ("tpr", "gap"),
    }
    wrows = []
    for (arm, attr), r in _rows(w):
        cells = [str(arm), str(attr)]
        hit = False
        for k in ("overall_auc", "worst_group_auc", "worst_group_tpr", "auc_gap", "tpr_gap"):
            sd = r[f"{k}_sd"]
            text = fmt(r[f"{k}_mean"]) + ("" if math.isnan(float(sd)) else f" ± {fmt(sd)}")
            key = (arm, attr, *paired[k]) if k in paired else None
            if arm != BASELINE and gd is not None and key is not None and key in gd.index:
                g = gd.loc[cast(Any, key)]
                text += f" (Δ {fmt_ci(g['delta'], g['delta_low'], g['delta_high'])})"
                hit = hit or bool(g["significant"])
            elif arm != BASELINE:
                text += f" ({float(r[f'{k}_delta']):+.3f})"
            cells.append(text)
        wrows.append((cells, "significant" if hit else ""))
    sections.append(
        {
            "title": "Worst group",
            "note": "Mean ± s.d. over seeds; in brackets the difference from "
            f"{BASELINE!r} (mean over seeds) with its CI from the paired bootstrap over test "
            "cases and the spread over seeds (each resample's own worst group and gap); bold: "
            "significant after adjustment within this table. Gaps are max - min over the "
            "attribute's groups (all groups, small ones included).",
            "table": html_table(
                [
                    "arm",
                    "attribute",
                    "overall AUC",
                    "worst-group AUC",
                    "worst-group TPR",
                    "AUC gap",
                    "TPR gap",
                ],
                wrows,
            ),
            "images": [],
        }
    )
    if res.warnings:
        # after the answer, not before it (the audit template would put them first)
        sections.append(
            {
                "title": "Warnings",
                "note": "Undefined metrics and small groups of the audits, and arms not built "
                "exactly as asked.",
                "table": "".join(f'<div class="warn">{html.escape(w)}</div>' for w in res.warnings),
                "images": [],
            }
        )
    kinds = s.get("arm_kinds", {})
    for arm in res.arms:
        sections.append(
            _arm_section(res, arm, kinds.get(arm, arm if arm in ARM_DESCRIPTIONS else "custom"))
        )
    return sections


def _links(res: StudyResult, arm: str) -> str:
    parts = []
    for kind, label in (("audits", "audit report"), ("predictions", "predictions")):
        for s in res.seeds:
            name = res.files.get(kind, {}).get(f"{arm}|{s}")
            if name:
                parts.append(f'<a href="{html.escape(name)}">{label}, seed {s}</a>')
    return ('<p class="note">' + " · ".join(parts) + "</p>") if parts else ""


def _counts_table(res: StudyResult, arm: str) -> str:
    from medgen._internal.report import fmt, html_table

    tc = res.training_counts
    if tc is None or arm not in tc.index.get_level_values("arm"):
        return ""
    first = res.seeds[0]
    sub = tc.xs((arm, first), level=("arm", "seed"))
    names = [str(n) for n in sub.index.names]
    rows = [
        (
            [
                ", ".join(
                    f"{n}={v}"
                    for n, v in zip(names, key if isinstance(key, tuple) else (key,), strict=True)
                ),
                fmt(r["n_real"]),
                fmt(r["n_extra"]),
                fmt(r["n"]),
                f"{100 * float(r['share']):.1f}%",
            ],
            "",
        )
        for key, r in _rows(sub)
    ]
    return html_table(["training cell", "real rows", "extra rows", "rows", "share of draws"], rows)


def _delta_table(res: StudyResult, arm: str) -> str:
    from medgen._internal.report import fmt, fmt_ci, html_table

    if arm not in res.deltas.index.get_level_values("arm"):
        return ""
    sub = res.deltas.xs(arm, level="arm")
    rows = []
    for (a, g, m), r in _rows(sub):
        rows.append(
            (
                [
                    _group_label(a, g),
                    str(m),
                    fmt(r["real"]),
                    fmt(r["value"]),
                    fmt_ci(r["delta"], r["delta_low"], r["delta_high"]),
                    fmt(r["delta_sd"]),
                    fmt(r["p_adjusted"], 4),
                ],
                "significant" if r["significant"] else "",
            )
        )
    return html_table(
        ["group", "metric", BASELINE, arm, "Δ [CI]", "s.d. over seeds", "p adjusted"], rows
    )


def _metrics_table(res: StudyResult, arm: str) -> str:
    from medgen._internal.report import fmt, html_table

    m = res.metrics.xs(arm, level="arm")
    g = m.groupby(level=["attribute", "group"], sort=False)[["n", "auc", "tpr", "fpr", "ece"]]
    mean = g.mean()
    rows = [
        ([_group_label(a, gr), *[fmt(r[c]) for c in ("n", "auc", "tpr", "fpr", "ece")]], "")
        for (a, gr), r in _rows(mean)
    ]
    return html_table(["group", "n", "AUC", "TPR", "FPR", "ECE"], rows)


def _arm_section(res: StudyResult, arm: str, kind: str) -> dict[str, Any]:
    desc = ARM_DESCRIPTIONS.get(kind, ARM_DESCRIPTIONS["custom"])
    note = f"{arm}: {desc}"
    if kind == "synthetic-balanced" and res.fill is not None:
        f = res.fill.xs(res.seeds[0], level="seed")
        note += (
            f" Seed {res.seeds[0]}: {int(f['filled'].sum())} synthetic images of "
            f"{int(f['deficit'].sum())} needed"
            + (
                " (some cells were short, see the fill table)."
                if (f["filled"] < f["deficit"]).any()
                else "."
            )
        )
    table = _links(res, arm) + _counts_table(res, arm)
    table += _delta_table(res, arm) if arm != BASELINE else _metrics_table(res, arm)
    return {"title": f"Arm: {arm}", "note": note, "table": table, "images": []}


def render_study(res: StudyResult, *, images: bool = True) -> str:
    """The whole self-contained page."""
    from medgen._internal.report import render_html
    from medgen._version import __version__

    s = res.settings
    prov = {k: v for k, v in s.items() if k != "arm_kinds"}
    prov["timings_s"] = {k: round(float(v), 2) for k, v in res.timings.items()}
    prov["medgen_version"] = __version__
    return render_html(
        title="medgen augmentation study",
        subtitle=(
            f"target {s.get('target', 'y_true')!r}; arms {', '.join(res.arms)}; seeds "
            f"{', '.join(map(str, res.seeds))}; {s.get('test_rows')} real test images; "
            f"{s.get('n_boot')} paired bootstrap resamples"
        ),
        warnings=[],  # a section after the headline (study_sections)
        sections=study_sections(res, images=images),
        provenance=prov,
    )


def headline_html(res: StudyResult) -> str:
    """The notebook view: the headline table and the verdict sentences."""
    from medgen._internal.report import html_table

    table = html_table(
        ["arm", "overall AUC", f"Δ AUC vs {BASELINE}", "improved", "made worse"],
        _headline_rows(res),
    )
    return f"<h4>Does augmentation help, and whom?</h4><p>{html.escape(_sentences(res))}</p>{table}"
