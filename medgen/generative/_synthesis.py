"""Private helpers of :mod:`medgen.generative.synthesis_metrics`: input checks, chunked distance
counts for the k-NN manifold metrics, and the unbiased MMD^2 estimator.

Nothing here is public; the definitions and references are in the public module's docstrings
and in docs/synthesis_metrics.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medgen.errors import MedgenValueError
from medgen.io._common import to_numpy

__all__ = [
    "as_features",
    "as_pixels",
    "check_same_width",
    "kth_neighbour_sq",
    "manifold_counts",
    "mmd2_unbiased",
    "polynomial_kernel",
]

#: bytes of one block of the (fake x real) distance matrix computed at a time
BLOCK_BYTES = 64 * 2**20

Kernel = Callable[[NDArray[np.float64], NDArray[np.float64]], NDArray[np.float64]]


def as_features(x: Any, name: str, *, func: str, min_rows: int = 1) -> NDArray[np.float64]:
    """``x`` as a finite float64 ``(N, D)`` array; errors name ``func`` and the argument."""
    try:
        a = np.asarray(to_numpy(x), dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise MedgenValueError(
            f"{func}: {name} must be a numeric (N, D) array or tensor of feature vectors, "
            f"not {type(x).__name__}."
        ) from err
    if a.ndim != 2:
        hint = (
            " Use features.reshape(len(features), -1) for feature maps, or features[None] for "
            "one vector."
            if a.ndim != 0
            else ""
        )
        raise MedgenValueError(
            f"{func}: {name} must be a 2-D (N, D) array (one feature vector per row), but it "
            f"has shape {a.shape}.{hint}"
        )
    if a.shape[0] < min_rows:
        raise MedgenValueError(
            f"{func}: {name} has {a.shape[0]} row(s) but needs at least {min_rows}; "
            "pass more images."
        )
    if a.shape[1] == 0:
        raise MedgenValueError(f"{func}: {name} has shape {a.shape}: no feature columns.")
    bad = ~np.isfinite(a)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise MedgenValueError(
            f"{func}: {name} has {rows.size} row(s) with NaN or infinite values (first: "
            f"{rows[:5].tolist()}); drop or recompute those feature vectors."
        )
    return a


def as_pixels(x: Any, name: str, *, func: str, rows: int) -> NDArray[np.float64]:
    """Images ``(N, ...)`` flattened to a finite float64 ``(N, P)`` array with ``N == rows``."""
    try:
        a = np.asarray(to_numpy(x), dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise MedgenValueError(
            f"{func}: {name} must be a numeric array or tensor of images (N, ...), not "
            f"{type(x).__name__}."
        ) from err
    if a.ndim < 2:
        raise MedgenValueError(
            f"{func}: {name} must hold one image per row, shape (N, ...), but it has shape "
            f"{a.shape}."
        )
    if a.shape[0] != rows:
        raise MedgenValueError(
            f"{func}: {name} has {a.shape[0]} image(s) but the matching features have {rows} "
            "row(s); pass the images and their features in the same order."
        )
    a = a.reshape(rows, -1)
    if not np.isfinite(a).all():
        raise MedgenValueError(f"{func}: {name} has NaN or infinite voxels; clean them first.")
    return a


def check_same_width(func: str, **arrays: NDArray[np.float64]) -> None:
    """Every array has the same number of columns (the same feature extractor / image grid)."""
    widths = {k: v.shape[1] for k, v in arrays.items()}
    if len(set(widths.values())) > 1:
        desc = ", ".join(f"{k} has {w}" for k, w in widths.items())
        raise MedgenValueError(
            f"{func}: the arrays must have the same number of columns, but {desc}; extract "
            "every set with the same feature extractor (or resample the images to one grid)."
        )


def kth_neighbour_sq(x: NDArray[np.float64], k: int) -> NDArray[np.float64]:
    """Squared distance of each row of ``x (N, D)`` to its ``k``-th nearest other row.

    :class:`sklearn.neighbors.NearestNeighbors` finds the neighbours (the row itself is
    neighbour 0); the squared distance is then recomputed from the differences, so that it is
    bit-for-bit the value :func:`manifold_counts` compares against (ties stay ties).
    """
    from sklearn.neighbors import NearestNeighbors

    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    return _sq_diff(x, x[idx[:, k]])


def _sq_diff(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    """Row-wise squared Euclidean distance from the differences (exact and symmetric)."""
    out: NDArray[np.float64] = np.square(a - b).sum(axis=1)
    return out


def manifold_counts(
    real: NDArray[np.float64],
    fake: NDArray[np.float64],
    real_radius_sq: NDArray[np.float64],
    fake_radius_sq: NDArray[np.float64],
) -> tuple[NDArray[np.int64], NDArray[np.bool_], NDArray[np.float64]]:
    """One blocked pass over the ``(M, N)`` fake-to-real squared Euclidean distances.

    Distances come from one matrix product per block (fast); those within round-off of a ball's
    radius are recomputed from the differences, like the radii (:func:`kth_neighbour_sq`), so
    the strict inclusion ``d < radius`` is decided exactly: a point at exactly the radius (the
    k-th neighbour itself) is outside.

    Returns:
        ``in_real_balls``: ``(M,)`` for each fake, how many real balls ``d(fake, real_j)^2 <
        real_radius_sq_j`` contain it; ``real_in_fake``: ``(N,)`` whether some fake ball contains
        real ``j``; ``nearest_fake_sq``: ``(N,)`` each real's squared distance to its nearest
        fake.
    """
    m, n = fake.shape[0], real.shape[0]
    real_norm = np.einsum("ij,ij->i", real, real)
    fake_norm = np.einsum("ij,ij->i", fake, fake)
    in_real_balls = np.zeros(m, dtype=np.int64)
    real_in_fake = np.zeros(n, dtype=bool)
    nearest_fake_sq = np.full(n, np.inf)
    step = max(1, BLOCK_BYTES // (8 * 4 * max(1, n)))  # a few (b, N) temporaries per block
    for start in range(0, m, step):
        stop = min(m, start + step)
        scale = fake_norm[start:stop, None] + real_norm[None, :]
        d2 = scale - 2.0 * (fake[start:stop] @ real.T)
        np.maximum(d2, 0.0, out=d2)
        tol = 1e-9 * scale + 1e-300
        fr = fake_radius_sq[start:stop, None]
        near = (np.abs(d2 - real_radius_sq[None, :]) <= tol) | (np.abs(d2 - fr) <= tol)
        ii, jj = np.nonzero(near)
        if ii.size:
            d2[ii, jj] = _sq_diff(fake[start + ii], real[jj])
        in_real_balls[start:stop] = (d2 < real_radius_sq[None, :]).sum(axis=1)
        real_in_fake |= (d2 < fr).any(axis=0)
        np.minimum(nearest_fake_sq, d2.min(axis=0), out=nearest_fake_sq)
    return in_real_balls, real_in_fake, nearest_fake_sq


def polynomial_kernel(x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    """KID's kernel ``k(x, y) = (x . y / d + 1)^3`` between the rows of ``x`` and ``y``."""
    d = x.shape[1]
    out: NDArray[np.float64] = (x @ y.T / d + 1.0) ** 3
    return out


def mmd2_unbiased(
    x: NDArray[np.float64], y: NDArray[np.float64], kernel: Kernel = polynomial_kernel
) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) between samples ``x (m, D)`` and ``y (n, D)``:
    the kernel means over distinct pairs within each sample minus twice the cross mean."""
    m, n = x.shape[0], y.shape[0]
    kxx = kernel(x, x)
    kyy = kernel(y, y)
    kxy = kernel(x, y)
    a = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    b = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(a + b - 2.0 * kxy.mean())
