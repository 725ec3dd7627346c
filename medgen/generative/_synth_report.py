"""The HTML page of a :class:`~medgen.generative._synth_eval.SynthesisEvaluation`.

Self-contained (figures as base64 PNG, drawn with matplotlib's object API on Agg: no pyplot
state), filled into the shared report template (:func:`medgen._internal.report.render_html`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from medgen.generative._synth_eval import SynthesisEvaluation

__all__ = ["render"]

NOTES = {
    "quality": (
        "Encoder features of generated vs real held-out images, overall and per subgroup. Read "
        "each metric against its *_floor (two disjoint halves of the real images, same n): a "
        "generator as good as the data reaches the floor."
    ),
    "quality_classifier": (
        "The same metrics on another extractor: the embedding of the classifier trained on "
        "real train images (below). It does not share the generator's encoder, so it can see "
        "what the decoder and encoder get wrong alike."
    ),
    "fidelity": (
        "A classifier trained on real train images predicts each condition on samples "
        "generated with it (accuracy, one-vs-rest AUC); *_real: the same classifier on real "
        "held-out images, the ceiling."
    ),
    "tstr": (
        "Train on synthetic, test on real: the same small classifier trained on samples "
        "conditioned like the train rows (synthetic), on the real train images (real) or on "
        "the model's reconstructions of them (reconstructions: the best a sampler could teach "
        "with this decoder), tested on the real test images."
    ),
    "near_copies": (
        "Samples closer to a training image (encoder features or pixels, NCC) than all but "
        "`quantile` of real held-out images are; inspect each flagged one."
    ),
}


def _fig(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _table_html(frame: pd.DataFrame) -> str:
    from medgen._internal.report import fmt, html_table

    df = frame.reset_index()
    rows = [([fmt(v) for v in r], "") for r in df.itertuples(index=False)]
    return html_table([str(c) for c in df.columns], rows)


def grid_figure(rows: list[tuple[str, np.ndarray, np.ndarray]], column: str) -> Figure:
    """A row of samples (and one of real images) per value of ``column``."""
    cols = max([len(s) for _, s, _ in rows] + [len(r) for _, _, r in rows] + [1])
    fig = _fig(1.3 * cols, 1.4 * 2 * len(rows))
    axes = fig.subplots(2 * len(rows), cols, squeeze=False)
    for i, (value, samples, real) in enumerate(rows):
        for kind, images, r in (("synthetic", samples, 2 * i), ("real", real, 2 * i + 1)):
            for j in range(cols):
                ax = axes[r, j]
                ax.set_axis_off()
                if j < len(images):
                    ax.imshow(images[j].T, cmap="gray", origin="lower", vmin=0, vmax=1)
            axes[r, 0].set_title(f"{column}={value}: {kind}", fontsize=8, loc="left")
    fig.suptitle(f"Samples per {column} (top) and real held-out images (below)", fontsize=9)
    return fig


def strip_figure(images: np.ndarray, ends: list[str]) -> Figure:
    """An interpolation strip."""
    fig = _fig(1.3 * len(images), 1.6)
    axes = fig.subplots(1, len(images), squeeze=False)[0]
    for j, ax in enumerate(axes):
        ax.set_axis_off()
        ax.imshow(images[j].T, cmap="gray", origin="lower", vmin=0, vmax=1)
        ax.set_title(f"t={j / max(1, len(images) - 1):.2f}", fontsize=7)
    fig.suptitle(f"Interpolation {ends[0]} -> {ends[1]}", fontsize=9)
    return fig


def histogram_figure(distances: dict[str, Any]) -> Figure:
    """Nearest-training distances of samples vs real held-out images, per space."""
    fig = _fig(9, 3)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, space in zip(axes, ("feature", "pixel"), strict=True):
        s, h = distances[space]
        bins = np.histogram_bin_edges(np.concatenate([s, h]), bins=20)
        ax.hist(h, bins=bins, alpha=0.6, label="real held-out", density=True)
        ax.hist(s, bins=bins, alpha=0.6, label="samples", density=True)
        t = distances["thresholds"].get(space)
        if t is not None:
            ax.axvline(float(t), color="k", ls="--", lw=1, label="near-copy threshold")
        ax.set_xlabel(f"distance to nearest training image ({space})")
        ax.legend(fontsize=7)
    fig.suptitle("Memorisation: samples vs genuinely new images", fontsize=9)
    return fig


def figures(ev: SynthesisEvaluation) -> list[tuple[str, Figure]]:
    """``(alt text, figure)`` of every figure of the page."""
    out = []
    data = ev.figures
    for col, rows in data.get("grids", {}).items():
        out.append((f"samples per {col}", grid_figure(rows, col)))
    if "interpolation" in data:
        it = data["interpolation"]
        out.append(("interpolation strip", strip_figure(it["images"], it["ends"])))
    if "distances" in data:
        out.append(("memorisation histogram", histogram_figure(data["distances"])))
    return out


def render(
    ev: SynthesisEvaluation, path: str | os.PathLike[str] | None = None, *, images: bool = True
) -> str:
    """The page as a string, written atomically to ``path`` when given."""
    from medgen._internal.report import atomic_write_text, figure_png, render_html

    sections: list[dict[str, Any]] = []
    titles = {
        "quality": "Quality per subgroup (vs real-vs-real floor)",
        "quality_classifier": "Quality on classifier features (cross-check)",
        "fidelity": "Conditioning fidelity",
        "tstr": "Train on synthetic, test on real",
        "near_copies": "Near-copies per subgroup",
    }
    for name, title in titles.items():
        sections.append(
            {
                "title": title,
                "note": NOTES[name],
                "table": _table_html(getattr(ev, name)),
                "images": [],
            }
        )
    if images:
        pics = [{"alt": alt, "data": figure_png(fig)} for alt, fig in figures(ev)]
        sections.append({"title": "Pictures", "note": "", "table": "", "images": pics})
    n_copies = int(ev.memorisation["near_copy"].sum())
    warnings = []
    if n_copies:
        warnings.append(
            f"{n_copies} of {len(ev.memorisation)} evaluation samples are near-copies of "
            "training images (see the memorisation table); medgen's write() does not write "
            "them unless allow_copies=True."
        )
    text = render_html(
        title="Synthesis evaluation",
        subtitle=f"{ev.provenance.get('model_id')}: {ev.provenance.get('n_samples')} samples "
        f"vs {ev.provenance.get('n_holdout')} real held-out images",
        warnings=warnings,
        sections=sections,
        provenance=ev.provenance,
    )
    if path is not None:
        atomic_write_text(Path(path), text)
    return text
