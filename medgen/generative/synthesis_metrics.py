"""Quality, privacy and fidelity metrics of conditional synthesis, on features the caller supplies.

Every function takes feature vectors (``(N, D)`` arrays or tensors, one row per image, from a
feature extractor of the caller's choice) and, for privacy, optionally the images themselves. No
feature extractor lives here and nothing is downloaded.

- **Distribution distance**: :func:`frechet_distance` (FID on the given features, Heusel et al.
  2017) and :func:`kernel_inception_distance` (KID, unbiased MMD^2 with a cubic polynomial kernel,
  Bińkowski et al. 2018).
- **Fidelity and diversity**: :func:`prdc`, precision / recall / density / coverage from k-NN
  balls (Naeem et al. 2020; precision and recall as in Kynkäänniemi et al. 2019).
- **The floor**: :func:`real_vs_real_floor`, the same metric between two disjoint random halves of
  the real data. A score is read against it, never against zero.
- **Memorisation**: :func:`memorisation` finds each sample's nearest training image (feature and
  pixel space) and flags near-copies: closer to the training set than all but ``quantile`` of the
  real held-out images are. :func:`count_near_copies` counts them per condition.
- **Per-subgroup table**: :func:`quality_table`, one row overall and one per subgroup, each metric
  beside its floor.
- **Conditioning**: :func:`conditioning_fidelity`, whether a classifier trained on real images
  recognises the condition each sample was generated with (AUC / accuracy per condition).

Definitions, references and how to read each number: docs/synthesis_metrics.md.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> real = rng.normal(size=(400, 8))
    >>> fake = rng.normal(loc=0.5, size=(200, 8))
    >>> table = quality_table(real, fake, metrics=("fid", "precision"), seed=0)
    >>> table.index.names
    FrozenList(['attribute', 'group'])
    >>> list(table.columns)
    ['n_real', 'n_fake', 'n', 'fid', 'fid_floor', 'precision', 'precision_floor']
    >>> bool(table.loc[("overall", "all"), "fid"] > table.loc[("overall", "all"), "fid_floor"])
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from medgen._internal.suggest import did_you_mean
from medgen.errors import MedgenValueError, MetricWarning
from medgen.generative._synthesis import (
    as_features,
    as_pixels,
    check_same_width,
    kth_neighbour_sq,
    manifold_counts,
    mmd2_unbiased,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "METRICS",
    "PIXEL_METRICS",
    "PRDC",
    "KIDResult",
    "conditioning_fidelity",
    "count_near_copies",
    "frechet_distance",
    "kernel_inception_distance",
    "memorisation",
    "prdc",
    "quality_table",
    "real_vs_real_floor",
]

#: the metrics :func:`quality_table` and :func:`real_vs_real_floor` know by name
METRICS: tuple[str, ...] = ("fid", "kid", "precision", "recall", "density", "coverage")
#: pixel-space distances of :func:`memorisation`
PIXEL_METRICS: tuple[str, ...] = ("ncc", "rmse")
#: the index of the overall row of every per-group table, as in :mod:`medgen.audit`
OVERALL = ("overall", "all")

_PRDC_NAMES = ("precision", "recall", "density", "coverage")

Seed = int | np.random.Generator


def _rng(seed: Seed, func: str) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise MedgenValueError(
            f"{func}: seed must be a non-negative int or a numpy.random.Generator, not {seed!r}."
        )
    return np.random.default_rng(int(seed))


def _positive_int(value: Any, name: str, func: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise MedgenValueError(f"{func}: {name} must be an int >= {minimum}, not {value!r}.")
    return int(value)


def _pair(
    real: ArrayLike, fake: ArrayLike, func: str, min_rows: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    r = as_features(real, "real_features", func=func, min_rows=min_rows)
    f = as_features(fake, "fake_features", func=func, min_rows=min_rows)
    check_same_width(func, real_features=r, fake_features=f)
    return r, f


# --------------------------------------------------------------------------------------------
# FID and KID
# --------------------------------------------------------------------------------------------


def _psd_sqrt(a: NDArray[np.float64]) -> NDArray[np.float64]:
    w, v = np.linalg.eigh((a + a.T) / 2.0)
    out: NDArray[np.float64] = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    return out


def _frechet(r: NDArray[np.float64], f: NDArray[np.float64]) -> float:
    mu_r, mu_f = r.mean(axis=0), f.mean(axis=0)
    s_r = np.atleast_2d(np.cov(r, rowvar=False))
    s_f = np.atleast_2d(np.cov(f, rowvar=False))
    root = _psd_sqrt(s_r)
    inner = root @ s_f @ root
    eig = np.linalg.eigvalsh((inner + inner.T) / 2.0)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu_r - mu_f
    value = float(diff @ diff + np.trace(s_r) + np.trace(s_f) - 2.0 * tr_covmean)
    return max(value, 0.0)


def frechet_distance(real_features: ArrayLike, fake_features: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID on the given features).

    ``FID = |mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2))`` with the sample means ``mu`` and
    covariances ``S`` (``ddof=1``) of each set (Heusel et al. 2017, "GANs Trained by a Two
    Time-Scale Update Rule Converge to a Local Nash Equilibrium", https://arxiv.org/abs/1706.08500).
    The trace of the matrix square root is computed from the eigenvalues of the symmetric
    ``S_r^(1/2) S_f S_r^(1/2)`` (same trace, no complex round-off), so it agrees with
    :class:`monai.metrics.FIDMetric` and stays defined when ``N <= D`` (singular covariances).

    FID is biased upwards for small ``N`` (by about ``tr`` terms of order ``D / N``): compare it
    only with scores of the same ``N``, above all with :func:`real_vs_real_floor`.

    Args:
        real_features: ``(N, D)`` features of real images (array, tensor or nested lists).
        fake_features: ``(M, D)`` features of generated images, same extractor.

    Returns:
        The distance (squared feature units), ``>= 0``.

    Raises:
        MedgenValueError: not 2-D, fewer than 2 rows, different ``D``, or NaN / inf values.

    Example:
        >>> import numpy as np
        >>> real = np.random.default_rng(0).normal(size=(500, 4))
        >>> round(frechet_distance(real, real), 6)
        0.0
        >>> round(frechet_distance(real, real + [1.0, 0.0, 0.0, 0.0]), 6)  # a shift of 1
        1.0
    """
    r, f = _pair(real_features, fake_features, "frechet_distance", 2)
    return _frechet(r, f)


@dataclass(frozen=True)
class KIDResult:
    """Kernel Inception Distance over random subsets (see :func:`kernel_inception_distance`).

    Attributes:
        mean: mean of the per-subset unbiased MMD^2 (the KID; can be slightly negative).
        std: their standard deviation (``ddof=0``): the subset-to-subset spread.
        subsets: number of subsets drawn.
        subset_size: rows of each set in each subset (``min(subset_size, N, M)``).
        seed: the int seed given, or None when a Generator was passed.
        values: ``(subsets,)`` the per-subset estimates.
    """

    mean: float
    std: float
    subsets: int
    subset_size: int
    seed: int | None
    values: NDArray[np.float64] = field(repr=False)


def _kid(
    r: NDArray[np.float64],
    f: NDArray[np.float64],
    subsets: int,
    subset_size: int,
    rng: np.random.Generator,
) -> tuple[int, NDArray[np.float64]]:
    size = min(subset_size, r.shape[0], f.shape[0])
    values = np.empty(subsets, dtype=np.float64)
    for i in range(subsets):
        ri = r[rng.choice(r.shape[0], size, replace=False)]
        fi = f[rng.choice(f.shape[0], size, replace=False)]
        values[i] = mmd2_unbiased(ri, fi)
    return size, values


def kernel_inception_distance(
    real_features: ArrayLike,
    fake_features: ArrayLike,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: Seed = 0,
) -> KIDResult:
    """Kernel Inception Distance: unbiased MMD^2 with the kernel ``k(x, y) = (x . y / D + 1)^3``.

    Each of ``subsets`` draws takes ``s = min(subset_size, N, M)`` rows of each set without
    replacement and computes the unbiased estimator (Gretton et al. 2012, eq. 3)
    ``sum_{i!=j} k(r_i, r_j) / (s(s-1)) + sum_{i!=j} k(f_i, f_j) / (s(s-1)) - 2 sum_{i,j}
    k(r_i, f_j) / s^2``; the result holds their mean and std (Bińkowski et al. 2018,
    "Demystifying MMD GANs", https://arxiv.org/abs/1801.01401; the torch-fidelity defaults of
    100 subsets of 1000). Unlike FID the estimator is unbiased, so it is comparable across
    sample sizes and is about 0 (possibly negative) for samples of one distribution.

    Args:
        real_features: ``(N, D)`` features of real images.
        fake_features: ``(M, D)`` features of generated images, same extractor.
        subsets: number of random subsets.
        subset_size: rows per set per subset (capped at ``N`` and ``M``).
        seed: int or ``numpy.random.Generator`` for the subsets.

    Returns:
        :class:`KIDResult` (``mean``, ``std``, ``values`` and the parameters used).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> real, fake = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
        >>> same = kernel_inception_distance(real, fake, subsets=20, subset_size=100)
        >>> shifted = kernel_inception_distance(real, fake + 1.0, subsets=20, subset_size=100)
        >>> abs(same.mean) < 0.05 < shifted.mean, shifted.subset_size
        (True, 100)
    """
    func = "kernel_inception_distance"
    r, f = _pair(real_features, fake_features, func, 2)
    subsets = _positive_int(subsets, "subsets", func)
    subset_size = _positive_int(subset_size, "subset_size", func, minimum=2)
    size, values = _kid(r, f, subsets, subset_size, _rng(seed, func))
    return KIDResult(
        mean=float(values.mean()),
        std=float(values.std()),
        subsets=subsets,
        subset_size=size,
        seed=None if isinstance(seed, np.random.Generator) else int(seed),
        values=values,
    )


# --------------------------------------------------------------------------------------------
# precision, recall, density, coverage
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PRDC:
    """Precision, recall, density and coverage of generated features (see :func:`prdc`).

    Attributes:
        precision: share of samples inside the real manifold (fidelity), in [0, 1].
        recall: share of real images inside the generated manifold (diversity), in [0, 1].
        density: mean number of real balls holding a sample, divided by ``k``; about 1 when the
            samples follow the real distribution, above 1 when they crowd its dense regions.
        coverage: share of real images whose own ball holds at least one sample, in [0, 1].
        k: the neighbour count of the balls.
    """

    precision: float
    recall: float
    density: float
    coverage: float
    k: int

    def as_dict(self) -> dict[str, float]:
        """The four metrics by name (without ``k``)."""
        return {n: float(getattr(self, n)) for n in _PRDC_NAMES}


def _prdc(r: NDArray[np.float64], f: NDArray[np.float64], k: int) -> PRDC:
    real_radius_sq = kth_neighbour_sq(r, k)
    fake_radius_sq = kth_neighbour_sq(f, k)
    in_balls, real_in_fake, nearest_sq = manifold_counts(r, f, real_radius_sq, fake_radius_sq)
    return PRDC(
        precision=float((in_balls > 0).mean()),
        recall=float(real_in_fake.mean()),
        density=float(in_balls.sum() / (k * f.shape[0])),
        coverage=float((nearest_sq < real_radius_sq).mean()),
        k=k,
    )


def prdc(real_features: ArrayLike, fake_features: ArrayLike, *, k: int = 5) -> PRDC:
    """Precision, recall, density and coverage from k-nearest-neighbour balls.

    Around every real feature ``r_j`` lies a ball whose radius is the distance to its ``k``-th
    nearest other real feature (likewise for the samples ``f_i``); ``1[.]`` counts strict
    inclusion ``d < radius`` in Euclidean distance (Naeem et al. 2020, "Reliable Fidelity and
    Diversity Metrics for Generative Models", https://arxiv.org/abs/2002.09797, eqs. 1-4; precision
    and recall are Kynkäänniemi et al. 2019's, https://arxiv.org/abs/1904.06991):

    - precision ``= mean_i 1[exists j: f_i in B(r_j)]``;
    - recall ``= mean_j 1[exists i: r_j in B(f_i)]``;
    - density ``= sum_i sum_j 1[f_i in B(r_j)] / (k M)``;
    - coverage ``= mean_j 1[exists i: f_i in B(r_j)]``.

    Identical sets give precision = recall = coverage = 1 and density = 1 (exactly, without tied
    distances); far disjoint sets give 0. Radii grow as ``N`` shrinks, so compare scores of the
    same ``N`` and ``k`` (:func:`real_vs_real_floor`).

    Args:
        real_features: ``(N, D)`` with ``N > k``.
        fake_features: ``(M, D)`` with ``M > k``.
        k: neighbours defining each ball (Naeem et al. use 5).

    Returns:
        :class:`PRDC`.

    Example:
        >>> import numpy as np
        >>> real = np.arange(4.0)[:, None]  # 0, 1, 2, 3 on a line: every radius is 1 for k=1
        >>> prdc(real, real, k=1).as_dict()
        {'precision': 1.0, 'recall': 1.0, 'density': 1.0, 'coverage': 1.0}
        >>> prdc(real, [[0.5], [10.0], [11.0]], k=1)
        PRDC(precision=0.333..., recall=1.0, density=0.666..., coverage=0.5, k=1)
    """
    k = _positive_int(k, "k", "prdc")
    r, f = _pair(real_features, fake_features, "prdc", k + 1)
    return _prdc(r, f, k)


# --------------------------------------------------------------------------------------------
# metrics by name and the real-vs-real floor
# --------------------------------------------------------------------------------------------

MetricFn = Callable[[NDArray[np.float64], NDArray[np.float64]], float]


def _min_rows(name: str, k: int) -> int:
    return k + 1 if name in _PRDC_NAMES else 2


def _check_metric_names(names: Sequence[str], func: str, argument: str) -> tuple[str, ...]:
    if isinstance(names, str):
        names = (names,)
    out = tuple(names)
    for name in out:
        if name not in METRICS:
            raise MedgenValueError(
                f"{func}: unknown metric {name!r} in {argument}; the metrics are "
                f"{list(METRICS)}.{did_you_mean(name, METRICS)}"
            )
    if not out:
        raise MedgenValueError(
            f"{func}: {argument} is empty; name at least one of {list(METRICS)}."
        )
    return out


def _evaluate(
    names: Sequence[str],
    a: NDArray[np.float64],
    b: NDArray[np.float64],
    *,
    k: int,
    kid_subsets: int,
    kid_subset_size: int,
    rng: np.random.Generator,
) -> dict[str, float]:
    """The named metrics between ``a`` (reference) and ``b``; PRDC is computed once for all four."""
    out: dict[str, float] = {}
    pr: PRDC | None = None
    for name in names:
        if name == "fid":
            out[name] = _frechet(a, b)
        elif name == "kid":
            out[name] = float(_kid(a, b, kid_subsets, kid_subset_size, rng)[1].mean())
        else:
            pr = pr if pr is not None else _prdc(a, b, k)
            out[name] = float(getattr(pr, name))
    return out


def _halves(n_total: int, n: int, rng: np.random.Generator) -> tuple[NDArray[Any], NDArray[Any]]:
    perm = rng.permutation(n_total)
    return perm[:n], perm[n : 2 * n]


def real_vs_real_floor(
    features: ArrayLike,
    metric: str | MetricFn,
    *,
    n: int | None = None,
    k: int = 5,
    seed: Seed = 0,
) -> float:
    """The metric between two disjoint random halves of the real data: the floor of every score.

    Two real samples of one distribution do not score FID 0 or precision 1: finite samples, the
    feature extractor and the subjects' own variety set a floor. A generated set is as good as the
    real data when its score reaches this floor *at the same sample size*; compare
    ``metric(real, fake)`` computed on ``n`` real and ``n`` generated rows with this value.

    Args:
        features: ``(N, D)`` real features.
        metric: a name of :data:`METRICS` (``"kid"`` gives the KID mean, 100 subsets of at most
            1000) or a callable ``(reference (n, D), other (n, D)) -> float``.
        n: rows in each half; default ``N // 2``. Needs ``2 n <= N``.
        k: neighbours of the PRDC metrics.
        seed: int or ``numpy.random.Generator`` choosing the halves (and KID's subsets).

    Returns:
        The metric between the first half (as the reference, "real") and the second.

    Example:
        >>> import numpy as np
        >>> real = np.random.default_rng(0).normal(size=(400, 8))
        >>> floor = real_vs_real_floor(real, "fid", n=200, seed=0)
        >>> 0.0 < floor < 1.0  # 200 vs 200 Gaussians in 8-D: small but not zero
        True
        >>> round(real_vs_real_floor(real, "precision", seed=0), 2)  # not 1.0 either
        0.93
    """
    func = "real_vs_real_floor"
    k = _positive_int(k, "k", func)
    x = as_features(features, "features", func=func, min_rows=2)
    n_total = x.shape[0]
    half = n_total // 2 if n is None else _positive_int(n, "n", func)
    if 2 * half > n_total:
        raise MedgenValueError(
            f"{func}: n={half} needs 2 * n = {2 * half} real rows for two disjoint halves, but "
            f"features has {n_total}; pass n <= {n_total // 2}."
        )
    rng = _rng(seed, func)
    ia, ib = _halves(n_total, half, rng)
    a, b = x[ia], x[ib]
    if callable(metric):
        return float(metric(a, b))
    (name,) = _check_metric_names((metric,), func, "metric")
    if half < _min_rows(name, k):
        raise MedgenValueError(
            f"{func}: {name} needs at least {_min_rows(name, k)} rows per half, but n={half}; "
            "pass more real features (or a smaller k)."
        )
    return _evaluate((name,), a, b, k=k, kid_subsets=100, kid_subset_size=1000, rng=rng)[name]


# --------------------------------------------------------------------------------------------
# per-subgroup table
# --------------------------------------------------------------------------------------------


def _as_frame(groups: Any, name: str, rows: int, func: str) -> pd.DataFrame:
    import pandas as pd

    if isinstance(groups, pd.Series):
        groups = groups.to_frame()
    if not isinstance(groups, pd.DataFrame):
        raise MedgenValueError(
            f"{func}: {name} must be a pandas DataFrame with one row per feature vector (the "
            f"subgroup columns), not {type(groups).__name__}."
        )
    if len(groups) != rows:
        raise MedgenValueError(
            f"{func}: {name} has {len(groups)} row(s) but the features have {rows}; give one "
            "row per feature vector, in the same order."
        )
    return groups.reset_index(drop=True)


def _group_codes(frame: pd.DataFrame, column: str, name: str, func: str) -> NDArray[Any]:
    if column not in frame.columns:
        raise MedgenValueError(
            f"{func}: column {column!r} (from by=) is not in {name}; its columns are "
            f"{list(frame.columns)}.{did_you_mean(column, frame.columns)}"
        )
    col = frame[column]
    if col.isna().any():
        rows = list(col.index[col.isna()][:5])
        raise MedgenValueError(
            f"{func}: column {column!r} of {name} has missing values (rows {rows}); fill them "
            "(e.g. with 'unknown') or drop those rows and their features."
        )
    return col.astype(str).to_numpy()


def _by_columns(
    by: str | Sequence[str] | None, real_groups: Any, fake_groups: Any, func: str
) -> list[str]:
    if real_groups is None and fake_groups is None:
        if by:
            raise MedgenValueError(
                f"{func}: by={by!r} needs real_groups= and fake_groups= (the subgroup columns "
                "of the real images and the conditions of the samples)."
            )
        return []
    if real_groups is None or fake_groups is None:
        missing = "real_groups" if real_groups is None else "fake_groups"
        raise MedgenValueError(
            f"{func}: {missing} is missing; subgroup rows compare real and generated images of "
            "one group, so pass both real_groups= and fake_groups= (or neither)."
        )
    if by is None:
        return [c for c in real_groups.columns if c in set(fake_groups.columns)]
    return [by] if isinstance(by, str) else list(by)


def quality_table(
    real_features: ArrayLike,
    fake_features: ArrayLike,
    *,
    real_groups: pd.DataFrame | None = None,
    fake_groups: pd.DataFrame | None = None,
    by: str | Sequence[str] | None = None,
    metrics: Sequence[str] = METRICS,
    k: int = 5,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: Seed = 0,
) -> pd.DataFrame:
    """Every metric overall and per subgroup, each beside its real-vs-real floor.

    For the overall row and for every value of every ``by`` column, the group's ``N`` real and
    ``M`` generated rows are drawn down to one size ``n = min(N // 2, M)``: the real rows are
    split into two disjoint random halves ``A`` and ``B`` of ``n`` rows and ``n`` generated rows
    ``F`` are drawn without replacement. Then ``metric = metric(A, F)`` and ``metric_floor =
    metric(A, B)``: same reference, same sizes, so the gap between the two is due to the
    generated images alone (:func:`real_vs_real_floor`). A group too small for a metric
    (``n < 2`` for FID/KID, ``n <= k`` for PRDC) gets NaN and a :class:`~medgen.errors.MetricWarning`.

    Args:
        real_features: ``(N, D)`` real features.
        fake_features: ``(M, D)`` generated features, same extractor.
        real_groups: one row per real feature: its subgroup columns (``sex``, ``site``, ``label``...).
        fake_groups: one row per generated feature: the condition it was generated with, in
            columns named like ``real_groups``'.
        by: the columns to split by; default every column the two frames share. Values are
            compared as strings; missing values are refused.
        metrics: names from :data:`METRICS`, in column order.
        k: neighbours of the PRDC balls.
        kid_subsets, kid_subset_size: KID's subsets (size capped at ``n``).
        seed: int or ``numpy.random.Generator``; each row draws from its own stream
            ``default_rng([seed, row])`` when an int is given.

    Returns:
        DataFrame indexed by ``(attribute, group)`` (``("overall", "all")`` first, then each
        ``by`` column's values in sorted order) with ``n_real``, ``n_fake``, ``n`` (rows used per
        set) and ``<metric>``, ``<metric>_floor`` for each metric. ``attrs`` records ``seed``,
        ``k``, ``kid_subsets`` and ``kid_subset_size``.

    Example:
        >>> import numpy as np, pandas as pd
        >>> rng = np.random.default_rng(0)
        >>> real = rng.normal(size=(300, 4))
        >>> sex = pd.DataFrame({"sex": ["F", "M"] * 150})
        >>> fake = rng.normal(size=(100, 4)) + np.where(np.arange(100) < 50, 0.0, 2.0)[:, None]
        >>> cond = pd.DataFrame({"sex": ["F"] * 50 + ["M"] * 50})  # the "M" samples are off
        >>> t = quality_table(real, fake, real_groups=sex, fake_groups=cond, metrics=["fid"])
        >>> t[["n_real", "n_fake", "n"]]
                         n_real  n_fake    n
        attribute group
        overall   all       300     100  100
        sex       F         150      50   50
                  M         150      50   50
        >>> bool(t.loc[("sex", "M"), "fid"] > 10 * t.loc[("sex", "F"), "fid"])
        True
    """
    import pandas as pd

    func = "quality_table"
    r, f = _pair(real_features, fake_features, func, 1)
    names = _check_metric_names(metrics, func, "metrics")
    k = _positive_int(k, "k", func)
    kid_subsets = _positive_int(kid_subsets, "kid_subsets", func)
    kid_subset_size = _positive_int(kid_subset_size, "kid_subset_size", func, minimum=2)
    _rng(seed, func)  # validates
    rg = None if real_groups is None else _as_frame(real_groups, "real_groups", len(r), func)
    fg = None if fake_groups is None else _as_frame(fake_groups, "fake_groups", len(f), func)
    columns = _by_columns(by, rg, fg, func)

    rows: list[tuple[str, str, NDArray[np.bool_], NDArray[np.bool_]]] = [
        (*OVERALL, np.ones(len(r), dtype=bool), np.ones(len(f), dtype=bool))
    ]
    for col in columns:
        assert rg is not None and fg is not None  # _by_columns guarantees both
        rc = _group_codes(rg, col, "real_groups", func)
        fc = _group_codes(fg, col, "fake_groups", func)
        for value in sorted(set(rc.tolist()) | set(fc.tolist())):
            rows.append((col, value, rc == value, fc == value))

    records: list[dict[str, Any]] = []
    messages: list[str] = []
    for i, (attribute, group, rmask, fmask) in enumerate(rows):
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng([seed, i])
        ri, fi = r[rmask], f[fmask]
        n = min(len(ri) // 2, len(fi))
        rec: dict[str, Any] = {"n_real": len(ri), "n_fake": len(fi), "n": n}
        ok = [m for m in names if n >= _min_rows(m, k)]
        if len(ok) < len(names):
            where = "overall" if attribute == OVERALL[0] else f"group {group!r} of {attribute!r}"
            bad = [m for m in names if m not in ok]
            messages.append(
                f"{func}: {where} has {len(ri)} real and {len(fi)} generated rows, so n = "
                f"min(n_real // 2, n_fake) = {n}; too few for {', '.join(bad)} (FID/KID need "
                f"n >= 2, PRDC n > k = {k}): reported as NaN."
            )
        values: dict[str, float] = {}
        floors: dict[str, float] = {}
        if ok:
            ia, ib = _halves(len(ri), n, rng)
            fake_n = fi[rng.choice(len(fi), n, replace=False)]
            opts = {"k": k, "kid_subsets": kid_subsets, "kid_subset_size": kid_subset_size}
            values = _evaluate(ok, ri[ia], fake_n, rng=rng, **opts)
            floors = _evaluate(ok, ri[ia], ri[ib], rng=rng, **opts)
        for m in names:
            rec[m] = values.get(m, np.nan)
            rec[f"{m}_floor"] = floors.get(m, np.nan)
        records.append(rec)
    for msg in messages:
        warnings.warn(msg, MetricWarning, stacklevel=2)

    index = pd.MultiIndex.from_tuples([(a, g) for a, g, _, _ in rows], names=["attribute", "group"])
    table = pd.DataFrame(records, index=index)
    table.attrs.update(
        {
            "seed": None if isinstance(seed, np.random.Generator) else int(seed),
            "k": k,
            "kid_subsets": kid_subsets,
            "kid_subset_size": kid_subset_size,
        }
    )
    return table


# --------------------------------------------------------------------------------------------
# memorisation
# --------------------------------------------------------------------------------------------


def _nearest(
    train: NDArray[np.float64], query: NDArray[np.float64]
) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
    from sklearn.neighbors import NearestNeighbors

    dist, idx = NearestNeighbors(n_neighbors=1).fit(train).kneighbors(query)
    return idx[:, 0], dist[:, 0]


def _unit_rows(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Rows centred and scaled to norm 1 (constant rows become 0)."""
    c = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(c, axis=1, keepdims=True)
    out: NDArray[np.float64] = np.divide(c, norm, out=np.zeros_like(c), where=norm > 0)
    return out


class _TrainNeighbours:
    """The training rows of one space, fitted once: the nearest one to each query row.

    ``metric``: ``None`` (features: Euclidean), ``"ncc"`` (rows centred and scaled to norm 1 once;
    ``1 -`` correlation) or ``"rmse"`` (Euclidean / sqrt(voxels)). A query gives the same result
    as fitting anew for it (the same scikit-learn neighbour search on the same matrix), so
    :func:`memorisation` and the memorisation gate (which queries one batch after another
    against the same training set) share it.
    """

    def __init__(self, train: NDArray[np.float64], metric: str | None = None) -> None:
        from sklearn.neighbors import NearestNeighbors

        self.metric = metric
        self.width = train.shape[1]
        self.train = _unit_rows(train) if metric == "ncc" else train
        self._nn = NearestNeighbors(n_neighbors=1).fit(self.train)

    def nearest(self, query: NDArray[np.float64]) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
        """``(index of the nearest training row, distance)`` of every row of ``query``."""
        if self.metric == "ncc":
            zq = _unit_rows(query)
            # Euclidean order of unit vectors = correlation order
            idx = self._nn.kneighbors(zq)[1][:, 0]
            return idx, 1.0 - np.einsum("ij,ij->i", zq, self.train[idx])
        dist, idx = self._nn.kneighbors(query)
        if self.metric == "rmse":
            return idx[:, 0], dist[:, 0] / np.sqrt(self.width)
        return idx[:, 0], dist[:, 0]


def _pixel_nearest(
    train: NDArray[np.float64], query: NDArray[np.float64], metric: str
) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
    return _TrainNeighbours(train, metric).nearest(query)


@dataclass
class MemorisationReference:
    """The training and held-out sides of :func:`memorisation`, prepared once: the fitted
    neighbour searches of the training features (and unit-normalised training images) and the
    held-out images' distances to them. ``query(...)`` then costs one neighbour search per
    space for the samples alone, with results identical to :func:`memorisation` on the same
    arrays (the memorisation gate queries it batch after batch).

    Build it with :func:`memorisation_reference`.
    """

    features: _TrainNeighbours
    holdout_feature_distance: NDArray[np.float64]
    pixels: _TrainNeighbours | None
    holdout_pixel_distance: NDArray[np.float64] | None
    quantile: float
    pixel_metric: str

    def query(
        self, sample_features: ArrayLike, sample_pixels: ArrayLike | None = None
    ) -> pd.DataFrame:
        """:func:`memorisation` of these samples (same columns and attrs)."""
        func = "memorisation"
        sa = as_features(sample_features, "sample_features", func=func, min_rows=1)
        check_same_width(func, train_features=self.features.train, sample_features=sa)
        sp = None
        if self.pixels is not None:
            if sample_pixels is None:
                raise MedgenValueError(
                    f"{func}: this reference has training images; pass sample_pixels too."
                )
            sp = as_pixels(sample_pixels, "sample_pixels", func=func, rows=sa.shape[0])
            if sp.shape[1] != self.pixels.width:
                raise MedgenValueError(
                    f"{func}: sample_pixels has {sp.shape[1]} voxels per image, the training "
                    f"images {self.pixels.width}; put them on one grid."
                )
        return _memorisation_table(self, sa, sp)


def _check_gate_options(func: str, quantile: Any, pixel_metric: Any) -> None:
    """The near-copy ``quantile`` (a number in (0, 0.5]) and the ``pixel_metric`` (one of
    :data:`PIXEL_METRICS`) of :func:`memorisation` and :func:`memorisation_reference`."""
    if (
        isinstance(quantile, bool)
        or not isinstance(quantile, int | float)
        or not (0.0 < quantile <= 0.5)
    ):
        raise MedgenValueError(
            f"{func}: quantile must be a number in (0, 0.5] (the share of held-out images a "
            f"near-copy threshold lets through, e.g. 0.01), not {quantile!r}."
        )
    if pixel_metric not in PIXEL_METRICS:
        raise MedgenValueError(
            f"{func}: pixel_metric must be one of {list(PIXEL_METRICS)}, not {pixel_metric!r}."
            f"{did_you_mean(pixel_metric, PIXEL_METRICS)}"
        )


def memorisation_reference(
    train_features: ArrayLike,
    holdout_features: ArrayLike,
    *,
    train_pixels: ArrayLike | None = None,
    holdout_pixels: ArrayLike | None = None,
    quantile: float = 0.01,
    pixel_metric: str = "ncc",
) -> MemorisationReference:
    """The :class:`MemorisationReference` of :func:`memorisation`'s training and held-out
    arrays (same arguments and checks, without the samples)."""
    func = "memorisation"
    tr = as_features(train_features, "train_features", func=func, min_rows=1)
    ho = as_features(holdout_features, "holdout_features", func=func, min_rows=1)
    check_same_width(func, train_features=tr, holdout_features=ho)
    _check_gate_options(func, quantile, pixel_metric)
    if (train_pixels is None) != (holdout_pixels is None):
        given = "train_pixels" if train_pixels is not None else "holdout_pixels"
        raise MedgenValueError(
            f"{func}: {given} given but not the other; pixel-space distances need the "
            "training, sample and held-out images: pass all three or none."
        )
    features = _TrainNeighbours(tr)
    _, hdist = features.nearest(ho)
    pixels = phdist = None
    if train_pixels is not None:
        tp = as_pixels(train_pixels, "train_pixels", func=func, rows=tr.shape[0])
        hp = as_pixels(holdout_pixels, "holdout_pixels", func=func, rows=ho.shape[0])
        check_same_width(func, train_pixels=tp, holdout_pixels=hp)
        pixels = _TrainNeighbours(tp, pixel_metric)
        _, phdist = pixels.nearest(hp)
    return MemorisationReference(features, hdist, pixels, phdist, float(quantile), pixel_metric)


def _memorisation_table(
    ref: MemorisationReference, sa: NDArray[np.float64], sp: NDArray[np.float64] | None
) -> pd.DataFrame:
    import pandas as pd

    quantile = ref.quantile
    attrs: dict[str, Any] = {"quantile": float(quantile), "pixel_metric": None}
    idx, dist = ref.features.nearest(sa)
    columns, extra = _space_columns(
        "feature", idx, dist, ref.holdout_feature_distance, quantile, "holdout_features"
    )
    attrs.update(extra)
    near = np.asarray(columns["feature_near_copy"], dtype=bool)
    if ref.pixels is not None and sp is not None and ref.holdout_pixel_distance is not None:
        pidx, pdist = ref.pixels.nearest(sp)
        pcols, extra = _space_columns(
            "pixel", pidx, pdist, ref.holdout_pixel_distance, quantile, "holdout_pixels"
        )
        columns.update(pcols)
        attrs.update(extra)
        attrs["pixel_metric"] = ref.pixel_metric
        near = near | np.asarray(pcols["pixel_near_copy"], dtype=bool)
    columns["near_copy"] = near
    out = pd.DataFrame(columns, index=pd.RangeIndex(sa.shape[0], name="sample"))
    out.attrs.update(attrs)
    return out


def _space_columns(
    space: str,
    idx: NDArray[np.intp],
    dist: NDArray[np.float64],
    holdout: NDArray[np.float64],
    quantile: float,
    argument: str,
) -> tuple[dict[str, Any], dict[str, float]]:
    threshold = float(np.quantile(holdout, quantile))
    median = float(np.median(holdout))
    exact = int((holdout <= 1e-12 * max(1.0, float(holdout.max()))).sum())
    if exact:
        warnings.warn(
            f"memorisation: {exact} held-out image(s) coincide with a training image in {space} "
            f"space (distance 0), so the near-copy threshold is 0; {argument} must not overlap "
            "the training set: remove the duplicates from it.",
            MetricWarning,
            stacklevel=3,
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = dist / median
    ecdf = np.searchsorted(np.sort(holdout), dist, side="left") / holdout.size
    columns = {
        f"{space}_train_index": idx,
        f"{space}_distance": dist,
        f"{space}_ratio": ratio,
        f"{space}_quantile": ecdf,
        f"{space}_near_copy": dist <= threshold,
    }
    return columns, {f"{space}_threshold": threshold, f"{space}_holdout_median": median}


def memorisation(
    train_features: ArrayLike,
    sample_features: ArrayLike,
    holdout_features: ArrayLike,
    *,
    train_pixels: ArrayLike | None = None,
    sample_pixels: ArrayLike | None = None,
    holdout_pixels: ArrayLike | None = None,
    quantile: float = 0.01,
    pixel_metric: str = "ncc",
) -> pd.DataFrame:
    """Each sample's nearest training image, and whether it is closer than real new images are.

    A model that copies its training data produces samples closer to some training image than
    genuinely new images are. The reference for "new" is a real held-out set (images of subjects
    the model never saw): their distances ``h`` to the nearest training image give the
    threshold ``tau = quantile(h, quantile)``. A sample with nearest-training distance ``d <= tau``
    is a near-copy (about ``quantile`` of genuinely new images would be flagged too). Feature
    space catches copies up to what the extractor ignores; pixel space catches literal copies
    (with ``"ncc"``, up to a linear intensity change). A sample is a ``near_copy`` if it is one in
    either space.

    Args:
        train_features: ``(N_train, D)`` features of the model's training images.
        sample_features: ``(M, D)`` features of generated images.
        holdout_features: ``(N_hold, D)`` features of real images not used for training.
        train_pixels, sample_pixels, holdout_pixels: optionally the images ``(N, ...)``
            (``(N, C, X, Y[, Z])`` or any shape, flattened; one grid), in the same order as the
            features. Give all three or none.
        quantile: in (0, 0.5]; the share of held-out images that would count as near-copies.
        pixel_metric: ``"ncc"`` (``1 -`` Pearson correlation of the flattened images, in
            [0, 2]; a constant image correlates 0) or ``"rmse"`` (root-mean-square voxel
            difference, in the images' units).

    Returns:
        DataFrame indexed by ``sample`` (row of ``sample_features``) with, per space
        (``feature``, and ``pixel`` when images are given): ``<space>_train_index`` (row of the
        nearest training image), ``<space>_distance`` (``d``), ``<space>_ratio`` (``d`` /
        median of ``h``: about 1 for a typical new image, near 0 for a copy), ``<space>_quantile``
        (share of held-out images closer to the training set than the sample: 0 = closer than
        all of them), ``<space>_near_copy`` (``d <= tau``); and ``near_copy`` (either space).
        ``attrs`` holds ``quantile``, ``pixel_metric`` and each space's ``threshold`` and
        ``holdout_median``.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> train, holdout = rng.normal(size=(200, 8)), rng.normal(size=(100, 8))
        >>> samples = np.vstack([train[7], rng.normal(size=(9, 8))])  # sample 0 copies image 7
        >>> memo = memorisation(train, samples, holdout, quantile=0.05)
        >>> int(memo.loc[0, "feature_train_index"]), bool(memo.loc[0, "near_copy"])
        (7, True)
        >>> int(memo["near_copy"].sum())
        1
    """
    func = "memorisation"
    tr = as_features(train_features, "train_features", func=func, min_rows=1)
    sa = as_features(sample_features, "sample_features", func=func, min_rows=1)
    ho = as_features(holdout_features, "holdout_features", func=func, min_rows=1)
    check_same_width(func, train_features=tr, sample_features=sa, holdout_features=ho)
    _check_gate_options(func, quantile, pixel_metric)
    pixels = {"train_pixels": train_pixels, "sample_pixels": sample_pixels}
    pixels["holdout_pixels"] = holdout_pixels
    given = [name for name, v in pixels.items() if v is not None]
    if given and len(given) < 3:
        missing = [name for name in pixels if name not in given]
        raise MedgenValueError(
            f"{func}: {', '.join(given)} given but {', '.join(missing)} missing; pixel-space "
            "distances need the training, sample and held-out images: pass all three or none."
        )
    if ho.shape[0] < 1.0 / quantile:
        warnings.warn(
            f"{func}: {ho.shape[0]} held-out image(s) < 1 / quantile = {1.0 / quantile:g}; the "
            "threshold is set by the closest one or two held-out images and is noisy. Use more "
            "held-out images or a larger quantile.",
            MetricWarning,
            stacklevel=2,
        )

    tp = sp = hp = None
    if given:
        tp = as_pixels(train_pixels, "train_pixels", func=func, rows=tr.shape[0])
        sp = as_pixels(sample_pixels, "sample_pixels", func=func, rows=sa.shape[0])
        hp = as_pixels(holdout_pixels, "holdout_pixels", func=func, rows=ho.shape[0])
        check_same_width(func, train_pixels=tp, sample_pixels=sp, holdout_pixels=hp)
    ref = memorisation_reference(
        tr, ho, train_pixels=tp, holdout_pixels=hp, quantile=quantile, pixel_metric=pixel_metric
    )
    return _memorisation_table(ref, sa, sp)


def count_near_copies(
    memo: pd.DataFrame,
    conditions: pd.DataFrame | None = None,
    *,
    by: str | Sequence[str] | None = None,
) -> pd.DataFrame:
    """Near-copies of :func:`memorisation` counted overall and per condition value.

    Args:
        memo: the table :func:`memorisation` returned (its ``near_copy`` column; any
            ``*_near_copy`` columns are counted too).
        conditions: one row per sample, in ``memo``'s order: the condition columns each sample
            was generated with. None for the overall row only.
        by: columns of ``conditions`` to count by; default all of them.

    Returns:
        DataFrame indexed by ``(attribute, group)`` (``("overall", "all")`` first) with
        ``n_samples``, ``n_near_copies``, ``near_copy_rate`` and ``n_<space>_near_copies``.

    Example:
        >>> import pandas as pd
        >>> memo = pd.DataFrame({"near_copy": [True, False, False, True]})
        >>> count_near_copies(memo, pd.DataFrame({"sex": ["F", "F", "M", "M"]}))
                         n_samples  n_near_copies  near_copy_rate
        attribute group
        overall   all            4              2             0.5
        sex       F              2              1             0.5
                  M              2              1             0.5
    """
    import pandas as pd

    func = "count_near_copies"
    if not isinstance(memo, pd.DataFrame) or "near_copy" not in memo.columns:
        raise MedgenValueError(
            f"{func}: memo must be the DataFrame memorisation() returned (with a 'near_copy' "
            "column)."
        )
    flags = {"near_copies": memo["near_copy"].to_numpy(dtype=bool)}
    for col in memo.columns:
        if col.endswith("_near_copy") and col != "near_copy":
            flags[f"{col[: -len('_near_copy')]}_near_copies"] = memo[col].to_numpy(dtype=bool)
    rows: list[tuple[str, str, NDArray[np.bool_]]] = [(*OVERALL, np.ones(len(memo), dtype=bool))]
    if conditions is not None:
        frame = _as_frame(conditions, "conditions", len(memo), func)
        cols = list(frame.columns) if by is None else ([by] if isinstance(by, str) else list(by))
        for col in cols:
            codes = _group_codes(frame, col, "conditions", func)
            rows.extend((col, v, codes == v) for v in sorted(set(codes.tolist())))
    elif by:
        raise MedgenValueError(f"{func}: by={by!r} needs conditions= (one row per sample).")
    records = []
    for _, _, mask in rows:
        n = int(mask.sum())
        rec: dict[str, Any] = {
            "n_samples": n,
            "n_near_copies": int(flags["near_copies"][mask].sum()),
        }
        rec["near_copy_rate"] = rec["n_near_copies"] / n if n else np.nan
        for name, flag in flags.items():
            if name != "near_copies":
                rec[f"n_{name}"] = int(flag[mask].sum())
        records.append(rec)
    index = pd.MultiIndex.from_tuples([(a, g) for a, g, _ in rows], names=["attribute", "group"])
    return pd.DataFrame(records, index=index)


# --------------------------------------------------------------------------------------------
# conditioning fidelity
# --------------------------------------------------------------------------------------------


def _auc(y: NDArray[np.bool_], s: NDArray[np.float64]) -> float:
    from sklearn.metrics import roc_auc_score

    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, s))


def conditioning_fidelity(
    y_condition: ArrayLike,
    y_score: ArrayLike,
    *,
    labels: Sequence[Any] | None = None,
    threshold: float = 0.5,
) -> pd.DataFrame:
    """Does a classifier trained on real images recognise the condition each sample was given?

    For each condition ``c``: ``accuracy`` is the share of samples generated with ``c`` that the
    classifier assigns to ``c`` (per-class recall), ``auc`` the one-vs-rest ROC AUC of the score
    of ``c`` for telling them from the other samples. The ``overall`` row holds the accuracy over
    all samples and the AUC (binary) or the mean of the per-condition AUCs (multi-class, macro
    one-vs-rest). Read them against the same classifier on real held-out images (call this
    function with their true labels): that is the ceiling the samples can reach.

    Args:
        y_condition: ``(M,)`` the condition each sample was generated with.
        y_score: ``(M,)`` probability of the positive condition (binary: ``labels[1]``) or
            ``(M, C)`` a score per condition, columns in ``labels`` order.
        labels: the conditions in score-column order; default the sorted distinct values of
            ``y_condition`` (then every condition must occur).
        threshold: binary decision threshold on ``y_score``.

    Returns:
        DataFrame indexed by ``condition`` (``"overall"`` first, then each label as a string)
        with ``n``, ``accuracy`` and ``auc``. AUC is NaN (with a MetricWarning) where only one
        class is present.

    Example:
        >>> import numpy as np
        >>> cond = np.array([0, 0, 0, 1, 1, 1])
        >>> score = np.array([0.1, 0.4, 0.6, 0.7, 0.8, 0.3])
        >>> conditioning_fidelity(cond, score).round(3)
                   n  accuracy    auc
        condition
        overall    6     0.667  0.778
        0          3     0.667  0.778
        1          3     0.667  0.778
    """
    import pandas as pd

    func = "conditioning_fidelity"
    cond = np.asarray(y_condition)
    if cond.ndim != 1 or cond.size == 0:
        raise MedgenValueError(
            f"{func}: y_condition must be a non-empty 1-D array (one condition per sample), "
            f"but it has shape {cond.shape}."
        )
    try:
        score = np.asarray(y_score, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise MedgenValueError(f"{func}: y_score must be numeric scores.") from err
    if score.shape[0] != cond.shape[0] or score.ndim not in (1, 2):
        raise MedgenValueError(
            f"{func}: y_score must have shape ({cond.size},) or ({cond.size}, C) to match "
            f"y_condition, but it has shape {score.shape}."
        )
    if not np.isfinite(score).all():
        raise MedgenValueError(f"{func}: y_score has NaN or infinite values.")
    names = list(np.unique(cond)) if labels is None else list(labels)
    unknown = sorted({str(c) for c in cond.tolist()} - {str(n) for n in names})
    if unknown:
        raise MedgenValueError(
            f"{func}: y_condition holds {unknown[:5]} not in labels={names}; list every condition."
        )
    binary = score.ndim == 1
    if binary and len(names) != 2:
        raise MedgenValueError(
            f"{func}: 1-D y_score is the probability of the positive condition, so there must be "
            f"exactly 2 conditions, but there are {len(names)} ({names}); pass labels=[negative, "
            "positive], or a (M, C) y_score for several conditions."
        )
    if not binary and score.shape[1] != len(names):
        raise MedgenValueError(
            f"{func}: y_score has {score.shape[1]} columns but there are {len(names)} "
            f"conditions ({names}); pass labels= in the score columns' order."
        )
    columns = np.column_stack([1.0 - score, score]) if binary else score
    keys = [str(n) for n in names]
    column_of = {key: j for j, key in enumerate(keys)}
    code = np.array([column_of[str(c)] for c in cond.tolist()], dtype=np.intp)
    pred = (score >= threshold).astype(np.intp) if binary else np.argmax(columns, axis=1)
    hit = pred == code
    rows = [{"n": cond.size, "accuracy": float(hit.mean()), "auc": np.nan}]
    aucs = []
    undefined = []
    for j, key in enumerate(keys):
        mask = code == j
        auc = _auc(mask, columns[:, j])
        if np.isnan(auc):
            undefined.append(key)
        aucs.append(auc)
        acc = float(hit[mask].mean()) if mask.any() else np.nan
        rows.append({"n": int(mask.sum()), "accuracy": acc, "auc": auc})
    if undefined:
        warnings.warn(
            f"{func}: AUC undefined (NaN) for condition(s) {undefined}: they hold all samples "
            "or none, so there is nothing to rank against.",
            MetricWarning,
            stacklevel=2,
        )
    finite = [a for a in aucs if not np.isnan(a)]
    rows[0]["auc"] = (aucs[1] if binary else float(np.mean(finite))) if finite else np.nan
    index = pd.Index(["overall", *keys], name="condition")
    return pd.DataFrame(rows, index=index)
