"""Subject-level, seeded, stratified split assignment (the algorithm behind :meth:`Cohort.split`).

Subjects, not images, are assigned, so no person is in two splits. Each subject's stratum is its
majority value of each stratify column; within a stratum subjects are shuffled with
``numpy.random.default_rng(seed)`` and cut by :func:`allocate`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from medgen.cohort._schema import manifest_spec, suggest
from medgen.errors import MedgenValueError

__all__ = [
    "DEFAULT_FRACTIONS",
    "allocate",
    "assign_splits",
    "check_fractions",
    "majority_by_subject",
]

logger = logging.getLogger(__name__)

DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.7, "val": 0.15, "test": 0.15}
"""Default subject fractions of :meth:`Cohort.split`."""
_MISSING_GROUP = "<missing>"


def check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """``fractions`` as a dict after checking names (``train``/``val``/``test``), values, sum 1."""
    spec = manifest_spec()
    fr = dict(fractions)
    if not fr:
        raise MedgenValueError("split(fractions={}): give at least one split name.")
    for name, f in fr.items():
        if name not in spec["split_values"]:
            raise MedgenValueError(
                f"split(fractions=...): unknown split name {name!r}; use "
                f"{spec['split_values']}.{suggest(name, spec['split_values'])}"
            )
        if not isinstance(f, (int, float)) or not np.isfinite(f) or f < 0:
            raise MedgenValueError(
                f"split(fractions=...): fraction of {name!r} must be a number >= 0, not {f!r}."
            )
    total = float(sum(fr.values()))
    if abs(total - 1.0) > 1e-6:
        raise MedgenValueError(
            f"split(fractions={fr}): fractions must sum to 1, not {total:g}. "
            "Scale them, e.g. {'train': 0.7, 'val': 0.15, 'test': 0.15}."
        )
    return fr


def assign_splits(
    df: pd.DataFrame, *, fractions: Mapping[str, float], stratify: Sequence[str], seed: int
) -> tuple[pd.Series, int]:
    """The split of every row of ``df``, assigned per subject; checked arguments expected.

    Returns:
        The ``split`` column (string dtype, aligned with ``df``) and the number of strata.
    """
    names = list(fractions)
    probs = np.array([fractions[n] for n in names], dtype=float)

    subj = df["subject_id"]
    order = subj.drop_duplicates().tolist()  # row order of first appearance
    if stratify:
        majority = {c: majority_by_subject(df, c) for c in stratify}
        strata = pd.DataFrame(majority).reindex(order)
        keys = strata.astype(object).where(strata.notna(), _MISSING_GROUP)
        stratum_of = keys.apply(lambda r: tuple(str(v) for v in r), axis=1)
    else:
        stratum_of = pd.Series([()] * len(order), index=order, dtype=object)

    rng = np.random.default_rng(int(seed))
    assignment: dict[str, str] = {}
    groups: dict[tuple[str, ...], list[str]] = {}
    for subject, key in stratum_of.items():
        groups.setdefault(key, []).append(str(subject))
    if stratify and len(order) >= 10 and len(groups) > len(order) / 2:
        logger.warning(
            "split(stratify=%s): %d strata for %d subjects, so most strata hold one subject "
            "and stratification does little; stratify on binned columns (e.g. age_group "
            "instead of age) or fewer columns.",
            list(stratify),
            len(groups),
            len(order),
        )
    for key in sorted(groups):
        members = sorted(groups[key])
        members = [members[i] for i in rng.permutation(len(members))]
        counts = allocate(len(members), probs, rng)
        start = 0
        for name, k in zip(names, counts, strict=True):
            for s in members[start : start + k]:
                assignment[s] = name
            start += k
    return subj.map(assignment).astype("string"), len(groups)


def majority_by_subject(df: pd.DataFrame, col: str) -> pd.Series:
    """Each subject's most frequent value of ``col`` (missing counts as a value; ties go to the
    value seen first in row order). Indexed by subject_id."""
    tmp = pd.DataFrame(
        {
            "subject_id": df["subject_id"].to_numpy(),
            "value": df[col].astype(object).where(df[col].notna(), None).to_numpy(),
            "row": np.arange(len(df)),
        }
    )
    stats = tmp.groupby(["subject_id", "value"], dropna=False, sort=False)["row"].agg(
        ["size", "min"]
    )
    stats = stats.reset_index().sort_values(
        ["subject_id", "size", "min"], ascending=[True, False, True], kind="stable"
    )
    best = stats.drop_duplicates("subject_id", keep="first").set_index("subject_id")["value"]
    return best.astype(object).where(best.notna(), None)


def allocate(n: int, probs: np.ndarray, rng: np.random.Generator) -> list[int]:
    """Split ``n`` items into ``len(probs)`` counts: floors, then leftovers drawn by remainder."""
    exact = probs * n
    counts = np.floor(exact).astype(int)
    left = n - int(counts.sum())
    if left > 0:
        rem = exact - counts
        p = rem / rem.sum() if rem.sum() > 0 else probs / probs.sum()
        extra = rng.choice(len(probs), size=left, replace=False, p=p)
        counts[extra] += 1
    return counts.tolist()
