"""Disparities against a reference group: differences, ratios, bootstrap p-values, adjustment."""

from __future__ import annotations

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
    """Two-sided bootstrap test of ``H0: difference == 0``.

    The bootstrap distribution is centred on the estimate to mimic the null (Hall & Wilson 1991):
    ``p = (1 + #{b: |d*_b - d| >= |d|}) / (1 + B_valid)``.

    Args:
        estimate: ``(K,)`` observed differences ``d``.
        reps: ``(B, K)`` bootstrap replicates of the differences (NaN replicates are ignored).

    Returns:
        ``(K,)`` p-values; NaN where the estimate is NaN or no replicate is valid.
    """
    valid = ~np.isnan(reps)
    n_valid = valid.sum(axis=0)
    with np.errstate(invalid="ignore"):
        extreme = (np.abs(reps - estimate) >= np.abs(estimate) - 1e-12) & valid
    p = (1.0 + extreme.sum(axis=0)) / (1.0 + n_valid)
    return np.where(np.isnan(estimate) | (n_valid == 0), np.nan, p)
