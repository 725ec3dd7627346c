"""Stratified bootstrap over cells.

A stratified row bootstrap draws, independently in each group, ``n_g`` rows with replacement from the
group's ``n_g`` rows. Rows in the same cell are interchangeable, so the number of draws that land in
each cell is multinomial with probabilities ``count_cell / n_g``: drawing those counts directly
(``numpy.random.Generator.multinomial``) is the same bootstrap at the cost of the number of cells,
not rows. Counts for a batch of replicates form a ``(B, C)`` array, and
:func:`medgen.audit._metrics.cell_metrics` turns it into ``(B, G)`` metrics in one vectorised call.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from medgen.audit._metrics import Cells, cell_metrics

__all__ = ["bootstrap_metrics", "percentile_ci"]


def bootstrap_metrics(
    cells: Cells,
    *,
    n_boot: int,
    rng: np.random.Generator,
    max_elements: int = 4_000_000,
    progress: bool = False,
    desc: str = "bootstrap",
) -> dict[str, NDArray[np.float64]]:
    """Stratified (by group) bootstrap replicates of every metric.

    Args:
        cells: the grouping's cells (strata = groups).
        n_boot: number of replicates ``B``.
        rng: the random generator (seeded by the caller).
        max_elements: bound on ``B_batch * C`` per batch (memory: about 10 arrays of that size).
        progress: show a tqdm bar over batches.

    Returns:
        metric -> ``(B, G)`` replicate values (NaN where undefined in a replicate).
    """
    n_cells = cells.n_cells
    batch = max(1, min(n_boot, max_elements // max(n_cells, 1)))
    bounds = np.append(cells.group_starts, n_cells)
    probs = []
    for g in range(cells.n_groups):
        c = cells.count[bounds[g] : bounds[g + 1]]
        probs.append((int(c.sum()), c / c.sum()))
    chunks: list[dict[str, NDArray[np.float64]]] = []
    starts = range(0, n_boot, batch)
    for b0 in tqdm(starts, desc=desc, disable=not progress, leave=False):
        nb = min(batch, n_boot - b0)
        draws = np.empty((nb, n_cells), dtype=np.float64)
        for g, (n_g, p) in enumerate(probs):
            draws[:, bounds[g] : bounds[g + 1]] = rng.multinomial(n_g, p, size=nb)
        chunks.append(cell_metrics(cells, draws))
    return {k: np.concatenate([c[k] for c in chunks], axis=0) for k in chunks[0]}


def percentile_ci(
    reps: NDArray[np.float64], ci: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Percentile interval of replicates along axis 0, ignoring NaN replicates.

    Args:
        reps: ``(B, ...)`` replicate values.
        ci: coverage, e.g. 0.95.

    Returns:
        ``(low, high)``, each shaped ``reps.shape[1:]``; NaN where every replicate is NaN.
    """
    alpha = (1.0 - ci) / 2.0
    out_shape = reps.shape[1:]
    low = np.full(out_shape, np.nan)
    high = np.full(out_shape, np.nan)
    if reps.shape[0] == 0:
        return low, high
    ok = ~np.all(np.isnan(reps), axis=0)
    if np.any(ok):
        q = np.nanquantile(reps[:, ok], [alpha, 1.0 - alpha], axis=0)
        low[ok], high[ok] = q[0], q[1]
    return low, high
