"""The cohort table: attributes, disease, splits, and the injected bias mechanisms.

Everything here acts on the subject table (one row per subject), before any image is made:

- ``under_representation``: the group's proportion is multiplied by ``1 - strength`` (others
  renormalised) before attributes are drawn.
- ``acquisition_shift``: each subject of the group is moved to ``params['site']`` with
  probability ``strength`` (a site serving mostly one group).
- ``under_diagnosis``: each true positive of the group is recorded as ``label = 0`` with
  probability ``strength`` (``label_true`` keeps the truth).
- ``presentation``: the group's subjects get ``presentation = 1 - strength``: lesion contrast
  (for atrophy, the tissue lost) is multiplied by it, lesion radius by ``(1 + presentation) / 2``.
- ``shortcut``: a marker is burned into the image of the group's recorded positives with
  probability ``strength`` (and of its negatives with ``params['base_rate']``, default 0).
- ``scarce_positives``: after the split, ``round(strength x m)`` of the group's ``m`` recorded
  positives in the training split are never recruited: their rows leave the table (val and test
  keep theirs). Drawn from a generator of its own (``default_rng([seed, 2])``), so every other
  subject is exactly the subject drawn without the mechanism; the table's index keeps each
  subject's number, which seeds its image (:func:`~medgen.simulate.render_subject`).

The realised effect of each mechanism (counts and rates) is returned as ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from medgen.simulate._config import BIAS_MECHANISMS, SimulationConfig, age_group_labels

__all__ = ["draw_cohort"]


def _draw_categorical(dist: dict[str, float], n: int, rng: np.random.Generator) -> np.ndarray:
    groups = list(dist)
    p = np.array([dist[g] for g in groups], dtype=np.float64)
    p = p / p.sum()
    return np.asarray(groups, dtype=object)[rng.choice(len(groups), size=n, p=p)]


def _down_weight(dist: dict[str, float], group: str, strength: float) -> dict[str, float]:
    out = dict(dist)
    out[group] = out[group] * (1.0 - strength)
    total = sum(out.values())
    if total <= 0:
        return dist
    return {g: v / total for g, v in out.items()}


def seed_key(seed: int | Sequence[int]) -> list[int]:
    """The entropy key of ``seed``: ``[seed]`` for an int, the integers of a sequence.

    ``numpy.random.default_rng([*seed_key(seed), stream, ...])`` is then the same generator as
    ``default_rng([seed, stream, ...])`` for an int ``seed``; a longer key (e.g. the oracle's
    ``(tag, simulation seed, sample seed, 0, chunk)``) gives streams no cohort seed reaches.
    """
    if isinstance(seed, int | np.integer):
        return [int(seed)]
    return [int(s) for s in seed]


def draw_cohort(
    cfg: SimulationConfig, seed: int | Sequence[int]
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Draw the subject table and the realised ground truth of each bias mechanism.

    ``seed``: an int (the cohort seed), or a sequence of ints (an entropy key, see
    :func:`seed_key`).

    Returns:
        ``(table, ground_truth)``: one row per subject with ``subject_id``, ``sex``, ``age``,
        ``age_group``, ``site``, user attributes, ``label_true``, ``label``, ``severity``,
        ``presentation``, ``marker``, ``split``; and one dict per configured bias. The table's
        index is each subject's number ``i`` (``subject_id`` ``sim<i>``, and the ``index`` of
        :func:`~medgen.simulate.render_subject`): ``0..n-1``, with gaps where
        ``scarce_positives`` left subjects out.
    """
    key = seed_key(seed)
    rng = np.random.default_rng([*key, 0])
    pop = cfg.population
    n = pop.n_subjects
    biases = cfg.biases

    # -- attribute distributions, after under-representation
    dists: dict[str, dict[str, float]] = {"sex": dict(pop.sex)}
    dists.update({k: dict(v) for k, v in pop.attributes.items()})
    for b in biases:
        if b.mechanism == "under_representation":
            dists[b.attribute] = _down_weight(dists[b.attribute], b.group, b.strength)

    table = pd.DataFrame({"subject_id": [f"sim{i:05d}" for i in range(n)]})
    table["sex"] = _draw_categorical(dists["sex"], n, rng)
    age = rng.normal(pop.age.mean, pop.age.sd, n)
    bad = (age < pop.age.min) | (age > pop.age.max)
    while bad.any():  # truncated normal by rejection
        age[bad] = rng.normal(pop.age.mean, pop.age.sd, int(bad.sum()))
        bad = (age < pop.age.min) | (age > pop.age.max)
    table["age"] = np.round(age, 1)
    labels = age_group_labels(pop.age.bins)
    bin_idx = np.searchsorted(np.asarray(pop.age.bins), table["age"].to_numpy(), side="right") - 1
    table["age_group"] = np.asarray(labels, dtype=object)[np.clip(bin_idx, 0, len(labels) - 1)]
    for name in pop.attributes:
        values = _draw_categorical(dists[name], n, rng)
        for given, cond_groups in pop.conditional.get(name, {}).items():
            for g, dist in cond_groups.items():
                for b in biases:  # under-representation acts on conditional proportions too
                    if b.mechanism == "under_representation" and b.attribute == name:
                        dist = _down_weight(dist, b.group, b.strength)
                rows = (table[given] == g).to_numpy()
                values[rows] = _draw_categorical(dist, int(rows.sum()), rng)
        table[name] = values
    table["site"] = _draw_categorical({s.name: s.proportion for s in cfg.sites}, n, rng)

    ground_truth: list[dict[str, Any]] = []
    for b in biases:
        if b.mechanism != "acquisition_shift":
            continue
        in_group = (table[b.attribute] == b.group).to_numpy()
        moved = in_group & (rng.random(n) < b.strength)
        table.loc[moved, "site"] = b.params["site"]

    # -- disease
    prev = np.full(n, cfg.disease.prevalence)
    for attr, per_group in cfg.disease.prevalence_by.items():
        for g, p in per_group.items():
            prev[(table[attr] == g).to_numpy()] = p
    label_true = (rng.random(n) < prev).astype(np.int64)
    lo, hi = cfg.disease.severity
    severity = np.where(label_true == 1, rng.uniform(lo, hi, n), 0.0)
    table["label_true"] = label_true
    table["severity"] = np.round(severity, 4)
    label = label_true.copy()
    presentation = np.ones(n)
    marker = np.zeros(n, dtype=bool)
    u_diag = rng.random(n)
    u_mark = rng.random(n)
    for b in biases:
        in_group = (table[b.attribute] == b.group).to_numpy()
        if b.mechanism == "under_diagnosis":
            flip = in_group & (label_true == 1) & (u_diag < b.strength)
            label[flip] = 0
        elif b.mechanism == "presentation":
            presentation[in_group] *= 1.0 - b.strength
    table["label"] = label
    for b in biases:
        if b.mechanism == "shortcut":
            in_group = (table[b.attribute] == b.group).to_numpy()
            base = float(b.params.get("base_rate", 0.0))
            rate = np.where(label == 1, b.strength, base)
            marker |= in_group & (u_mark < rate)
    table["presentation"] = np.round(presentation, 4)
    table["marker"] = marker.astype(np.int64)

    # -- subject-level split (one image per subject), seeded
    sp = cfg.split
    order = rng.permutation(n)
    n_train = round(sp.train * n)
    n_val = round(sp.val * n)
    split = np.empty(n, dtype=object)
    split[order[:n_train]] = "train"
    split[order[n_train : n_train + n_val]] = "val"
    split[order[n_train + n_val :]] = "test"
    table["split"] = split

    # -- recruitment: scarce_positives leaves training positives of the group out of the cohort.
    # Its own generator: every other draw above is the same with or without the mechanism.
    scarce: dict[int, dict[str, Any]] = {}
    rng_recruit = np.random.default_rng([*key, 2])
    for k, b in enumerate(biases):
        if b.mechanism != "scarce_positives":
            continue
        in_group = (table[b.attribute] == b.group).to_numpy()
        positive = (table["label"] == 1).to_numpy()
        train = (table["split"] == "train").to_numpy()
        candidates = np.flatnonzero(in_group & positive & train)
        n_drop = round(b.strength * len(candidates))
        dropped = np.sort(rng_recruit.choice(candidates, size=n_drop, replace=False))
        scarce[k] = {
            "n_positives_in_group_train": len(candidates),
            "n_dropped": n_drop,
            "rate": n_drop / len(candidates) if len(candidates) else None,
        }
        if n_drop:
            table = table.drop(index=table.index[dropped])
    if scarce:  # the arrays the ground truth reads, of the subjects who remain
        label_true = table["label_true"].to_numpy()
        label = table["label"].to_numpy()
        marker = table["marker"].to_numpy().astype(bool)

    # -- ground truth: what each mechanism did, measured on the drawn table
    for k, b in enumerate(biases):
        in_group = (table[b.attribute] == b.group).to_numpy()
        gt: dict[str, Any] = {
            "mechanism": b.mechanism,
            "description": BIAS_MECHANISMS[b.mechanism],
            "attribute": b.attribute,
            "group": b.group,
            "strength": b.strength,
            "params": dict(b.params),
            "n_in_group": int(in_group.sum()),
        }
        if b.mechanism == "under_representation":
            gt["requested_proportion"] = (
                pop.sex if b.attribute == "sex" else pop.attributes[b.attribute]
            )[b.group]
            gt["effective_proportion"] = dists[b.attribute][b.group]
            gt["realised_proportion"] = float(in_group.mean())
        elif b.mechanism == "under_diagnosis":
            gt["n_true_positive_in_group"] = int((in_group & (label_true == 1)).sum())
            gt["n_relabelled_negative"] = int((in_group & (label_true == 1) & (label == 0)).sum())
        elif b.mechanism == "presentation":
            gt["presentation_factor"] = 1.0 - b.strength
            gt["n_diseased_affected"] = int((in_group & (label_true == 1)).sum())
        elif b.mechanism == "shortcut":
            pos = in_group & (label == 1)
            neg = in_group & (label == 0)
            gt["marker_rate_positives"] = float(marker[pos].mean()) if pos.any() else None
            gt["marker_rate_negatives"] = float(marker[neg].mean()) if neg.any() else None
            gt["n_marked"] = int(marker.sum())
        elif b.mechanism == "acquisition_shift":
            at_site = (table["site"] == b.params["site"]).to_numpy()
            gt["site_share_in_group"] = float(at_site[in_group].mean()) if in_group.any() else None
            gt["site_share_outside_group"] = (
                float(at_site[~in_group].mean()) if (~in_group).any() else None
            )
        elif b.mechanism == "scarce_positives":
            gt.update(scarce[k])
            positive = (table["label"] == 1).to_numpy()
            for name in ("train", "val", "test"):
                in_split = (table["split"] == name).to_numpy()
                gt[f"n_positives_in_group_{name}_after"] = int(
                    (in_group & positive & in_split).sum()
                )
                gt[f"n_positives_outside_group_{name}_after"] = int(
                    (~in_group & positive & in_split).sum()
                )
        ground_truth.append(gt)
    return table, ground_truth
