"""Disparities against a reference group: differences, ratios, bootstrap p-values, adjustment."""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import NDArray

from medgen.errors import MedgenValueError

__all__ = ["P_ADJUST", "adjust_pvalues", "bootstrap_pvalue"]

#: Multiplicity adjustments by name.
P_ADJUST = ("holm", "bh")


def adjust_pvalues(p: NDArray[np.float64], method: str = "holm") -> NDArray[np.float64]:
    """Adjust p-values for multiple testing; NaN entries are left out of the family.

    Args:
        p: ``(M,)`` raw p-values.
        method: ``"holm"`` (Holm-Bonferroni step-down, controls the family-wise error rate) or
            ``"bh"`` (Benjamini-Hochberg step-up, controls the false discovery rate).

    Returns:
        ``(M,)`` adjusted p-values, monotone in the raw ones and capped at 1.
    """
    if method not in P_ADJUST:
        raise MedgenValueError(f"p_adjust must be one of {P_ADJUST}, not {method!r}")
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.shape[0]
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    ps = p[order]
    rank = np.arange(1, m + 1, dtype=np.float64)
    if method == "holm":
        adj = np.maximum.accumulate((m - rank + 1) * ps)
    else:
        adj = np.minimum.accumulate(((m / rank) * ps)[::-1])[::-1]
    out[order] = np.minimum(adj, 1.0)
    return out


def bootstrap_pvalue(
    estimate: NDArray[np.float64], reps: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Two-sided test of ``H0: difference == 0`` with the bootstrap standard error.

    ``z = d / se*`` where ``se*`` is the standard deviation of the bootstrap replicates of the
    difference, and ``p = 2 * Phi(-|z|)``. Counting replicates more extreme than the estimate
    (``(1 + #) / (1 + B)``) cannot give p-values below ``1 / (B + 1)``, too coarse to survive a
    multiplicity adjustment over hundreds of comparisons; the standard-error form is continuous.

    Args:
        estimate: ``(K,)`` observed differences ``d``.
        reps: ``(B, K)`` bootstrap replicates of the differences (NaN replicates are ignored).

    Returns:
        ``(K,)`` p-values; NaN where the estimate is NaN or fewer than 2 replicates are valid.
    """
    from scipy.special import ndtr

    valid = (~np.isnan(reps)).sum(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        se = np.nanstd(reps, axis=0, ddof=1)
        z = np.abs(estimate) / se
    p = np.where(se > 0, 2.0 * ndtr(-z), np.where(estimate == 0, 1.0, 0.0))
    return np.where(np.isnan(estimate) | (valid < 2), np.nan, p)
