"""Stratified bootstrap over cells.

A stratified row bootstrap draws, independently in each group, ``n_g`` rows with replacement from the
group's ``n_g`` rows. Rows in the same cell are interchangeable, so the number of draws that land in
each cell is multinomial with probabilities ``count_cell / n_g``: drawing those counts directly
(``numpy.random.Generator.multinomial``) is the same bootstrap at the cost of the number of cells,
not rows. Counts for a batch of replicates form a ``(B, C)`` array, and
:func:`medgen.audit._metrics.cell_metrics` turns it into ``(B, G)`` metrics in one vectorised call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from tqdm.auto import tqdm

from medgen.audit._metrics import Cells, cell_metrics

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix

__all__ = [
    "ClusterMap",
    "bootstrap_metrics",
    "categorical",
    "cluster_map",
    "draw_counts",
    "multinomial_counts",
    "percentile_ci",
]


def bootstrap_metrics(
    cells: Cells,
    *,
    n_boot: int,
    rng: np.random.Generator,
    max_elements: int = 4_000_000,
    progress: bool = False,
    desc: str = "bootstrap",
    clusters: ClusterMap | None = None,
) -> dict[str, NDArray[np.float64]]:
    """Stratified (by group) bootstrap replicates of every metric.

    Args:
        cells: the grouping's cells (strata = groups).
        n_boot: number of replicates ``B``.
        rng: the random generator (seeded by the caller).
        max_elements: bound on ``B_batch * C`` per batch (memory: about 10 arrays of that size).
        progress: show a tqdm bar over batches.
        clusters: resample whole clusters (e.g. subjects) within each group instead of rows
            (:func:`cluster_map`).

    Returns:
        metric -> ``(B, G)`` replicate values (NaN where undefined in a replicate).
    """
    n_cells = cells.n_cells
    batch = max(1, min(n_boot, max_elements // max(n_cells, 1)))
    bounds = np.append(cells.group_starts, n_cells)
    chunks: list[dict[str, NDArray[np.float64]]] = []
    starts = range(0, n_boot, batch)
    for b0 in tqdm(starts, desc=desc, disable=not progress, leave=False):
        nb = min(batch, n_boot - b0)
        draws = draw_counts(rng, cells.count, bounds, nb, clusters)
        chunks.append(cell_metrics(cells, draws))
    return {k: np.concatenate([c[k] for c in chunks], axis=0) for k in chunks[0]}


@dataclass(frozen=True)
class ClusterMap:
    """Clusters (e.g. subjects) of one grouping for a cluster bootstrap.

    Attributes:
        matrix: ``(S, C)`` sparse count of each cluster's rows in each cell; clusters are
            ``(group, cluster id)`` pairs sorted by group.
        bounds: ``(G + 1,)`` the clusters of group ``g`` are ``bounds[g]:bounds[g + 1]``.
    """

    matrix: csr_matrix
    bounds: NDArray[np.intp]


def cluster_map(
    cell_group: NDArray[np.int64],
    row_cell: NDArray[np.intp],
    cluster: NDArray[np.int64],
) -> ClusterMap:
    """Map rows to clusters within groups.

    Args:
        cell_group: ``(C,)`` group of each cell (cells sorted by group).
        row_cell: ``(N,)`` the cell of each row.
        cluster: ``(N,)`` cluster code of each row (0..K-1), e.g. the subject.
    """
    from scipy.sparse import coo_matrix

    n_groups = int(cell_group.max()) + 1
    row_group = cell_group[row_cell]
    width = np.int64(cluster.max()) + 1
    uniq, inverse = np.unique(row_group * width + cluster, return_inverse=True)
    bounds = np.searchsorted(uniq // width, np.arange(n_groups + 1)).astype(np.intp)
    matrix = coo_matrix(
        (np.ones(cluster.shape[0]), (inverse.reshape(-1), row_cell)),
        shape=(uniq.shape[0], cell_group.shape[0]),
    ).tocsr()
    return ClusterMap(matrix=matrix, bounds=bounds)


def draw_counts(
    rng: np.random.Generator,
    count: NDArray[np.float64],
    bounds: NDArray[np.intp],
    size: int,
    clusters: ClusterMap | None = None,
) -> NDArray[np.float64]:
    """One batch of stratified bootstrap cell counts, shape ``(size, C)``.

    Args:
        rng: random generator.
        count: ``(C,)`` observed rows per cell, cells sorted by group.
        bounds: ``(G + 1,)`` cells of group ``g`` are ``bounds[g]:bounds[g + 1]``.
        size: replicates in the batch.
        clusters: resample clusters instead of rows (:func:`cluster_map`).
    """
    n_groups = bounds.shape[0] - 1
    if clusters is None:
        draws = np.empty((size, count.shape[0]), dtype=np.float64)
        for g in range(n_groups):
            c = count[bounds[g] : bounds[g + 1]]
            draws[:, bounds[g] : bounds[g + 1]] = multinomial_counts(
                rng, int(c.sum()), c / c.sum(), size
            )
        return draws
    cb = clusters.bounds
    picks = np.empty((size, int(cb[-1])), dtype=np.float64)
    for g in range(n_groups):
        s_g = int(cb[g + 1] - cb[g])
        picks[:, cb[g] : cb[g + 1]] = multinomial_counts(rng, s_g, np.full(s_g, 1.0 / s_g), size)
    return np.asarray((clusters.matrix.T @ picks.T).T, dtype=np.float64)


def multinomial_counts(
    rng: np.random.Generator, n: int, p: NDArray[np.float64], size: int
) -> NDArray[np.int64]:
    """``size`` draws of ``Multinomial(n, p)``, shape ``(size, K)``, exact and fast for large ``n``.

    ``numpy``'s multinomial draws ``K - 1`` conditional binomials (about 170 ns each for large
    ``n``). For large ``n`` this draws independent Poisson counts with total mean
    ``n - 3 sqrt(n) - 10`` (about 33 ns each): given their total ``T``, they are
    ``Multinomial(T, p)``; adding ``n - T`` independent categorical draws from ``p`` then gives
    exactly ``Multinomial(n, p)``. The rare rows with ``T > n`` are redrawn with numpy's sampler.
    """
    k = p.shape[0]
    if n < 2000 or k < 8:
        return rng.multinomial(n, p, size=size)
    lam = n - 3.0 * np.sqrt(n) - 10.0
    counts = rng.poisson(lam * p, size=(size, k))
    total = counts.sum(axis=1)
    over = np.flatnonzero(total > n)
    if over.size:
        counts[over] = rng.multinomial(n, p, size=over.size)
        total[over] = n
    deficit = n - total
    rows = np.repeat(np.arange(size), deficit)
    cell = categorical(rng, p, rows.shape[0])
    counts += np.bincount(rows * k + cell, minlength=size * k).reshape(size, k)
    return counts


def categorical(rng: np.random.Generator, p: NDArray[np.float64], size: int) -> NDArray[np.int64]:
    """``size`` iid draws from the categorical distribution ``p`` (shape ``(K,)``).

    Inversion with a guide table (Chen & Asau 1974): a uniform ``u`` starts at the first category
    whose cumulative probability can exceed it and walks forward; random binary searches
    (``np.searchsorted``) would cost about 140 ns each, this a few ns.
    """
    k = p.shape[0]
    cum = np.cumsum(p)
    cum[-1] = np.inf  # guards against rounding: every u < 1 ends in a category
    scale = float(np.sum(p))
    guide = np.searchsorted(cum, np.arange(k) * (scale / k), side="right")
    u = rng.random(size) * scale
    idx = guide[np.minimum((u * (k / scale)).astype(np.int64), k - 1)]
    active = np.flatnonzero(cum[idx] <= u)
    while active.size:
        idx[active] += 1
        active = active[cum[idx[active]] <= u[active]]
    return idx


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
