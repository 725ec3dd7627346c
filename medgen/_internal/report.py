"""Self-contained HTML reports: one page template and the table, number and figure helpers
that the audit, the synthesis evaluation and the augmentation study render with.

Pages embed their figures as base64 PNGs and carry no external links, so a report opens offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medgen._internal.files import write_text_atomic
from medgen.errors import MedgenValueError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "atomic_write_text",
    "figure_png",
    "fmt",
    "fmt_ci",
    "html_table",
    "markdown_table",
    "render_html",
]


# ---------------------------------------------------------------- writing helpers
def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    if not path.parent.exists():
        raise MedgenValueError(
            f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist; create it first"
        )
    return write_text_atomic(path, text)


def fmt(x: Any, digits: int = 3) -> str:
    """Format a table cell: floats with ``digits`` decimals, NaN as an em dash."""
    if x is None:
        return "—"
    if isinstance(x, bool | np.bool_):
        return "yes" if x else ""
    if isinstance(x, int | np.integer):
        return str(int(x))
    if isinstance(x, float | np.floating):
        xf = float(x)
        return "—" if math.isnan(xf) else f"{xf:.{digits}f}"
    return str(x)


def fmt_ci(v: float, lo: float, hi: float) -> str:
    """``0.812 [0.790, 0.831]``; without brackets when the CI is missing."""
    if math.isnan(lo) and math.isnan(hi):
        return fmt(v)
    return f"{fmt(v)} [{fmt(lo)}, {fmt(hi)}]"


def html_table(header: Sequence[str], rows: Iterable[tuple[Sequence[str], str]]) -> str:
    """An HTML table; the first column is left-aligned; each row carries a CSS class."""
    out = ["<table><thead><tr>"]
    out += [
        f'<th class="{"name" if i == 0 else ""}">{html.escape(h)}</th>'
        for i, h in enumerate(header)
    ]
    out.append("</tr></thead><tbody>")
    for cells, cls in rows:
        out.append(f'<tr class="{cls}">')
        out += [
            f'<td class="{"name" if i == 0 else ""}">{html.escape(c)}</td>'
            for i, c in enumerate(cells)
        ]
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (index included)."""
    df = frame.reset_index()
    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    sep = "| " + " | ".join("---" for _ in df.columns) + " |"
    lines = [header, sep]
    for row in df.itertuples(index=False):
        cells = (fmt(v, digits).replace("|", "\\|").replace("<", "\\<") for v in row)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure_png(fig: Figure) -> str:
    """Render a matplotlib figure to a base64 PNG (Agg, no pyplot state)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_html(
    *,
    title: str,
    subtitle: str,
    warnings: Sequence[str],
    sections: Sequence[dict[str, Any]],
    provenance: dict[str, Any],
) -> str:
    """Fill the self-contained report template."""
    import jinja2

    text = (
        resources.files("medgen._internal").joinpath("templates/report.html.j2").read_text("utf-8")
    )
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(text).render(
        title=title,
        subtitle=subtitle,
        warnings=warnings,
        sections=sections,
        provenance={
            k: json.dumps(v, default=str) if not isinstance(v, str) else v
            for k, v in provenance.items()
        },
    )


# ---------------------------------------------------------------- curves
