"""Decision thresholds: fixed numbers or operating points chosen on the data.

A row is predicted positive when ``score >= threshold`` (the convention of
:func:`sklearn.metrics.roc_curve`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from medgen.errors import MedgenValueError

__all__ = ["ThresholdSpec", "resolve_threshold"]

ThresholdSpec = float | str

_RULES = ("youden", "sensitivity:<x>", "specificity:<x>")


def _parse(spec: ThresholdSpec) -> tuple[str, float]:
    if isinstance(spec, bool):
        raise MedgenValueError(f"threshold must be a number or one of {_RULES}, not {spec!r}")
    if isinstance(spec, int | float | np.floating | np.integer):
        value = float(spec)
        if not np.isfinite(value):
            raise MedgenValueError(f"threshold must be a finite number, not {spec!r}")
        return "fixed", value
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "youden":
            return "youden", float("nan")
        for rule in ("sensitivity", "specificity"):
            if text.startswith(rule + ":"):
                try:
                    target = float(text.split(":", 1)[1])
                except ValueError as err:
                    raise MedgenValueError(
                        f"threshold {spec!r}: the part after ':' must be a number in (0, 1], "
                        f"e.g. '{rule}:0.9'"
                    ) from err
                if not 0.0 < target <= 1.0:
                    raise MedgenValueError(
                        f"threshold {spec!r}: the target {rule} must be in (0, 1], not {target}"
                    )
                return rule, target
    raise MedgenValueError(
        f"threshold must be a number or one of {_RULES} (e.g. 'sensitivity:0.9'), not {spec!r}"
    )


def resolve_threshold(
    spec: ThresholdSpec, y: NDArray[np.int8], score: NDArray[np.float64], *, where: str = "data"
) -> float:
    """Turn a threshold specification into a number.

    Args:
        spec: a number, ``"youden"`` (maximise TPR - FPR), ``"sensitivity:x"`` (the highest
            threshold whose sensitivity is at least ``x``) or ``"specificity:x"`` (the lowest
            threshold whose specificity is at least ``x``).
        y: ``(N,)`` labels in {0, 1}.
        score: ``(N,)`` scores.
        where: names the population in error messages (e.g. ``"group sex=F"``).

    Returns:
        The threshold; candidates are the distinct scores (plus one just above the maximum, which
        predicts nobody positive).
    """
    rule, target = _parse(spec)
    if rule == "fixed":
        return target
    pos_total = float(y.sum())
    neg_total = float(y.shape[0] - pos_total)
    if pos_total == 0 or neg_total == 0:
        raise MedgenValueError(
            f"threshold {spec!r} needs both classes in {where}, but it has {int(pos_total)} "
            f"positives and {int(neg_total)} negatives; use a fixed number instead"
        )
    uniq, inverse = np.unique(score, return_inverse=True)
    pos = np.bincount(inverse, weights=y.astype(np.float64), minlength=uniq.shape[0])
    cnt = np.bincount(inverse, minlength=uniq.shape[0]).astype(np.float64)
    # candidates: each distinct score (predict s >= u) and one above the maximum.
    cand = np.append(uniq, np.nextafter(uniq[-1], np.inf))
    tp = np.append(np.cumsum(pos[::-1])[::-1], 0.0)
    sel = np.append(np.cumsum(cnt[::-1])[::-1], 0.0)
    tpr = tp / pos_total
    fpr = (sel - tp) / neg_total
    if rule == "youden":
        j = tpr - fpr
        # the highest threshold among the maximisers
        idx = int(np.flatnonzero(j == j.max())[-1])
    elif rule == "sensitivity":
        idx = int(np.flatnonzero(tpr >= target - 1e-12)[-1])
    else:  # specificity
        idx = int(np.flatnonzero(1.0 - fpr >= target - 1e-12)[0])
    return float(cand[idx])
