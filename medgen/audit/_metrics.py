"""Vectorised per-group classification metrics computed from *cells*.

A grouping (one sensitive attribute, an intersection, or everyone) splits the rows into groups.
Rows are collapsed into cells: one cell per distinct ``(group, score key, y_true)``. With the exact
score key (the rank of the score among all distinct scores) a cell holds rows that are
indistinguishable for every metric, so metrics computed from cell counts equal the row-level
metrics exactly. With a binned key (quantile bins whose edges include the decision thresholds and the
calibration bin edges) cells are coarser; the bootstrap uses them to stay fast (see
:mod:`medgen.audit._bootstrap`).

Every metric is computed for all groups at once with ``np.add.reduceat`` over cells sorted by
``(group, key)``; counts may carry a leading batch axis (bootstrap replicates), shape ``(B, C)``.
No Python loop runs over rows or groups.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "CI_METRICS",
    "ECE_EDGES",
    "METRICS",
    "Cells",
    "build_cells",
    "cell_metrics",
    "ece_bins",
    "make_cells",
    "row_order",
]

#: Metrics reported per group, in report order.
METRICS: tuple[str, ...] = (
    "prevalence",
    "auc",
    "accuracy",
    "balanced_accuracy",
    "tpr",
    "tnr",
    "fpr",
    "fnr",
    "ppv",
    "npv",
    "f1",
    "selection_rate",
    "brier",
    "ece",
)
#: Metrics that receive bootstrap confidence intervals (all of them).
CI_METRICS = METRICS
#: Interior edges of the 10 equal-width calibration bins used by ECE: bin k is [k/10, (k+1)/10),
#: the last bin also holds 1.0.
ECE_EDGES: NDArray[np.float64] = np.arange(1, 10, dtype=np.float64) / 10.0


def ece_bins(score: NDArray[np.float64]) -> NDArray[np.int64]:
    """Calibration bin (0..9) of each score, by :data:`ECE_EDGES` (``edges[k-1] <= s < edges[k]``)."""
    return np.searchsorted(ECE_EDGES, score, side="right").astype(np.int64)


@dataclass(frozen=True)
class Cells:
    """Rows of one grouping collapsed into cells sorted by ``(group, key, y)``.

    Attributes:
        count: ``(C,)`` number of rows in each cell.
        y: ``(C,)`` the cell's label (0.0 or 1.0).
        pred: ``(C,)`` the cell's decision (1.0 if score >= the group's threshold).
        s_mean: ``(C,)`` mean score of the cell's rows.
        sq_mean: ``(C,)`` mean squared error ``(score - y)**2`` of the cell's rows.
        group: ``(C,)`` group code of each cell.
        group_starts: ``(G,)`` first cell of each group (every group has at least one cell).
        tie_starts: ``(T,)`` first cell of each ``(group, key)`` block (tied scores).
        tie_group_starts: ``(G,)`` index into ``tie_starts`` of each group's first block.
        ece_starts: ``(E,)`` first cell of each ``(group, calibration bin)`` block.
        ece_group_starts: ``(G,)`` index into ``ece_starts`` of each group's first block.
        row_cell: ``(N,)`` the cell of each input row (from :func:`build_cells`), or None.
    """

    count: NDArray[np.float64]
    y: NDArray[np.float64]
    pred: NDArray[np.float64]
    s_mean: NDArray[np.float64]
    sq_mean: NDArray[np.float64]
    group: NDArray[np.int64]
    group_starts: NDArray[np.intp]
    tie_starts: NDArray[np.intp]
    tie_group_starts: NDArray[np.intp]
    ece_starts: NDArray[np.intp]
    ece_group_starts: NDArray[np.intp]
    row_cell: NDArray[np.intp] | None = None

    @property
    def n_cells(self) -> int:
        """Number of cells ``C``."""
        return int(self.count.shape[0])

    @property
    def n_groups(self) -> int:
        """Number of groups ``G``."""
        return int(self.group_starts.shape[0])


def _starts(*keys: NDArray[np.int64]) -> NDArray[np.intp]:
    """Indices where any of the (sorted, aligned) key arrays changes value, including 0."""
    n = keys[0].shape[0]
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for k in keys:
        change[1:] |= k[1:] != k[:-1]
    return np.flatnonzero(change)


def row_order(key: NDArray[np.int64], y: NDArray[np.int8]) -> NDArray[np.intp]:
    """Row permutation sorting rows by ``(key, y)``; computed once and shared by all groupings."""
    return np.lexsort((y, key))


def build_cells(
    group: NDArray[np.int64],
    key: NDArray[np.int64],
    n_keys: int,
    y: NDArray[np.int8],
    score: NDArray[np.float64],
    pred: NDArray[np.bool_],
    *,
    order: NDArray[np.intp] | None = None,
) -> Cells:
    """Collapse rows into cells sorted by ``(group, key, y)``.

    Args:
        group: ``(N,)`` group code of each row (0..G-1, every code present).
        key: ``(N,)`` score key, monotone non-decreasing in the score (0..n_keys-1). The decision
            and the calibration bin must be constant within one ``(group, key)``.
        n_keys: number of distinct key values.
        y: ``(N,)`` labels in {0, 1}.
        score: ``(N,)`` scores in [0, 1].
        pred: ``(N,)`` decisions.
        order: :func:`row_order` of ``(key, y)``. With it the rows are put in cell order by one
            stable (radix) sort of the small group codes instead of a full sort per grouping.
    """
    n_groups = int(group.max()) + 1
    code = (group.astype(np.int64) * np.int64(n_keys) + key.astype(np.int64)) * 2 + y
    if order is None or n_groups > np.iinfo(np.uint16).max:
        uniq, first, inverse, counts = np.unique(
            code, return_index=True, return_inverse=True, return_counts=True
        )
        resid = score - y
        s_sum = np.bincount(inverse, weights=score, minlength=uniq.shape[0])
        sq_sum = np.bincount(inverse, weights=resid * resid, minlength=uniq.shape[0])
        row_cell = np.asarray(inverse, dtype=np.intp).reshape(-1)
    else:
        small = group.astype(np.uint16)[order]
        perm = order[np.argsort(small, kind="stable")]
        sorted_code = code[perm]
        starts = _starts(sorted_code)
        uniq = sorted_code[starts]
        first = perm[starts]
        counts = np.diff(np.append(starts, code.shape[0]))
        s_perm = score[perm]
        resid = s_perm - y[perm]
        s_sum = np.add.reduceat(s_perm, starts)
        sq_sum = np.add.reduceat(resid * resid, starts)
        is_start = np.zeros(code.shape[0], dtype=np.intp)
        is_start[starts] = 1
        row_cell = np.empty(code.shape[0], dtype=np.intp)
        row_cell[perm] = np.cumsum(is_start) - 1
    cells = make_cells(
        group=uniq // (2 * n_keys),
        key=(uniq // 2) % n_keys,
        y=(uniq % 2).astype(np.float64),
        count=counts.astype(np.float64),
        s_sum=np.asarray(s_sum, np.float64),
        sq_sum=np.asarray(sq_sum, np.float64),
        pred=pred[first].astype(np.float64),
        ece=ece_bins(score[first]),
    )
    return dataclasses.replace(cells, row_cell=row_cell)


def make_cells(
    *,
    group: NDArray[np.int64],
    key: NDArray[np.int64],
    y: NDArray[np.float64],
    count: NDArray[np.float64],
    s_sum: NDArray[np.float64],
    sq_sum: NDArray[np.float64],
    pred: NDArray[np.float64],
    ece: NDArray[np.int64],
) -> Cells:
    """:class:`Cells` from cell-level arrays (each ``(C,)``) already sorted by ``(group, key)``.

    Several cells may share a ``(group, key)`` (they are tied for AUC); ``pred`` and ``ece`` must be
    constant within one ``(group, key)``.
    """
    group_starts = _starts(group)
    tie_starts = _starts(group, key)
    ece_starts = _starts(group, ece)
    return Cells(
        count=count,
        y=y,
        pred=pred,
        s_mean=s_sum / count,
        sq_mean=sq_sum / count,
        group=group,
        group_starts=group_starts,
        tie_starts=tie_starts,
        tie_group_starts=np.searchsorted(tie_starts, group_starts),
        ece_starts=ece_starts,
        ece_group_starts=np.searchsorted(ece_starts, group_starts),
    )


def _div(num: NDArray[np.float64], den: NDArray[np.float64]) -> NDArray[np.float64]:
    """``num / den`` with NaN where ``den == 0``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.true_divide(num, den)
    return np.where(den == 0, np.nan, out)


def cell_metrics(
    cells: Cells, weights: NDArray[np.float64] | None = None
) -> dict[str, NDArray[np.float64]]:
    """All :data:`METRICS` (plus ``n`` and ``n_pos``) for every group of ``cells``.

    Args:
        cells: the grouping's cells.
        weights: ``(C,)`` or ``(B, C)`` row counts per cell (a bootstrap resample); default the
            observed counts.

    Returns:
        metric name -> array shaped ``(G,)`` or ``(B, G)``. Undefined values (zero denominator)
        are NaN.
    """
    w = cells.count if weights is None else weights
    red = np.add.reduceat
    gs = cells.group_starts
    n1 = w * cells.y
    n0 = w - n1
    n = red(w, gs, axis=-1)
    pos = red(n1, gs, axis=-1)
    neg = n - pos
    tp = red(n1 * cells.pred, gs, axis=-1)
    fp = red(n0 * cells.pred, gs, axis=-1)
    fn = pos - tp
    tn = neg - fp

    # AUC (Mann-Whitney U with half credit for ties), per group.
    ts = cells.tie_starts
    n0t = red(n0, ts, axis=-1)
    n1t = red(n1, ts, axis=-1)
    cum0 = np.cumsum(n0t, axis=-1) - n0t  # negatives strictly before each block (all groups)
    tgs = cells.tie_group_starts
    base = cum0[..., tgs]  # negatives of earlier groups
    num = red(n1t * (cum0 + 0.5 * n0t), tgs, axis=-1) - pos * base

    # ECE over 10 equal-width bins: sum_b |sum_y - sum_s| / n.
    es = cells.ece_starts
    y_bin = red(n1, es, axis=-1)
    s_bin = red(w * cells.s_mean, es, axis=-1)
    ece_num = red(np.abs(y_bin - s_bin), cells.ece_group_starts, axis=-1)
    brier_num = red(w * cells.sq_mean, gs, axis=-1)

    tpr = _div(tp, pos)
    tnr = _div(tn, neg)
    return {
        "n": n,
        "n_pos": pos,
        "prevalence": _div(pos, n),
        "auc": _div(num, pos * neg),
        "accuracy": _div(tp + tn, n),
        "balanced_accuracy": (tpr + tnr) / 2.0,
        "tpr": tpr,
        "tnr": tnr,
        "fpr": _div(fp, neg),
        "fnr": _div(fn, pos),
        "ppv": _div(tp, tp + fp),
        "npv": _div(tn, tn + fn),
        "f1": _div(2.0 * tp, 2.0 * tp + fp + fn),
        "selection_rate": _div(tp + fp, n),
        "brier": _div(brier_num, n),
        "ece": _div(ece_num, n),
    }
