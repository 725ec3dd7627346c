"""The augmentation study: does (generative) augmentation make a classifier better and fairer, for
whom, and is it better than the cheap alternatives?

``augmentation_study(cohort, ...)`` trains the same classifier several ways ("arms") on the same
real data, with the same settings and seeds, predicts one common real test split with each, audits
every prediction table by subgroup and compares each arm with ``real`` by paired bootstrap over
the test cases (:func:`medgen.audit.compare`, rows paired by ``image_id``). It chains library
calls only: :func:`medgen.classify.train`, :meth:`Classifier.predict`, :func:`medgen.audit.audit`,
:func:`medgen.audit.compare`, :func:`medgen.audit.adjust_pvalues`. :func:`compare_arms` is the
analysis half on its own: prediction tables in, :class:`StudyResult` out.

docs/study.md has the arms, the tables and how to read them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from medgen.apps._study_arms import (
    BASELINE,
    STUDY_ARMS,
    SYNTHETIC_ARMS,
    ArmSpec,
    ArmWarning,
    StudyData,
    check_extra,
    check_train_options,
    load_extra,
    parse_arms,
    plan_arm,
    prepare_data,
)
from medgen.errors import ConfigError, MedgenValueError, MetricWarning

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

__all__ = [
    "STUDY_ARMS",
    "STUDY_METRICS",
    "ArmWarning",
    "StudyResult",
    "SynthesizerLike",
    "augmentation_study",
    "compare_arms",
    "count_deficits",
]

#: Metrics that enter the deltas, the multiplicity family and the verdict by default.
STUDY_METRICS: tuple[str, ...] = ("auc", "tpr", "fpr", "balanced_accuracy", "brier", "ece")
#: +1: higher is better, -1: lower is better (metrics without a direction never enter verdicts).
METRIC_DIRECTION: dict[str, int] = {
    "auc": 1,
    "accuracy": 1,
    "balanced_accuracy": 1,
    "tpr": 1,
    "tnr": 1,
    "ppv": 1,
    "npv": 1,
    "f1": 1,
    "fpr": -1,
    "fnr": -1,
    "brier": -1,
    "ece": -1,
}
#: What the study writes into ``out_dir`` (and replaces with ``overwrite=True``).
STUDY_OUTPUTS = (
    "predictions/",
    "tables/",
    "audits/",
    "synthetic/",
    "models/",
    "report.html",
    "study.json",
)
_WHAT = "augmentation study"


class SynthesizerLike(Protocol):
    """What the study needs from a generator: :class:`medgen.generative.Synthesizer` or
    :class:`medgen.simulate.SimulatedGenerator` (the simulator as a perfect generator).

    Optional attributes the study reads when present: ``conditions`` (the columns it can
    condition on: the target and attributes must be among them), ``training_image_ids`` or
    ``normalisation.index`` (the images it was trained on: checked for leakage), ``model_id``.
    """

    def sample(self, n: int | None, where: Any = None, *, seed: int = 0) -> Any: ...

    def write(self, samples: Any, out_dir: str | os.PathLike[str], *, split: str = "") -> Path: ...


# ---------------------------------------------------------------------------------------------
# the result


@dataclass
class StudyResult:
    """What :func:`augmentation_study` (or :func:`compare_arms`) found.

    Every table is tidy pandas with named indexes; ``attribute`` ``"overall"`` / group ``"all"``
    is everyone.

    Attributes:
        metrics: per ``(arm, seed, attribute, group)`` every audit metric with its bootstrap CI
            (``<metric>_low`` / ``<metric>_high``), ``n``, ``n_pos``, ``small_group``.
        deltas_by_seed: per ``(arm, seed, attribute, group, metric)`` the paired comparison of
            the arm with ``real`` trained with the same seed: ``a`` (real), ``b`` (arm),
            ``delta = b - a`` with its paired-bootstrap CI over test cases, ``p_value`` and
            ``p_adjusted``/``significant`` *within that one comparison* (as
            :func:`medgen.audit.compare` returns them).
        deltas: per ``(arm, attribute, group, metric)`` over seeds: ``real`` and ``value`` (mean
            point estimates), ``delta`` (mean), ``delta_sd`` / ``delta_min`` / ``delta_max``
            (spread over seeds), ``n_seeds``, ``se_test`` (test-case standard error),
            ``se`` (with the seed term), ``delta_low`` / ``delta_high``, ``p_value``,
            ``p_adjusted`` (over the whole table: every arm, group and metric), ``significant``
            and ``effect`` (``"improved"``, ``"worse"`` or ``""``).
        worst_group: per ``(arm, seed, attribute)``: overall AUC/TPR, worst-group AUC and TPR
            (and which groups), AUC and TPR gaps (max - min over groups).
        worst_group_summary: per ``(arm, attribute)``: mean and s.d. over seeds of those, and
            the mean paired-by-seed difference from ``real`` (``<column>_delta``).
        worst_group_deltas: per ``(arm, attribute, metric, statistic)`` for AUC and TPR:
            ``statistic`` ``"worst"`` (the lowest group's value) or ``"gap"`` (max - min over the
            attribute's groups): the paired comparison with ``real`` over seeds, with the same
            columns as ``deltas``; each seed's CI comes from the paired resamples of
            :func:`medgen.audit.compare` (``ComparisonReport.gaps``). Its own multiplicity
            family; ``effect`` "improved" is a higher worst group or a smaller gap.
        verdict: the significant rows of ``deltas`` with a direction: which arm improved whom
            (``effect == "improved"``) and which made whom worse.
        summary: one row per arm: overall AUC (mean, s.d.), its delta, counts and lists of
            improved / worsened groups.
        training_counts: per ``(arm, seed, <target>, *attributes)``: training rows of the cell
            (``n_real``, ``n_extra``, ``n``) and its expected share of each epoch (``share``).
        fill: ``synthetic-balanced``: per ``(seed, <target>, *attributes)`` the real count,
            the deficit, the synthetic rows available and taken.
        predictions: ``(arm, seed) -> prediction table`` (sorted by ``image_id``).
        audits: ``(arm, seed) -> medgen.audit.AuditReport``.
        settings: arms, seeds, classifier options, bootstrap settings, data sizes.
        warnings: messages worth reading (short cells, small groups are in the audits).
        timings: seconds per stage (``train``, ``predict``, ``analysis``, ``report``,
            ``generate``) and per arm (``arm/<name>``: training + prediction over its seeds).
        files: names of the files written into ``out_dir`` (relative), by kind.
    """

    metrics: pd.DataFrame
    deltas_by_seed: pd.DataFrame
    deltas: pd.DataFrame
    worst_group: pd.DataFrame
    worst_group_summary: pd.DataFrame
    verdict: pd.DataFrame
    summary: pd.DataFrame
    training_counts: pd.DataFrame | None = None
    worst_group_deltas: pd.DataFrame | None = None
    fill: pd.DataFrame | None = None
    predictions: dict[tuple[str, int], pd.DataFrame] = field(default_factory=dict, repr=False)
    audits: dict[tuple[str, int], Any] = field(default_factory=dict, repr=False)
    settings: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)

    @property
    def arms(self) -> list[str]:
        """Arm names, baseline first."""
        return list(dict.fromkeys(self.metrics.index.get_level_values("arm")))

    @property
    def seeds(self) -> list[int]:
        """Seeds, in order."""
        return sorted({int(s) for s in self.metrics.index.get_level_values("seed")})

    def tables(self) -> dict[str, pd.DataFrame]:
        """Every table by file stem (what :meth:`to_csv` writes)."""
        out = {
            "metrics": self.metrics,
            "deltas": self.deltas,
            "deltas_by_seed": self.deltas_by_seed,
            "worst_group": self.worst_group,
            "worst_group_summary": self.worst_group_summary,
            "verdict": self.verdict,
            "summary": self.summary,
        }
        if self.worst_group_deltas is not None:
            out["worst_group_deltas"] = self.worst_group_deltas
        if self.training_counts is not None:
            out["training_counts"] = self.training_counts
        if self.fill is not None:
            out["fill"] = self.fill
        return out

    def to_csv(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write every table as ``<name>.csv`` into ``directory`` (created), atomically."""
        from medgen._internal.files import write_table

        d = Path(directory).expanduser()
        d.mkdir(parents=True, exist_ok=True)
        return [
            write_table(t.reset_index(), d / f"{name}.csv") for name, t in self.tables().items()
        ]

    def html_sections(self, *, images: bool = True) -> list[dict[str, Any]]:
        """The report's sections (``medgen.audit`` template dicts), for embedding in other reports."""
        from medgen.apps._study_report import study_sections

        return study_sections(self, images=images)

    def to_html(self, path: str | os.PathLike[str] | None = None, *, images: bool = True) -> str:
        """One self-contained HTML page: "Does augmentation help, and whom?" first (forest plot
        of per-subgroup deltas with CIs, worst-group panel, fairness/accuracy trade-off), then one
        section per arm, then provenance. PNG figures are inline; no scripts, no network."""
        from medgen.apps._study_report import render_study

        text = render_study(self, images=images)
        if path is not None:
            from medgen._internal.files import write_text_atomic

            write_text_atomic(Path(path).expanduser(), text)
        return text

    def _repr_html_(self) -> str:
        from medgen.apps._study_report import headline_html

        return headline_html(self)

    def __repr__(self) -> str:
        return (
            f"StudyResult(arms={self.arms}, seeds={self.seeds}, "
            f"significant={len(self.verdict)} of {len(self.deltas)} deltas)"
        )


# ---------------------------------------------------------------------------------------------
# analysis: prediction tables -> StudyResult


def _pairable(
    predictions: Mapping[tuple[str, int], pd.DataFrame],
    *,
    baseline: str,
    sensitive: Sequence[str],
    y_true: str,
    y_score: str,
) -> dict[tuple[str, int], pd.DataFrame]:
    """Sort every table by ``image_id`` and check they all predict the same test rows."""
    out: dict[tuple[str, int], pd.DataFrame] = {}
    ref: pd.DataFrame | None = None
    order = {arm: i for i, arm in enumerate(dict.fromkeys(k[0] for k in predictions))}
    keys = sorted(predictions, key=lambda k: (k[0] != baseline, order[k[0]], int(k[1])))
    if not keys:
        raise MedgenValueError("compare_arms: no prediction tables")
    ref_key = keys[0]
    for key in keys:
        arm, seed = key
        table = predictions[key]
        need = ["image_id", y_true, y_score, *sensitive]
        missing = [c for c in need if c not in table.columns]
        if missing:
            raise MedgenValueError(
                f"prediction table of arm {arm!r}, seed {seed} lacks columns {missing}; columns: "
                f"{', '.join(map(str, table.columns))}"
            )
        ids = table["image_id"].astype(str)
        if ids.duplicated().any():
            raise MedgenValueError(
                f"prediction table of arm {arm!r}, seed {seed} repeats image ids "
                f"{ids[ids.duplicated()].tolist()[:5]}; rows are paired by image_id"
            )
        t = table.assign(image_id=ids).sort_values("image_id", kind="stable")
        t = t.reset_index(drop=True)
        if ref is None:
            ref = t
        else:
            a, b = set(ref["image_id"]), set(t["image_id"])
            if a != b:
                only_ref, only_t = sorted(a - b), sorted(b - a)
                raise MedgenValueError(
                    f"the arms were not tested on the same rows: arm {arm!r}, seed {seed} has "
                    f"{len(t)} test images, arm {ref_key[0]!r}, seed {ref_key[1]} has {len(ref)}; "
                    f"only in {ref_key[0]!r}: {only_ref[:5]} ({len(only_ref)}), only in "
                    f"{arm!r}: {only_t[:5]} ({len(only_t)}). Predict every arm on the same test "
                    "split."
                )
            for col in (y_true, *sensitive):
                x = ref[col].astype(str).to_numpy()
                y = t[col].astype(str).to_numpy()
                if (x != y).any():
                    bad = ref.loc[x != y, "image_id"].tolist()[:5]
                    raise MedgenValueError(
                        f"the arms disagree on column {col!r} of the same test images (arm "
                        f"{ref_key[0]!r} vs {arm!r}, seed {seed}; e.g. {bad}): they were not "
                        "predicted from the same test split"
                    )
        out[key] = t
    return out


def _tidy_metrics(audits: Mapping[tuple[str, int], Any]) -> pd.DataFrame:
    import pandas as pd

    frames = []
    for (arm, seed), rep in audits.items():
        part = pd.concat([rep.overall, rep.by_group])
        part = part.reset_index()
        part.insert(0, "seed", int(seed))
        part.insert(0, "arm", arm)
        frames.append(part)
    return pd.concat(frames, ignore_index=True).set_index(["arm", "seed", "attribute", "group"])


def _worst_group(metrics: pd.DataFrame) -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    rows = []
    for (arm, seed), part in metrics.groupby(level=["arm", "seed"], sort=False):
        overall = part.xs("overall", level="attribute").iloc[0]
        for attr, sub in part.drop(index="overall", level="attribute").groupby(
            level="attribute", sort=False
        ):
            groups = sub.index.get_level_values("group")
            rec: dict[str, Any] = {
                "arm": arm,
                "seed": int(cast(int, seed)),
                "attribute": attr,
                "overall_auc": float(overall["auc"]),
                "overall_tpr": float(overall["tpr"]),
            }
            for m in ("auc", "tpr"):
                v = sub[m].to_numpy(dtype=float)
                ok = ~np.isnan(v)
                if ok.any():
                    i = int(np.nanargmin(v))
                    rec[f"worst_group_{m}"] = float(v[i])
                    rec[f"worst_group_{m}_group"] = str(groups[i])
                    rec[f"{m}_gap"] = float(np.nanmax(v) - np.nanmin(v))
                else:
                    rec[f"worst_group_{m}"] = math.nan
                    rec[f"worst_group_{m}_group"] = ""
                    rec[f"{m}_gap"] = math.nan
            rows.append(rec)
    return pd.DataFrame(rows).set_index(["arm", "seed", "attribute"])


WORST_COLUMNS = (
    "overall_auc",
    "overall_tpr",
    "worst_group_auc",
    "worst_group_tpr",
    "auc_gap",
    "tpr_gap",
)


def _worst_summary(worst: pd.DataFrame, baseline: str) -> pd.DataFrame:
    import pandas as pd

    cols = list(WORST_COLUMNS)
    g = worst[cols].groupby(level=["arm", "attribute"], sort=False)
    mean = g.mean().add_suffix("_mean")
    sd = g.std(ddof=1).add_suffix("_sd")
    base = worst.xs(baseline, level="arm")[cols]
    diffs = []
    for arm in dict.fromkeys(worst.index.get_level_values("arm")):
        mine = cast("pd.DataFrame", worst.xs(arm, level="arm")[cols])
        diff = (mine - base.reindex(mine.index)).groupby(level="attribute", sort=False).mean()
        diff = diff.add_suffix("_delta").assign(arm=arm)
        diff = diff.set_index("arm", append=True)
        diffs.append(diff.reorder_levels([1, 0]))
    delta = pd.concat(diffs)
    out = mean.join(sd).join(delta)
    order = [c for k in cols for c in (f"{k}_mean", f"{k}_sd", f"{k}_delta")]
    return out[order]


def _pool(
    by_seed: pd.DataFrame,
    *,
    ci: float,
    p_adjust: str,
    levels: Sequence[str] = ("arm", "attribute", "group", "metric"),
    direction: Any = None,
) -> pd.DataFrame:
    """Deltas over seeds: mean, spread, combined standard error, test, adjustment, effect.

    ``direction``: +1/-1 per output row (higher/lower is better); default by metric."""
    import numpy as np
    from scipy.special import ndtr, ndtri

    from medgen.audit import adjust_pvalues

    z = float(ndtri(0.5 + ci / 2))
    d = by_seed.assign(
        _se=(by_seed["delta_high"] - by_seed["delta_low"]) / (2 * z),
    )
    g = d.groupby(level=list(levels), sort=False)
    out = g["a"].mean().to_frame("real")
    out["value"] = g["b"].mean()
    out["delta"] = g["delta"].mean()
    out["delta_sd"] = g["delta"].std(ddof=1)
    out["delta_min"] = g["delta"].min()
    out["delta_max"] = g["delta"].max()
    out["n_seeds"] = g["delta"].count().astype(int)
    out["se_test"] = g["_se"].mean()
    n = out["n_seeds"].to_numpy(dtype=float)
    sd = np.nan_to_num(out["delta_sd"].to_numpy(dtype=float))
    se_test = out["se_test"].to_numpy(dtype=float)
    se = np.sqrt(se_test**2 + np.where(n > 1, sd**2 / np.maximum(n, 1), 0.0))
    delta = out["delta"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(se > 0, 2.0 * ndtr(-np.abs(delta) / se), np.where(delta == 0, 1.0, 0.0))
    p = np.where(np.isnan(delta) | np.isnan(se), np.nan, p)
    out["se"] = se
    out["delta_low"] = delta - z * se
    out["delta_high"] = delta + z * se
    out["p_value"] = p
    out["p_adjusted"] = adjust_pvalues(p, p_adjust)
    sig = np.nan_to_num(out["p_adjusted"].to_numpy(dtype=float), nan=1.0) < 1.0 - ci
    out["significant"] = sig
    if direction is None:
        metric = out.index.get_level_values("metric")
        direction = metric.map(lambda m: METRIC_DIRECTION.get(m, 0)).to_numpy()
    else:
        direction = np.asarray(direction(out.index), dtype=float)
    good = np.sign(np.nan_to_num(delta)) * direction
    out["effect"] = np.where(sig & (good > 0), "improved", np.where(sig & (good < 0), "worse", ""))
    return out


def _describe(idx: tuple[str, str, str], delta: float) -> str:
    attr, group, metric = idx
    who = "everyone" if attr == "overall" else f"{attr}={group}"
    return f"{who} {metric} {delta:+.3f}"


def _arm_summary(deltas: pd.DataFrame, metrics: pd.DataFrame, arms: Sequence[str]) -> pd.DataFrame:
    import pandas as pd

    overall = metrics.xs(("overall", "all"), level=("attribute", "group"))["auc"]
    rows = []
    for arm in arms:
        auc = overall.xs(arm, level="arm")
        rec: dict[str, Any] = {
            "arm": arm,
            "overall_auc_mean": float(auc.mean()),
            "overall_auc_sd": float(auc.std(ddof=1)) if len(auc) > 1 else math.nan,
        }
        if arm in deltas.index.get_level_values("arm"):
            sub = deltas.xs(arm, level="arm")
            key = ("overall", "all", "auc")
            rec["overall_auc_delta"] = (
                float(cast(float, sub.loc[key, "delta"])) if key in sub.index else math.nan
            )
            for effect in ("improved", "worse"):
                hit = sub[sub["effect"] == effect]
                rec[f"n_{effect}"] = len(hit)
                rec[effect] = "; ".join(
                    _describe(cast(tuple[str, str, str], idx), float(dv))
                    for idx, dv in hit["delta"].items()
                )
        else:
            rec.update(overall_auc_delta=0.0, n_improved=0, improved="", n_worse=0, worse="")
        rows.append(rec)
    return pd.DataFrame(rows).set_index("arm")


def compare_arms(
    predictions: Mapping[tuple[str, int], pd.DataFrame],
    *,
    sensitive: str | Sequence[str],
    baseline: str = BASELINE,
    metrics: Sequence[str] = STUDY_METRICS,
    y_true: str = "y_true",
    y_score: str = "y_score",
    threshold: Any = 0.5,
    n_boot: int = 1000,
    ci: float = 0.95,
    p_adjust: str = "holm",
    intersections: bool = False,
    cluster: str | None = None,
    seed: int = 0,
) -> StudyResult:
    """Audit every arm's test predictions and compare each arm with ``baseline``, by subgroup.

    Rows are paired by ``image_id`` (tables are sorted by it; their row order does not matter).
    Arm ``A`` seed ``s`` is compared with ``baseline`` seed ``s`` by :func:`medgen.audit.compare`
    (paired bootstrap over test cases). Over seeds, ``deltas`` averages the paired differences and
    tests ``mean delta == 0`` with the standard error
    ``se = sqrt(se_test**2 + sd_seeds**2 / K)``: ``se_test`` is the mean over seeds of the
    paired-bootstrap standard error (from the CI width; the seeds share the test cases, so their
    test-case noise is treated as fully correlated, the conservative choice) and ``sd_seeds**2 / K``
    the training-seed variance of the mean (0 with one seed). The p-values of every arm, group
    and metric in ``metrics`` form one family for ``p_adjust``.

    Args:
        predictions: ``(arm, seed) -> prediction table`` (``image_id``, ``y_true``, ``y_score`` and
            the sensitive columns), every arm predicting the same test images.
        sensitive: the attributes to audit by.
        baseline: the arm the others are compared with (it needs a table for every seed).
        metrics: metrics in ``deltas`` (and the multiplicity family); ``deltas_by_seed`` keeps all.
        y_true, y_score, threshold, n_boot, ci, p_adjust, intersections, cluster: as in
            :func:`medgen.audit.audit` (``n_boot`` resamples for audits and comparisons).
        seed: the bootstrap seed of every audit and comparison.

    Returns:
        A :class:`StudyResult` (without training counts).

    Raises:
        MedgenValueError: tables of different test images (the ids named), a missing column,
            repeated ids, no baseline table for a seed, an unknown metric.
    """
    import pandas as pd

    from medgen.audit import METRICS, audit, compare

    sens = [sensitive] if isinstance(sensitive, str) else list(sensitive)
    unknown = [m for m in metrics if m not in METRICS or m == "prevalence"]
    if unknown:
        raise MedgenValueError(
            f"metrics {unknown} cannot be compared; choose from "
            f"{', '.join(m for m in METRICS if m != 'prevalence')}"
        )
    if n_boot < 1:
        raise MedgenValueError(f"n_boot must be >= 1 for paired comparisons, not {n_boot}")
    tables = _pairable(
        predictions, baseline=baseline, sensitive=sens, y_true=y_true, y_score=y_score
    )
    arms = list(dict.fromkeys(k[0] for k in tables))
    if baseline not in arms:
        raise MedgenValueError(
            f"compare_arms: no prediction table of the baseline arm {baseline!r} (arms: {arms})"
        )
    base_seeds = {s for a, s in tables if a == baseline}
    for arm, s in tables:
        if s not in base_seeds:
            raise MedgenValueError(
                f"arm {arm!r} has a table for seed {s} but the baseline {baseline!r} has none; "
                f"baseline seeds: {sorted(base_seeds)}"
            )
    audits = {}
    notes: list[str] = []
    for key, t in tables.items():
        # undefined metrics and small groups repeat for every arm: collected once, not warned
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetricWarning)
            audits[key] = audit(
                t,
                y_true=y_true,
                y_score=y_score,
                sensitive=sens,
                threshold=threshold,
                n_boot=n_boot,
                ci=ci,
                intersections=intersections,
                p_adjust=p_adjust,
                cluster=cluster,
                seed=seed,
            )
        notes += [f"{key[0]}, seed {key[1]}: {w}" for w in audits[key].warnings]
    tidy = _tidy_metrics(audits)
    frames = []
    gap_frames = []
    for (arm, s), rep in audits.items():
        if arm == baseline:
            continue
        cmp = compare(
            audits[(baseline, s)],
            rep,
            n_boot=n_boot,
            ci=ci,
            p_adjust=p_adjust,
            seed=seed,
            labels=(baseline, arm),
        )
        part = cmp.table.reset_index()
        part.insert(0, "seed", int(s))
        part.insert(0, "arm", arm)
        frames.append(part)
        if cmp.gaps is not None:
            g = cmp.gaps.reset_index()
            g.insert(0, "seed", int(s))
            g.insert(0, "arm", arm)
            gap_frames.append(g)
    by_seed = pd.concat(frames, ignore_index=True).set_index(
        ["arm", "seed", "attribute", "group", "metric"]
    )
    chosen = by_seed[by_seed.index.get_level_values("metric").isin(list(metrics))]
    deltas = _pool(chosen, ci=ci, p_adjust=p_adjust)
    verdict = deltas[deltas["effect"] != ""][
        ["real", "value", "delta", "delta_low", "delta_high", "p_adjusted", "effect"]
    ]
    worst = _worst_group(tidy)
    gap_levels = ["arm", "attribute", "metric", "statistic"]
    gap_deltas = None
    if gap_frames:
        gap_by_seed = pd.concat(gap_frames, ignore_index=True).set_index(
            ["arm", "seed", "attribute", "metric", "statistic"]
        )
        # a higher worst group is better, a smaller gap is better
        gap_deltas = _pool(
            gap_by_seed,
            ci=ci,
            p_adjust=p_adjust,
            levels=gap_levels,
            direction=lambda idx: [
                1.0 if st == "worst" else -1.0 for st in idx.get_level_values("statistic")
            ],
        )
    return StudyResult(
        metrics=tidy,
        deltas_by_seed=by_seed,
        deltas=deltas,
        worst_group=worst,
        worst_group_summary=_worst_summary(worst, baseline),
        worst_group_deltas=gap_deltas,
        verdict=verdict,
        summary=_arm_summary(deltas, tidy, arms),
        predictions=tables,
        audits=audits,
        warnings=_dedupe(notes),
        settings={
            "baseline": baseline,
            "arms": arms,
            "seeds": sorted(base_seeds),
            "sensitive": sens,
            "metrics": list(metrics),
            "threshold": threshold,
            "n_boot": n_boot,
            "ci": ci,
            "p_adjust": p_adjust,
            "intersections": intersections,
            "cluster": cluster,
            "bootstrap_seed": seed,
            "test_rows": len(next(iter(tables.values()))),
        },
    )


def count_deficits(
    cohort: Any,
    *,
    target: str = "label",
    attributes: str | Sequence[str] = ("sex",),
    val_fraction: float = 0.2,
) -> pd.DataFrame:
    """How many synthetic images each ``target x attributes`` cell of the training split needs.

    The cells are those ``synthetic-balanced`` fills: every combination of the target's and the
    attributes' values seen in the real training rows (after the study's validation carve-out
    when the cohort has no ``val`` split), each filled up to the largest cell.

    Args:
        cohort: a :class:`medgen.Cohort` or manifest path (real rows, with splits).
        target, attributes, val_fraction: as in :func:`augmentation_study`.

    Returns:
        DataFrame indexed by ``(<target>, *attributes)`` (values as text) with ``n`` (real
        training rows), ``target_n`` (the largest cell) and ``deficit = target_n - n``.
    """
    from medgen.apps import _study_arms
    from medgen.classify._data import as_cohort

    attrs = [attributes] if isinstance(attributes, str) else list(attributes)
    data = prepare_data(
        as_cohort(cohort), target=target, attributes=attrs, val_fraction=val_fraction
    )
    return _study_arms.count_deficits(data)


def _dedupe(notes: Sequence[str]) -> list[str]:
    """One line per distinct audit warning, listing the (arm, seed) tables that raised it."""
    where: dict[str, list[str]] = {}
    for n in notes:
        head, _, msg = n.partition(": ")
        where.setdefault(msg, []).append(head)
    return [f"{msg} ({len(w)} of the tables)" for msg, w in where.items()]


# ---------------------------------------------------------------------------------------------
# the study


def _check_seeds(seeds: int | Sequence[int]) -> list[int]:
    items: list[Any] = [seeds] if isinstance(seeds, int) else list(seeds)
    out = []
    for s in items:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ConfigError(f"seeds must be non-negative integers, not {s!r}")
        out.append(int(s))
    if not out:
        raise ConfigError("seeds: give at least one seed (the default is (0, 1, 2))")
    if len(set(out)) != len(out):
        raise ConfigError(f"seeds must be distinct, not {items}")
    return out


def _check_synthesizer(synthesizer: Any, data: StudyData) -> None:
    """``synthesizer=`` can make the synthetic arms: the protocol, its conditions, no leakage."""
    from medgen.apps._study_arms import check_leakage

    for name in ("sample", "write"):
        if not callable(getattr(synthesizer, name, None)):
            raise ConfigError(
                f"synthesizer= must have sample(n, where=..., seed=...) and write(samples, "
                f"out_dir, split=...) (medgen.generative.Synthesizer or "
                f"medgen.simulate.SimulatedGenerator); {type(synthesizer).__name__} has no {name}()"
            )
    conditions = getattr(synthesizer, "conditions", None)
    if conditions is not None:
        missing = [c for c in (data.target, *data.attributes) if c not in tuple(conditions)]
        if missing:
            raise ConfigError(
                f"synthesizer= is conditioned on {list(conditions)}, but the study fills "
                f"{data.target} x {' x '.join(data.attributes)} cells and needs {missing} too: "
                f"train it with conditions={[data.target, *data.attributes]} (medgen synth "
                f"train ... --condition {data.target}"
                + "".join(f" --condition {a}" for a in data.attributes)
                + ")"
            )
    trained_on = getattr(synthesizer, "training_image_ids", None)
    if trained_on is None and hasattr(synthesizer, "normalisation"):
        trained_on = list(getattr(synthesizer.normalisation, "index", []))
    if trained_on:
        import pandas as pd

        ids = [str(i) for i in trained_on]
        check_leakage(
            pd.DataFrame({"image_id": ids, "subject_id": ids, "derived_from": ids}),
            data,
            what="synthesizer= (the images it was trained on)",
        )


#: Extra images generated per cell, on top of what the seeds need, so that the memorisation
#: gate's drops (near-copies are not written) rarely leave a cell short: 5% + 2.
_MARGIN = (0.05, 2)


def _cell_values(data: StudyData) -> dict[str, dict[str, Any]]:
    """Per column of the cells, text key -> the value as the training rows hold it."""
    from medgen.apps._study_arms import class_key

    out: dict[str, dict[str, Any]] = {}
    for col in (data.target, *data.attributes):
        vals: dict[str, Any] = {}
        for v in data.train[col].tolist():
            vals.setdefault(class_key(v), v.item() if hasattr(v, "item") else v)
        out[col] = vals
    return out


def generation_plan(
    data: StudyData,
    specs: Sequence[ArmSpec],
    n_seeds: int,
    *,
    margin: tuple[float, int] = _MARGIN,
) -> pd.DataFrame:
    """The condition rows the study asks a synthesizer for: one row per image.

    ``pool = "fill"``: per ``target x attributes`` cell, its deficit times the number of seeds
    (each seed draws its own subset), plus ``margin`` (a fraction and a count; default 5% + 2)
    for the images a memorisation gate drops, when a ``synthetic-balanced`` arm runs. ``pool = "tstr"``: as many images per cell as the real
    training rows have (train on synthetic with the real mix), when ``synthetic-only`` runs.
    """
    import math

    import pandas as pd

    from medgen.apps import _study_arms

    kinds = {s.kind for s in specs}
    table = _study_arms.count_deficits(data)
    values = _cell_values(data)
    cols = [data.target, *data.attributes]
    rows: list[dict[str, Any]] = []
    for cell, row in table.iterrows():
        cell_t = cell if isinstance(cell, tuple) else (cell,)
        cond = {c: values[c][k] for c, k in zip(cols, cell_t, strict=True)}
        wanted = []
        if "synthetic-balanced" in kinds and int(row["deficit"]) > 0:
            need = int(row["deficit"]) * n_seeds
            wanted.append(("fill", need + math.ceil(margin[0] * need) + margin[1]))
        if "synthetic-only" in kinds and int(row["n"]) > 0:
            wanted.append(("tstr", int(row["n"])))
        for pool, k in wanted:
            rows.extend({**cond, "pool": pool} for _ in range(k))
    return pd.DataFrame(rows, columns=[*cols, "pool"])


def _generate(
    synthesizer: Any,
    data: StudyData,
    specs: Sequence[ArmSpec],
    n_seeds: int,
    *,
    folder: Path,
    seed: int,
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Sample and write the synthetic pools; returns ``({pool: rows}, what was generated)``."""
    from medgen.apps._study_arms import check_extra, load_extra

    plan = generation_plan(data, specs, n_seeds)
    pools: dict[str, pd.DataFrame] = {}
    info: dict[str, Any] = {
        "generator": type(synthesizer).__name__,
        "model_id": getattr(synthesizer, "model_id", None),
        "seed": seed,
        "pools": {},
    }
    t = time.perf_counter()
    for k, (pool, where) in enumerate(plan.groupby("pool", sort=True)):
        where = where.drop(columns="pool").reset_index(drop=True)
        log.info("study: generating %d synthetic images (%s pool)", len(where), pool)
        # each pool its own draw: fill and tstr images never share noise
        samples = synthesizer.sample(None, where=where, seed=int(seed) + 7919 * k)
        manifest = synthesizer.write(samples, folder / str(pool), split="train")
        rows = check_extra(
            load_extra(manifest, what=f"generated {pool} images"),
            data,
            what=f"generated {pool} images",
            need_attributes=True,
        )
        pools[str(pool)] = rows
        info["pools"][str(pool)] = {
            "requested": len(where),
            "written": len(rows),
            "dropped": len(where) - len(rows),
            "manifest": str(Path(manifest)),
        }
    info["seconds"] = time.perf_counter() - t
    return pools, info


def augmentation_study(
    cohort: Any,
    *,
    target: str = "label",
    attributes: str | Sequence[str] = ("sex",),
    arms: Sequence[str | Mapping[str, Any]] = ("real", "reweight", "augment"),
    synthetic: Any = None,
    synthesizer: SynthesizerLike | None = None,
    synthesizer_seed: int = 0,
    seeds: int | Sequence[int] = (0, 1, 2),
    classifier: Mapping[str, Any] | None = None,
    augment_preset: str = "medium",
    sensitive: Sequence[str] | None = None,
    shortage: str = "error",
    metrics: Sequence[str] = STUDY_METRICS,
    threshold: Any = 0.5,
    n_boot: int = 1000,
    ci: float = 0.95,
    p_adjust: str = "holm",
    intersections: bool = False,
    val_fraction: float = 0.2,
    out_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    arm_reports: bool = True,
    save_models: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> StudyResult:
    """Train one classifier several ways on the same real data and say whom each way helped.

    Every arm trains with the same classifier settings and the same seeds, validates on the same
    real validation rows and predicts the same real test split; each arm seed ``s`` is compared
    with ``real`` seed ``s`` (:func:`compare_arms`).

    Arms (``arms=``; ``"real"`` is required, it is the baseline):

    - ``"real"``: the real training rows, uniform sampling.
    - ``"reweight"``: the same rows, resampled so every ``target x attributes`` cell is drawn
      equally often (``train(balance=[target, *attributes])``).
    - ``"augment"``: the same rows with the stronger augmentation ``augment_preset``.
    - ``"focal"``: the same rows trained with the focal loss (``train(focal_gamma=2)``): the
      loss-side answer to imbalance.
    - ``"synthetic-balanced"``: the real rows plus, for every ``target x attributes`` cell,
      ``deficit = largest cell - cell`` synthetic rows of that cell from ``synthetic``, drawn
      deterministically from the seed (:func:`count_deficits`; too few rows of a cell: error, or
      with ``shortage="warn"`` all there are, recorded in ``result.fill``).
    - ``"synthetic-only"``: every synthetic row, no real training row (train on synthetic, test
      on real).
    - ``{"name": ..., "extra": <manifest>, "weight": w, "train": {...}}``: the real rows plus the
      extra rows (any source); ``weight`` (optional) is the share of each epoch drawn from them
      (extra rows must then be synthetic), ``train`` overrides classifier options.

    Args:
        cohort: a :class:`medgen.Cohort` or manifest path of real (or simulated) images with
            ``train`` and ``test`` splits (``val`` optional: otherwise ``val_fraction`` of the
            training subjects are held out once, for every arm).
        target: the label column (binary).
        attributes: the columns whose cells are balanced/filled (and audited by).
        arms: see above.
        synthetic: a Cohort or manifest path of already generated images (``source =
            synthetic``, split ``""`` or ``"train"``, with the target and attribute columns;
            ``derived_from``, when present, names the real images or subjects they come from).
        synthesizer: a trained generator (:class:`medgen.generative.Synthesizer`, or
            :class:`medgen.simulate.SimulatedGenerator` as a perfect one) conditioned on the
            target and the attributes, trained on the train split only (its training images are
            checked for leakage). The study asks it for every cell's deficit times the number of
            seeds (plus 5% + 2 for images the memorisation gate drops) and, for
            ``synthetic-only``, as many images per cell as the real training rows
            (:func:`generation_plan`), and writes them into ``out_dir/synthetic/fill`` and
            ``.../tstr`` (a temporary folder without ``out_dir``). Exclusive with ``synthetic``.
        synthesizer_seed: the seed of the generated images.
        seeds: training seeds (one replicate of every arm each).
        classifier: :func:`medgen.classify.train` options shared by every arm (``model``,
            ``epochs``, ``augment``, ...); the study sets ``target``, ``seed``, ``balance``,
            ``synthetic_fraction``, ``out_dir``, ``progress``.
        augment_preset: the ``augment`` arm's preset (:data:`medgen.transforms.AUGMENT_PRESETS`);
            must differ from the classifier's ``augment`` (default ``"light"``).
        sensitive: attributes to audit by (default: ``attributes``).
        shortage: ``"error"`` or ``"warn"`` (see ``"synthetic-balanced"``).
        metrics, threshold, n_boot, ci, p_adjust, intersections: see :func:`compare_arms`.
        val_fraction: see ``cohort``.
        out_dir: a run folder for ``predictions/<arm>-seed<k>.csv``, ``tables/*.csv``,
            ``audits/<arm>-seed<k>.html`` (``arm_reports``), ``report.html`` and ``study.json``,
            written atomically under the folder's lock, ``run_complete.json`` last. A finished or
            interrupted study there is replaced only with ``overwrite=True``; a folder holding
            other files is refused.
        overwrite: replace the study in ``out_dir``.
        arm_reports: write each arm's audit report into ``out_dir/audits`` (linked).
        save_models: save every trained classifier as ``out_dir/models/<arm>-seed<k>``
            (a :func:`medgen.classify.train` run folder; :meth:`Classifier.load` reads it).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        progress: progress bars of training and prediction.

    Returns:
        A :class:`StudyResult`.

    Raises:
        ConfigError: bad arms, seeds or options; a synthetic arm without ``synthetic``.
        ManifestError: leakage (extra rows of validation/test subjects: named), an arm without
            rows, a target or attribute missing, a short cell with ``shortage="error"``.
        RunFolderError, RunLockedError: ``out_dir`` rules (see above).
    """
    import contextlib

    from medgen._internal.runs import mark_complete, prepare_run_folder, run_lock
    from medgen.classify._data import as_cohort
    from medgen.transforms import AUGMENT_PRESETS

    attrs = [attributes] if isinstance(attributes, str) else list(attributes)
    specs = parse_arms(arms)
    seed_list = _check_seeds(seeds)
    opts = dict(classifier or {})
    check_train_options(opts, what="classifier")
    if augment_preset not in AUGMENT_PRESETS:
        from medgen._internal.suggest import did_you_mean

        raise ConfigError(
            f"Unknown augment_preset {augment_preset!r}.{did_you_mean(augment_preset, AUGMENT_PRESETS)}"
            f" Choose one of {', '.join(AUGMENT_PRESETS)}."
        )
    if shortage not in ("error", "warn"):
        raise ConfigError(f"shortage must be 'error' or 'warn', not {shortage!r}")
    co = as_cohort(cohort)
    data = prepare_data(co, target=target, attributes=attrs, val_fraction=val_fraction)
    needs_synthetic = [s.name for s in specs if s.kind in SYNTHETIC_ARMS]
    if synthesizer is not None:
        if synthetic is not None:
            raise ConfigError(
                "give synthetic= (a manifest of generated images) or synthesizer= (a model that "
                "generates them for this study), not both"
            )
        if not needs_synthetic:
            raise ConfigError(
                f"synthesizer= is given but no arm uses synthetic images (arms: "
                f"{[s.name for s in specs]}); add 'synthetic-balanced' and/or 'synthetic-only'"
            )
        _check_synthesizer(synthesizer, data)
    pool = None
    if synthetic is not None:
        pool = check_extra(
            load_extra(synthetic, what="synthetic manifest"),
            data,
            what="synthetic manifest",
            need_attributes="synthetic-balanced" in needs_synthetic,
        )
        not_syn = pool["source"].astype(str) != "synthetic"
        if not_syn.any():
            raise ConfigError(
                f"synthetic manifest: {int(not_syn.sum())} rows have source "
                f"{sorted(set(pool.loc[not_syn, 'source'].astype(str)))}, not 'synthetic'; pass "
                "real extra rows as a user-defined arm {'name': ..., 'extra': ...}"
            )
    elif needs_synthetic and synthesizer is None:
        raise ConfigError(
            f"arms {needs_synthetic} need synthetic images: pass synthetic=<manifest of generated "
            "images (source=synthetic) with the target and attribute columns>, or synthesizer="
            "<a trained medgen.generative.Synthesizer> to generate them"
        )
    base_augment = str(opts.get("augment", "light"))

    def plan(spec: ArmSpec, s: int, fill: Any, tstr: Any) -> Any:
        return plan_arm(
            spec,
            data,
            seed=s,
            synthetic=fill,
            synthetic_only=tstr,
            base_options=opts,
            base_augment=base_augment,
            augment_preset=augment_preset,
            shortage=shortage,
        )

    # plan every arm and seed before anything trains (the generated arms before anything is
    # generated, on an empty pool): bad input fails in seconds
    generated = synthesizer is not None
    plans = {
        (spec.name, s): plan(spec, s, pool, pool)
        for spec in specs
        if not (generated and spec.kind in SYNTHETIC_ARMS)
        for s in seed_list
    }
    out = Path(out_dir).expanduser() if out_dir is not None else None
    if out is not None and out.exists() and not out.is_dir():
        raise MedgenValueError(f"study: out_dir {str(out)!r} is a file; give a folder")
    gen_info: dict[str, Any] | None = None
    with contextlib.ExitStack() as held:
        if out is not None:
            held.enter_context(run_lock(out, what=_WHAT, owned=STUDY_OUTPUTS))
            prepare_run_folder(
                out,
                owned=STUDY_OUTPUTS,
                overwrite=overwrite,
                what=_WHAT,
                overwrite_hint="overwrite=True",
                resume_hint="a new out_dir (a study cannot be resumed)",
            )
        if synthesizer is not None:
            import tempfile

            if out is not None:
                folder = out / "synthetic"
            else:  # the images live as long as the study runs; pass out_dir= to keep them
                folder = Path(held.enter_context(tempfile.TemporaryDirectory(prefix="medgen-")))
            pools, gen_info = _generate(
                synthesizer, data, specs, len(seed_list), folder=folder, seed=synthesizer_seed
            )
            empty = data.train.iloc[:0]
            plans.update(
                {
                    (spec.name, s): plan(
                        spec, s, pools.get("fill", empty), pools.get("tstr", empty)
                    )
                    for spec in specs
                    if spec.kind in SYNTHETIC_ARMS
                    for s in seed_list
                }
            )
            plans = {(spec.name, s): plans[(spec.name, s)] for spec in specs for s in seed_list}
        result = _run(
            data,
            specs,
            plans,
            seed_list,
            opts=opts,
            sens=list(sensitive) if sensitive is not None else attrs,
            metrics=metrics,
            threshold=threshold,
            n_boot=n_boot,
            ci=ci,
            p_adjust=p_adjust,
            intersections=intersections,
            device=device,
            progress=progress,
            out=out,
            save_models=save_models,
        )
        if gen_info is not None:
            result.timings["generate"] = float(gen_info["seconds"])
        result.settings.update(
            target=target,
            attributes=attrs,
            classifier=opts,
            augment_preset=augment_preset,
            shortage=shortage,
            synthetic_rows=0 if pool is None else len(pool),
            synthesizer=gen_info,
            train_rows=len(data.train),
            val_rows=len(data.val),
            val_carved=data.val_carved,
            arm_kinds={s.name: s.kind for s in specs},
        )
        if out is not None:
            _write_outputs(result, out, arm_reports=arm_reports)
            mark_complete(out, ["report.html", "study.json"], kind="augmentation-study")
    return result


def _run(
    data: StudyData,
    specs: list[ArmSpec],
    plans: dict[tuple[str, int], Any],
    seeds: list[int],
    *,
    opts: dict[str, Any],
    sens: list[str],
    metrics: Sequence[str],
    threshold: Any,
    n_boot: int,
    ci: float,
    p_adjust: str,
    intersections: bool,
    device: str,
    progress: bool,
    out: Path | None,
    save_models: bool = False,
) -> StudyResult:
    import pandas as pd

    from medgen._internal.files import write_table
    from medgen.classify import train

    timings: dict[str, float] = {"train": 0.0, "predict": 0.0}
    preds: dict[tuple[str, int], pd.DataFrame] = {}
    files: dict[str, Any] = {"predictions": {}, "audits": {}}
    test_cohort = data.cohort.select(split="test")
    for spec in specs:
        for s in seeds:
            plan = plans[(spec.name, s)]
            log.info(
                "study: training arm %r seed %d on %d rows",
                spec.name,
                s,
                int(plan.counts["n"].sum()),
            )
            t = time.perf_counter()
            saved: dict[str, Any] = {}
            if save_models and out is not None:
                name = f"models/{spec.name}-seed{s}"
                saved = {"out_dir": out / name}
                files.setdefault("models", {})[f"{spec.name}|{s}"] = name
            clf = train(
                plan.cohort(data),
                target=data.target,
                seed=s,
                device=device,
                progress=progress,
                **saved,
                **{**opts, **plan.options},
            )
            took = time.perf_counter() - t
            timings["train"] += took
            t = time.perf_counter()
            p = clf.predict(test_cohort, split="test", progress=progress)
            timings["predict"] += time.perf_counter() - t
            # per arm: training and prediction seconds over its seeds
            key = f"arm/{spec.name}"
            timings[key] = timings.get(key, 0.0) + took + time.perf_counter() - t
            preds[(spec.name, s)] = p
            if out is not None:
                name = f"predictions/{spec.name}-seed{s}.csv"
                (out / "predictions").mkdir(exist_ok=True)
                write_table(p, out / name)
                files["predictions"][f"{spec.name}|{s}"] = name
    t = time.perf_counter()
    result = compare_arms(
        preds,
        sensitive=sens,
        baseline=BASELINE,
        metrics=metrics,
        threshold=threshold,
        n_boot=n_boot,
        ci=ci,
        p_adjust=p_adjust,
        intersections=intersections,
    )
    timings["analysis"] = time.perf_counter() - t
    counts = []
    fills = []
    for (arm, s), plan in plans.items():
        c = plan.counts.copy()
        c = c.assign(arm=arm, seed=s).set_index(["arm", "seed"], append=True)
        counts.append(c.reorder_levels(["arm", "seed", *plan.counts.index.names]))
        if plan.fill is not None:
            f = plan.fill.assign(seed=s).set_index("seed", append=True)
            fills.append(f.reorder_levels(["seed", *plan.fill.index.names]))
    result.training_counts = pd.concat(counts)
    result.fill = pd.concat(fills) if fills else None
    if result.fill is not None and (result.fill["filled"] < result.fill["deficit"]).any():
        result.warnings.append(
            "synthetic-balanced is not fully balanced: some cells had too few synthetic images "
            "(see the fill table)"
        )
    result.timings = timings
    result.files = files
    return result


def _write_outputs(result: StudyResult, out: Path, *, arm_reports: bool) -> None:
    """Tables, per-arm audit reports, the report and ``study.json`` (atomic writers)."""
    from medgen._internal.files import write_text_atomic
    from medgen._internal.provenance import package_versions

    t = time.perf_counter()
    tables = out / "tables"
    written = result.to_csv(tables)
    result.files["tables"] = [f"tables/{p.name}" for p in written]
    if arm_reports:
        (out / "audits").mkdir(exist_ok=True)
        for (arm, s), rep in result.audits.items():
            name = f"audits/{arm}-seed{s}.html"
            rep.to_html(out / name)
            result.files["audits"][f"{arm}|{s}"] = name
    result.to_html(out / "report.html")
    result.timings["report"] = time.perf_counter() - t
    summary = {
        "settings": result.settings,
        "summary": json.loads(result.summary.reset_index().to_json(orient="records")),
        "verdict": json.loads(result.verdict.reset_index().to_json(orient="records")),
        "warnings": result.warnings,
        "timings_s": result.timings,
        "files": result.files,
        "versions": package_versions(),
    }
    write_text_atomic(out / "study.json", json.dumps(summary, indent=2, default=str))
