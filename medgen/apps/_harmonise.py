"""The harmonisation study: is a classifier's site gap caused by appearance, and does harmonising
remove it?

``harmonisation_study(cohort, translator, ...)`` trains the same classifier (same settings, same
seeds) on up to three versions of one cohort and tests each on its own version of the same test
rows:

- ``raw``: the images as they are (the baseline);
- ``harmonised``: every image of the translator's source group (train, val and test) replaced by
  its translation to the target group (written as NIfTI under ``out_dir/harmonised``, marked
  derived, with a manifest); the other images unchanged;
- ``oracle`` (when the cohort holds the simulator's counterfactual renders, ``counterfactual_of``):
  every source image replaced by the *same subject rendered at the target* (same anatomy,
  lesions and seed; the ground truth of harmonisation).

Every row keeps its own metadata (its ``attribute`` stays the source value), so each arm is
audited by ``attribute`` on the same test rows (:func:`medgen.audit.audit`) and compared with
``raw`` by paired bootstrap over test cases (:func:`medgen.audit.compare`, through
:func:`medgen.apps.compare_arms`). The oracle says how much of the gap appearance causes; the
harmonised arm says how much of that a real translator removes.

docs/study.md ("The harmonisation study") has the arms and how to read them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from medgen.errors import ConfigError, ManifestError, MedgenValueError

if TYPE_CHECKING:
    import pandas as pd

    from medgen.apps._study import StudyResult

log = logging.getLogger(__name__)

__all__ = ["HARMONISATION_ARMS", "HarmonisationResult", "TranslatorLike", "harmonisation_study"]

#: The arms, in the order the report shows them (``oracle`` only with counterfactual renders).
HARMONISATION_ARMS: tuple[str, ...] = ("raw", "harmonised", "oracle")
BASELINE = "raw"
#: What the study writes into ``out_dir`` (and replaces with ``overwrite=True``).
HARMONISE_OUTPUTS = (
    "harmonised/",
    "oracle/",
    "predictions/",
    "tables/",
    "report.html",
    "study.json",
)
#: Classifier options when the caller gives none (the augmentation study's CLI defaults).
CLASSIFIER_DEFAULTS: dict[str, Any] = {"model": "densenet", "epochs": 20, "batch_size": 32}
#: Metrics of the per-site table.
SITE_METRICS = ("auc", "tpr", "fpr", "balanced_accuracy")
#: Gap metrics the answer may be about (those :func:`medgen.audit.compare` gives gaps for).
GAP_METRICS = ("auc", "tpr")
_WHAT = "harmonisation study"

ARM_DESCRIPTIONS = {
    "raw": "the images as they are: the baseline every arm is compared with.",
    "harmonised": (
        "every image of the translator's source group (train, val and test) replaced by its "
        "translation to the target group; the other images unchanged."
    ),
    "oracle": (
        "every image of the source group replaced by the same subject rendered at the target "
        "(the simulator's counterfactual: same anatomy and lesions, the target's appearance): "
        "what a perfect harmonisation would give."
    ),
}


class TranslatorLike(Protocol):
    """What the study needs from a translator (:class:`medgen.generative.Translator`):
    ``source`` / ``target`` selectors (manifest column -> value, a list meaning any of the
    values) and ``apply(image)`` returning the translated image (a MetaTensor in, a MetaTensor
    with the same affine out). ``description`` (optional) names it in the written headers."""

    source: Mapping[str, Any]
    target: Mapping[str, Any]

    def apply(self, image: Any) -> Any: ...


# ---------------------------------------------------------------------------------------------
# the result


@dataclass
class HarmonisationResult:
    """What :func:`harmonisation_study` found.

    Tidy pandas tables with named indexes (``attribute`` ``"overall"`` / group ``"all"`` is
    everyone).

    Attributes:
        by_site: per ``(arm, group)`` (the groups of ``attribute``, then ``"all"``): ``n`` and
            :data:`SITE_METRICS` (means over seeds) with ``<metric>_low`` / ``<metric>_high``
            (the mean over seeds of each seed's bootstrap CI).
        deltas: per ``(arm, attribute, group, metric)``: each arm against ``raw`` over seeds
            (paired by test image): ``raw``, ``value``, ``delta`` with ``delta_low`` /
            ``delta_high``, ``p_value``, ``p_adjusted`` (one family: every arm, group and
            metric), ``significant``, ``effect`` (see :attr:`StudyResult.deltas`).
        gaps: per ``(arm, metric, statistic)`` for AUC and TPR: ``statistic`` ``"gap"`` (max -
            min over the groups of ``attribute``) or ``"worst"`` (the lowest group): ``raw``,
            ``value``, ``delta`` with its paired CI, ``p_adjusted``, ``significant``,
            ``effect`` ("improved": a smaller gap or a higher worst group).
        answer: one sentence: is the gap caused by appearance (oracle), does harmonising remove it?
        translation: masked PSNR / SSIM of the translator's test outputs and of the unchanged
            source images against the counterfactual truth, per method (mean, s.d., n), when
            the cohort has counterfactuals and the translator is a
            :class:`~medgen.generative.Translator`; else ``None``.
        study: the underlying :class:`~medgen.apps.StudyResult` (metrics of every arm and seed,
            deltas by seed, worst group, audits, predictions).
        settings: arms, seeds, classifier options, translator, bootstrap settings, data sizes.
        warnings: messages worth reading.
        timings: seconds per stage.
        files: names of the files written into ``out_dir`` (relative), by kind.
    """

    by_site: pd.DataFrame
    deltas: pd.DataFrame
    gaps: pd.DataFrame
    answer: str
    study: StudyResult = field(repr=False)
    translation: pd.DataFrame | None = None
    example: dict[str, Any] | None = field(default=None, repr=False)
    settings: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    files: dict[str, Any] = field(default_factory=dict)

    @property
    def arms(self) -> list[str]:
        """Arm names, ``raw`` first."""
        return list(dict.fromkeys(self.by_site.index.get_level_values("arm")))

    def tables(self) -> dict[str, pd.DataFrame]:
        """Every table by file stem (what :meth:`to_csv` writes)."""
        out = {
            "by_site": self.by_site,
            "deltas": self.deltas,
            "gaps": self.gaps,
            "metrics": self.study.metrics,
            "deltas_by_seed": self.study.deltas_by_seed,
        }
        if self.translation is not None:
            out["translation"] = self.translation
        return out

    def to_csv(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Write every table as ``<name>.csv`` into ``directory`` (created), atomically."""
        from medgen._internal.files import write_table

        d = Path(directory).expanduser()
        d.mkdir(parents=True, exist_ok=True)
        return [
            write_table(t.reset_index(), d / f"{name}.csv") for name, t in self.tables().items()
        ]

    def to_html(self, path: str | os.PathLike[str] | None = None, *, images: bool = True) -> str:
        """One self-contained HTML page: the answer, the per-site table and the gap deltas
        first, then the paired deltas, the translation against the truth, one section per arm
        and provenance. PNG figures are inline; no scripts, no network."""
        text = _render(self, images=images)
        if path is not None:
            from medgen._internal.files import write_text_atomic

            write_text_atomic(Path(path).expanduser(), text)
        return text

    def _repr_html_(self) -> str:
        import html

        return f"<h4>Harmonisation study</h4><p>{html.escape(self.answer)}</p>" + _site_table(self)

    def __repr__(self) -> str:
        return f"HarmonisationResult(arms={self.arms}, answer={self.answer!r})"


# ---------------------------------------------------------------------------------------------
# the data of the arms


def _matches(df: pd.DataFrame, selector: Mapping[str, Any]) -> Any:
    """Rows of ``df`` in the translator's group ``selector``, by the Translator's own rule
    (values, lists of values, ``{"min": .., "max": ..}`` ranges)."""
    from medgen.generative.translation import _matches as selector_rows

    return selector_rows(df, selector).to_numpy(dtype=bool)


def _check_translator(translator: Any, columns: Sequence[str]) -> None:
    from medgen._internal.suggest import did_you_mean

    for name in ("source", "target"):
        sel = getattr(translator, name, None)
        if not isinstance(sel, Mapping) or not sel:
            raise ConfigError(
                f"translator= must have {name} (a dict of manifest column -> value, e.g. "
                f"{{'site': 'site_A'}}) and apply(image) (medgen.generative.Translator, or its "
                f"run folder); {type(translator).__name__} has {name}={sel!r}"
            )
        for k in sel:
            if k not in columns:
                raise ManifestError(
                    f"translator {name} selects on column {k!r}, which the cohort lacks."
                    f"{did_you_mean(k, list(columns))} Its columns: {', '.join(map(str, columns))}."
                )
    if not callable(getattr(translator, "apply", None)):
        raise ConfigError(
            f"translator= must have apply(image) (medgen.generative.Translator); "
            f"{type(translator).__name__} has none"
        )


def _description(translator: Any) -> str:
    desc = getattr(translator, "description", None)
    if isinstance(desc, str) and desc:
        return desc
    model = getattr(translator, "model", type(translator).__name__)

    def show(sel: Mapping[str, Any]) -> str:
        return ",".join(f"{k}={v}" for k, v in sel.items())

    return f"medgen translator {model} {show(translator.source)} to {show(translator.target)}"


def _harmonise(
    rows: pd.DataFrame, translator: Any, folder: Path, *, progress: bool
) -> pd.DataFrame:
    """Translate the ``rows`` images into ``folder/images`` (NIfTI, marked derived); their rows
    with ``image_path`` the written file and ``derived_from`` the input, in ``folder/manifest.csv``."""
    from tqdm.auto import tqdm

    from medgen._internal.files import write_table
    from medgen._internal.paths import confined, safe_file_name
    from medgen.io import load, save

    desc = _description(translator)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    out = rows.copy()
    written = []
    for row in tqdm(list(rows.itertuples(index=False)), disable=not progress, desc="harmonise"):
        name = safe_file_name(str(row.image_id), what="image_id") + ".nii.gz"
        target = confined(images, name, what=f"harmonised image of {row.image_id}")
        img = translator.apply(load(str(row.image_path)))
        written.append(str(save(img, target, format="nifti", derivation_description=desc)))
    out["derived_from"] = rows["image_path"].astype(str).to_numpy()
    out["image_path"] = written
    write_table(out, folder / "manifest.csv", what="harmonised manifest")
    return out


def _oracle_rows(
    source_rows: pd.DataFrame, counterfactuals: pd.DataFrame, target: Mapping[str, Any]
) -> tuple[pd.DataFrame | None, str]:
    """The source rows with their image replaced by their counterfactual at ``target``, or
    ``None`` and why not."""
    from medgen.generative.translation import _counterfactual_pairs

    # the render of each source image at the target that differs from it in the fewest other
    # counterfactual columns, as evaluate_translation pairs them
    pairs = _counterfactual_pairs(counterfactuals, source_rows, target, split=None)
    by_source = pairs.set_index(pairs["image_id"].astype(str))
    ids = source_rows["image_id"].astype(str)
    have = ids.isin(by_source.index)
    if not have.all():
        missing = ids[~have].tolist()
        return None, (
            f"no oracle arm: {len(missing)} of {len(ids)} source images have no counterfactual "
            f"render at the target (e.g. {missing[:3]}); simulate with counterfactual=('site',)"
        )
    out = source_rows.copy()
    out["derived_from"] = source_rows["image_path"].astype(str).to_numpy()
    out["image_path"] = by_source["truth_path"].reindex(ids).astype(str).to_numpy()
    out["oracle_of"] = by_source["truth_id"].reindex(ids).astype(str).to_numpy()
    return out, ""


def _arm_frame(data: Any, replaced: pd.DataFrame | None) -> pd.DataFrame:
    """The cohort table of an arm: train + val + test, the source rows replaced."""
    import pandas as pd

    rows = pd.concat([data.train, data.val, data.test], ignore_index=True)
    if replaced is None:
        return rows
    new = replaced.set_index("image_id")
    ids = rows["image_id"]
    hit = ids.isin(new.index)
    rows.loc[hit, "image_path"] = new.loc[ids[hit], "image_path"].to_numpy()
    if "derived_from" not in rows.columns:
        rows["derived_from"] = ""
    rows.loc[hit, "derived_from"] = new.loc[ids[hit], "derived_from"].to_numpy()
    return rows


# ---------------------------------------------------------------------------------------------
# the tables and the answer


def _by_site(metrics: pd.DataFrame, attribute: str) -> pd.DataFrame:
    cols = ["n"] + [c for m in SITE_METRICS for c in (m, f"{m}_low", f"{m}_high")]
    keep = metrics.index.get_level_values("attribute").isin([attribute, "overall"])
    sub = metrics[keep][[c for c in cols if c in metrics.columns]]
    return sub.groupby(level=["arm", "group"], sort=False).mean()


def _rename(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.rename(columns={"real": "raw"})


def _ci(r: Any) -> str:
    return f"{float(r['delta']):+.3f} [{float(r['delta_low']):+.3f}, {float(r['delta_high']):+.3f}]"


def _answer(
    gaps: pd.DataFrame, by_site: pd.DataFrame, *, attribute: str, metric: str, model: str
) -> str:
    """One sentence: the raw gap, what the oracle says about its cause, what harmonising did."""
    raw = by_site.xs(BASELINE, level="arm").drop(index="all", errors="ignore")[metric]
    raw = raw.dropna()
    if raw.empty:
        return f"The raw classifier's {metric.upper()} is undefined in every {attribute} group."
    gap_rows = gaps.xs((attribute, metric, "gap"), level=("attribute", "metric", "statistic"))
    gap = float(gap_rows["raw"].iloc[0])  # the mean over seeds of each seed's max - min
    groups = ", ".join(f"{g} {float(v):.3f}" for g, v in raw.sort_values().items())
    text = (
        f"The raw classifier's {metric.upper()} gap across {attribute} is {gap:.3f} "
        f"(mean {metric.upper()} {groups})"
    )

    def row(arm: str) -> Any:
        key: Any = (arm, attribute, metric, "gap")
        return gaps.loc[key] if key in gaps.index else None

    oracle, harm = row("oracle"), row("harmonised")
    if oracle is not None:
        if oracle["effect"] == "improved":
            text += (
                f"; the oracle (the source images rendered at the target's appearance) narrows "
                f"it by {-float(oracle['delta']):.3f} ({_ci(oracle)}), so appearance causes at "
                "least part of it"
            )
        elif oracle["effect"] == "worse":
            text += (
                f"; the oracle (the source images rendered at the target's appearance) widens "
                f"it ({_ci(oracle)}), so appearance does not explain it"
            )
        else:
            text += (
                f"; the oracle (the source images rendered at the target's appearance) does not "
                f"change it significantly ({_ci(oracle)}), so there is no evidence that "
                "appearance causes it"
            )
    else:
        text += (
            " (without counterfactual renders the study cannot tell appearance from other "
            f"{attribute} differences)"
        )
    if harm is not None:
        if harm["effect"] == "improved":
            text += f"; harmonising with {model} narrows it ({_ci(harm)})"
            if oracle is not None and float(oracle["delta"]) < 0:
                share = float(harm["delta"]) / float(oracle["delta"])
                text += f", {100 * share:.0f}% of what the oracle removes"
        elif harm["effect"] == "worse":
            text += f"; harmonising with {model} widens it ({_ci(harm)})"
        else:
            text += f"; harmonising with {model} does not change it significantly ({_ci(harm)})"
    return text + "."


def _translation_table(translator: Any, cohort: Any) -> pd.DataFrame | None:
    """Masked PSNR / SSIM to the counterfactual truth per method (evaluate_translation)."""
    from medgen.generative.translation import Translator, evaluate_translation

    if not isinstance(translator, Translator):
        return None
    try:
        per_image = evaluate_translation(translator, cohort)
    except MedgenValueError as err:
        log.info("harmonisation study: no translation table (%s)", err)
        return None
    g = per_image.groupby("method", sort=False)
    out = g[["psnr", "ssim", "lesion_contrast_ratio"]].mean()
    out["psnr_sd"] = g["psnr"].std(ddof=1)
    out["n"] = g["psnr"].count().astype(int)
    return out


# ---------------------------------------------------------------------------------------------
# the study


def harmonisation_study(
    cohort_or_manifest: Any,
    translator: TranslatorLike | str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    attribute: str = "site",
    target: str = "label",
    classifier: Mapping[str, Any] | None = None,
    model: str | None = None,
    epochs: int | None = None,
    seeds: int | Sequence[int] = (0,),
    oracle: bool = True,
    metric: str = "auc",
    metrics: Sequence[str] | None = None,
    threshold: Any = 0.5,
    n_boot: int = 1000,
    ci: float = 0.95,
    p_adjust: str = "holm",
    val_fraction: float = 0.2,
    overwrite: bool = False,
    device: str = "auto",
    progress: bool = True,
) -> HarmonisationResult:
    """Train the same classifier on raw, harmonised and (with counterfactuals) oracle images,
    audit each by ``attribute`` on the same test rows and compare them with ``raw``, paired.

    Arms (module docstring): ``raw``; ``harmonised`` (source-group images, every split,
    replaced by ``translator.apply`` of them); ``oracle`` (source-group images replaced by their
    counterfactual render at the translator's target, when every source image has one and
    ``oracle``). Counterfactual rows (``counterfactual_of`` set) never train or test an arm
    themselves; rows keep their metadata, so the audit groups are the original ones.

    Args:
        cohort_or_manifest: a :class:`medgen.Cohort` or manifest path with ``train`` and
            ``test`` splits (``val`` optional: otherwise ``val_fraction`` of the training
            subjects are held out once, for every arm).
        translator: a fitted :class:`medgen.generative.Translator` (fitted on the training
            split only, as :meth:`Translator.fit` does) or its run folder, or any object with
            ``source``, ``target`` and ``apply`` (:class:`TranslatorLike`).
        out_dir: a new or empty run folder for ``harmonised/`` (the translated images and
            ``manifest.csv``), ``oracle/manifest.csv``, ``predictions/<arm>-seed<k>.csv``,
            ``tables/*.csv``, ``report.html`` and ``study.json``, written under the folder's
            lock, ``run_complete.json`` last; a study there is replaced only with
            ``overwrite=True``. Without it the harmonised images live in a temporary folder
            for the study's duration.
        attribute: the column audited by (the translator's source and target are groups of it,
            typically).
        target: the label column (binary).
        classifier: :func:`medgen.classify.train` options shared by every arm (default
            :data:`CLASSIFIER_DEFAULTS`); ``model`` and ``epochs`` override its entries.
        seeds: training seeds (one replicate of every arm each).
        oracle: add the oracle arm when the cohort has counterfactual renders.
        metric: the gap the answer is about: ``"auc"`` or ``"tpr"``.
        metrics, threshold, n_boot, ci, p_adjust: as in :func:`medgen.apps.compare_arms`.
        val_fraction: see ``cohort_or_manifest``.
        overwrite: replace the study in ``out_dir``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``.
        progress: progress bars.

    Returns:
        A :class:`HarmonisationResult`.

    Raises:
        ConfigError: a translator without selectors or ``apply``; bad seeds, metric or
            classifier options.
        ManifestError: a selector or ``attribute`` column the cohort lacks, no source-group
            test rows, no train or test rows.
        OutputPathError: ``out_dir`` is, holds or lies inside an input.
        RunFolderError, RunLockedError: ``out_dir`` rules (see above).
    """
    import contextlib
    import tempfile

    from medgen._internal.paths import check_output_not_input
    from medgen._internal.runs import mark_complete, prepare_run_folder, run_lock
    from medgen.apps._study import STUDY_METRICS, _check_seeds
    from medgen.apps._study_arms import check_train_options, prepare_data
    from medgen.classify._data import as_cohort

    t_start = time.perf_counter()
    if metric not in GAP_METRICS:
        raise ConfigError(f"metric must be one of {list(GAP_METRICS)}, not {metric!r}")
    seed_list = _check_seeds(seeds)
    opts = {**CLASSIFIER_DEFAULTS, **dict(classifier or {})}
    if model is not None:
        opts["model"] = model
    if epochs is not None:
        opts["epochs"] = epochs
    check_train_options(opts, what="classifier")
    run_path: Path | None = None
    if isinstance(translator, str | os.PathLike):
        from medgen.generative import load as load_model

        run_path = Path(translator).expanduser()
        translator = cast(TranslatorLike, load_model(run_path))
    co = as_cohort(cohort_or_manifest)
    df = co.df
    _check_translator(translator, list(df.columns))
    if attribute not in df.columns:
        from medgen._internal.suggest import did_you_mean

        raise ManifestError(
            f"the cohort has no column {attribute!r} (the attribute); its columns: "
            f"{', '.join(map(str, df.columns))}.{did_you_mean(attribute, list(df.columns))}"
        )
    has_cf = "counterfactual_of" in df.columns
    factual = co.select(counterfactual_of=None) if has_cf else co
    counterfactuals = df[df["counterfactual_of"].notna()] if has_cf else df.iloc[:0]
    data = prepare_data(factual, target=target, attributes=[attribute], val_fraction=val_fraction)
    all_rows = _arm_frame(data, None)
    source_rows = all_rows[_matches(all_rows, translator.source)]
    n_test = int((source_rows["split"] == "test").sum())
    if not n_test:
        raise ManifestError(
            f"no test row belongs to the translator's source group {dict(translator.source)}; "
            "the study compares the arms on those rows. Check the translator's source and the "
            "cohort's test split."
        )
    if _matches(all_rows, translator.target).sum() == 0:
        raise ManifestError(
            f"no row belongs to the translator's target group {dict(translator.target)}; "
            "harmonising towards a group the cohort lacks cannot be audited."
        )
    notes: list[str] = []
    oracle_rows = None
    if oracle and has_cf and len(counterfactuals):
        oracle_rows, why = _oracle_rows(source_rows, counterfactuals, translator.target)
        if oracle_rows is None:
            notes.append(why)
    out = Path(out_dir).expanduser() if out_dir is not None else None
    if out is not None:
        if out.exists() and not out.is_dir():
            raise MedgenValueError(f"study: out_dir {str(out)!r} is a file; give a folder")
        inputs = [p for c in ("image_path", "mask_path") if c in df for p in df[c].dropna()]
        if isinstance(cohort_or_manifest, str | os.PathLike):
            inputs.append(cohort_or_manifest)
        if run_path is not None:
            inputs.append(run_path)
        check_output_not_input(out, inputs, what="out_dir")
    arm_names = ["raw", "harmonised", *(["oracle"] if oracle_rows is not None else [])]
    timings: dict[str, float] = {}
    files: dict[str, Any] = {"predictions": {}}
    with contextlib.ExitStack() as held:
        if out is not None:
            held.enter_context(run_lock(out, what=_WHAT, owned=HARMONISE_OUTPUTS))
            prepare_run_folder(
                out,
                owned=HARMONISE_OUTPUTS,
                overwrite=overwrite,
                what=_WHAT,
                overwrite_hint="overwrite=True (CLI: --overwrite)",
                resume_hint="a new out_dir (a study cannot be resumed)",
            )
            folder = out / "harmonised"
        else:
            folder = Path(held.enter_context(tempfile.TemporaryDirectory(prefix="medgen-")))
        t = time.perf_counter()
        harmonised = _harmonise(source_rows, translator, folder, progress=progress)
        timings["harmonise"] = time.perf_counter() - t
        if out is not None:
            files["harmonised"] = "harmonised/manifest.csv"
        if oracle_rows is not None and out is not None:
            from medgen._internal.files import write_table

            (out / "oracle").mkdir(exist_ok=True)
            write_table(oracle_rows, out / "oracle" / "manifest.csv", what="oracle manifest")
            files["oracle"] = "oracle/manifest.csv"
        frames = {
            "raw": _arm_frame(data, None),
            "harmonised": _arm_frame(data, harmonised),
            **({"oracle": _arm_frame(data, oracle_rows)} if oracle_rows is not None else {}),
        }
        preds, timings_train = _train_arms(
            frames, data, seed_list, opts=opts, device=device, progress=progress
        )
        timings.update(timings_train)
        if out is not None:
            from medgen._internal.files import write_table

            (out / "predictions").mkdir(exist_ok=True)
            for (arm, s), p in preds.items():
                name = f"predictions/{arm}-seed{s}.csv"
                write_table(p, out / name)
                files["predictions"][f"{arm}|{s}"] = name
        result = _analyse(
            preds,
            attribute=attribute,
            metric=metric,
            metrics=list(metrics) if metrics is not None else list(STUDY_METRICS),
            threshold=threshold,
            n_boot=n_boot,
            ci=ci,
            p_adjust=p_adjust,
            model=str(getattr(translator, "model", type(translator).__name__)),
        )
        t = time.perf_counter()
        if oracle_rows is not None:
            result.translation = _translation_table(translator, co)
        result.example = _example(source_rows, harmonised, oracle_rows)
        timings["translation_eval"] = time.perf_counter() - t
        result.warnings = notes + result.warnings
        result.files = files
        result.settings.update(
            arms=arm_names,
            seeds=seed_list,
            target=target,
            attribute=attribute,
            metric=metric,
            classifier=opts,
            translator={
                "description": _description(translator),
                "source": dict(translator.source),
                "target": dict(translator.target),
                "run": None if run_path is None else str(run_path),
            },
            n_boot=n_boot,
            ci=ci,
            p_adjust=p_adjust,
            train_rows=len(data.train),
            val_rows=len(data.val),
            test_rows=len(data.test),
            val_carved=data.val_carved,
            source_rows=len(source_rows),
            source_test_rows=n_test,
            counterfactual_rows=len(counterfactuals),
        )
        result.timings = {**timings, "total": time.perf_counter() - t_start}
        if out is not None:
            _write_outputs(result, out)
            mark_complete(
                out,
                ["report.html", "study.json", "harmonised/manifest.csv"],
                kind="harmonisation-study",
            )
    return result


def _train_arms(
    frames: Mapping[str, pd.DataFrame],
    data: Any,
    seeds: Sequence[int],
    *,
    opts: Mapping[str, Any],
    device: str,
    progress: bool,
) -> tuple[dict[tuple[str, int], pd.DataFrame], dict[str, float]]:
    from medgen.classify import train
    from medgen.cohort import Cohort

    preds: dict[tuple[str, int], pd.DataFrame] = {}
    timings = {"train": 0.0, "predict": 0.0}
    for arm, frame in frames.items():
        cohort = Cohort.from_manifest(frame, label_columns=data.label_columns)
        test = cohort.select(split="test")
        for s in seeds:
            log.info("harmonisation study: training arm %r seed %d on %d rows", arm, s, len(frame))
            t = time.perf_counter()
            clf = train(
                cohort, target=data.target, seed=s, device=device, progress=progress, **opts
            )
            timings["train"] += time.perf_counter() - t
            t = time.perf_counter()
            preds[(arm, s)] = clf.predict(test, split="test", progress=progress)
            timings["predict"] += time.perf_counter() - t
    return preds, timings


def _analyse(
    preds: Mapping[tuple[str, int], pd.DataFrame],
    *,
    attribute: str,
    metric: str,
    metrics: Sequence[str],
    threshold: Any,
    n_boot: int,
    ci: float,
    p_adjust: str,
    model: str,
) -> HarmonisationResult:
    from medgen.apps._study import compare_arms

    t = time.perf_counter()
    study = compare_arms(
        preds,
        sensitive=[attribute],
        baseline=BASELINE,
        metrics=metrics,
        threshold=threshold,
        n_boot=n_boot,
        ci=ci,
        p_adjust=p_adjust,
    )
    by_site = _by_site(study.metrics, attribute)
    deltas = _rename(study.deltas)
    if study.worst_group_deltas is None:  # pragma: no cover - compare always gives gaps
        raise MedgenValueError("harmonisation study: the comparison gave no gap table")
    gaps = _rename(study.worst_group_deltas)
    answer = _answer(gaps, by_site, attribute=attribute, metric=metric, model=model)
    return HarmonisationResult(
        by_site=by_site,
        deltas=deltas,
        gaps=gaps,
        answer=answer,
        study=study,
        warnings=list(study.warnings),
        settings={"bootstrap_seed": 0, "threshold": threshold, "metrics": list(metrics)},
        timings={"analysis": time.perf_counter() - t},
    )


def _example(
    source: pd.DataFrame, harmonised: pd.DataFrame, oracle_rows: pd.DataFrame | None
) -> dict[str, Any]:
    """One test image of the source group: source, harmonised (and truth) arrays, for the figure."""
    import numpy as np

    from medgen.io import load

    test = source[source["split"] == "test"]
    iid = str(test["image_id"].iloc[0])
    by_h = harmonised.set_index(harmonised["image_id"].astype(str))

    def arr(path: str) -> np.ndarray:
        x = np.asarray(load(path))[0]
        return x if x.ndim == 2 else x[..., x.shape[-1] // 2]

    out = {
        "image_id": iid,
        "source": arr(str(test["image_path"].iloc[0])),
        "harmonised": arr(str(by_h.loc[iid, "image_path"])),
    }
    if oracle_rows is not None:
        by_o = oracle_rows.set_index(oracle_rows["image_id"].astype(str))
        out["truth"] = arr(str(by_o.loc[iid, "image_path"]))
    return out


def _write_outputs(result: HarmonisationResult, out: Path) -> None:
    from medgen._internal.files import write_text_atomic
    from medgen._internal.provenance import package_versions

    t = time.perf_counter()
    written = result.to_csv(out / "tables")
    result.files["tables"] = [f"tables/{p.name}" for p in written]
    result.to_html(out / "report.html")
    result.timings["report"] = time.perf_counter() - t
    summary = {
        "answer": result.answer,
        "settings": result.settings,
        "gaps": json.loads(result.gaps.reset_index().to_json(orient="records")),
        "warnings": result.warnings,
        "timings_s": result.timings,
        "files": result.files,
        "versions": package_versions(),
    }
    write_text_atomic(out / "study.json", json.dumps(summary, indent=2, default=str))


# ---------------------------------------------------------------------------------------------
# the report


def _site_table(res: HarmonisationResult) -> str:
    from medgen._internal.report import fmt, fmt_ci, html_table

    rows = []
    for key, r in res.by_site.iterrows():
        arm, group = cast(tuple[str, str], key)
        cells = [str(arm), "everyone" if group == "all" else str(group), fmt(r.get("n"))]
        for m in SITE_METRICS:
            if m in r:
                cells.append(
                    fmt_ci(r[m], r.get(f"{m}_low", math.nan), r.get(f"{m}_high", math.nan))
                )
        rows.append((cells, ""))
    header = ["arm", res.settings.get("attribute", "group"), "n"]
    header += [m.upper() if m in ("auc", "tpr", "fpr") else m for m in SITE_METRICS]
    return html_table(header, rows)


def _gap_table(res: HarmonisationResult) -> str:
    from medgen._internal.report import fmt, fmt_ci, html_table

    rows = []
    for key, r in res.gaps.iterrows():
        arm, _attr, m, stat = cast(tuple[str, str, str, str], key)
        rows.append(
            (
                [
                    str(arm),
                    f"{m.upper()} {'gap (max - min)' if stat == 'gap' else 'worst group'}",
                    fmt(r["raw"]),
                    fmt(r["value"]),
                    fmt_ci(r["delta"], r["delta_low"], r["delta_high"]),
                    fmt(r["p_adjusted"], 4),
                    str(r["effect"]),
                ],
                "significant" if r["significant"] else "",
            )
        )
    return html_table(["arm", "statistic", "raw", "arm", "Δ [CI]", "p adjusted", "effect"], rows)


def _delta_table(res: HarmonisationResult) -> str:
    from medgen._internal.report import fmt, fmt_ci, html_table

    rows = []
    for key, r in res.deltas.iterrows():
        arm, attr, group, m = cast(tuple[str, str, str, str], key)
        rows.append(
            (
                [
                    str(arm),
                    "everyone" if attr == "overall" else f"{attr}={group}",
                    str(m),
                    fmt(r["raw"]),
                    fmt(r["value"]),
                    fmt_ci(r["delta"], r["delta_low"], r["delta_high"]),
                    fmt(r["p_adjusted"], 4),
                ],
                "significant" if r["significant"] else "",
            )
        )
    return html_table(["arm", "group", "metric", "raw", "arm", "Δ [CI]", "p adjusted"], rows)


def _gap_figure(res: HarmonisationResult) -> str:
    from matplotlib.figure import Figure

    from medgen._internal.report import figure_png

    attr = res.settings.get("attribute", "site")
    metric = res.settings.get("metric", "auc")
    table = res.by_site.drop(index="all", level="group", errors="ignore")
    arms = res.arms
    groups = list(dict.fromkeys(table.index.get_level_values("group")))
    fig = Figure(figsize=(1.6 + 1.2 * len(arms), 2.8))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(groups), 1)
    for j, g in enumerate(groups):
        vals, lows, highs = [], [], []
        for arm in arms:
            key = (arm, g)
            r = table.loc[key] if key in table.index else None
            v = float(r[metric]) if r is not None else math.nan
            vals.append(v)
            lows.append(v - float(r[f"{metric}_low"]) if r is not None else 0.0)
            highs.append(float(r[f"{metric}_high"]) - v if r is not None else 0.0)
        xs = [i + (j - (len(groups) - 1) / 2) * width for i in range(len(arms))]
        ax.bar(xs, vals, width=width, label=str(g), yerr=[lows, highs], capsize=2)
    ax.set_xticks(range(len(arms)), arms, fontsize=8)
    ax.set_ylabel(metric.upper(), fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{metric.upper()} by {attr} per arm (bootstrap CI)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.tick_params(labelsize=8)
    return figure_png(fig)


def _example_figure(example: Mapping[str, Any]) -> str:
    from matplotlib.figure import Figure

    from medgen._internal.report import figure_png

    panels = [(k, example[k]) for k in ("source", "harmonised", "truth") if k in example]
    fig = Figure(figsize=(2.2 * len(panels), 2.4))
    for i, (name, img) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(img.T, cmap="gray", origin="lower")
        ax.set_title(name if name != "truth" else "truth (counterfactual)", fontsize=8)
        ax.axis("off")
    return figure_png(fig)


def _render(res: HarmonisationResult, *, images: bool) -> str:
    from medgen._internal.report import fmt, html_table, render_html
    from medgen._version import __version__

    s = res.settings
    attr = s.get("attribute", "site")
    sections: list[dict[str, Any]] = []
    imgs = [{"alt": "metric by group per arm", "data": _gap_figure(res)}] if images else []
    sections.append(
        {
            "title": "Is the gap caused by appearance, and does harmonising remove it?",
            "note": res.answer
            + f" Every arm is tested on the same {s.get('test_rows')} test images (paired by "
            "image_id); CIs from the paired bootstrap over test cases and the spread over seeds.",
            "table": _site_table(res),
            "images": imgs,
        }
    )
    sections.append(
        {
            "title": f"Gap across {attr}: each arm against raw",
            "note": "Gap = max - min over the groups; worst group = the lowest group's value. "
            "Red: significant after adjustment within this table; 'improved' is a smaller gap "
            "or a higher worst group.",
            "table": _gap_table(res),
            "images": [],
        }
    )
    if res.translation is not None or res.example is not None:
        table = ""
        if res.translation is not None:
            rows = [
                (
                    [
                        str(method),
                        fmt(r["psnr"], 2),
                        fmt(r["psnr_sd"], 2),
                        fmt(r["ssim"]),
                        fmt(r["lesion_contrast_ratio"]),
                        fmt(r["n"]),
                    ],
                    "",
                )
                for method, r in res.translation.iterrows()
            ]
            table = html_table(
                ["method", "masked PSNR (dB)", "s.d.", "SSIM", "lesion contrast ratio", "n"],
                rows,
            )
        ex_imgs = (
            [
                {
                    "alt": "a source test image, its translation, its truth",
                    "data": _example_figure(res.example),
                }
            ]
            if images and res.example is not None
            else []
        )
        sections.append(
            {
                "title": "How close the translator gets to the truth",
                "note": "Test images of the source group against their counterfactual renders "
                "at the target (identity: the source image unchanged); "
                + (f"example: {res.example['image_id']}." if res.example is not None else ""),
                "table": table,
                "images": ex_imgs,
            }
        )
    sections.append(
        {
            "title": "Paired deltas against raw",
            "note": f"Every metric of {', '.join(s.get('metrics', []))} for everyone and each "
            f"{attr} group; p-values adjusted ({s.get('p_adjust')}) over the whole table.",
            "table": _delta_table(res),
            "images": [],
        }
    )
    if res.warnings:
        import html

        sections.append(
            {
                "title": "Warnings",
                "note": "",
                "table": "".join(f'<div class="warn">{html.escape(w)}</div>' for w in res.warnings),
                "images": [],
            }
        )
    for arm in res.arms:
        sections.append(
            {
                "title": f"Arm: {arm}",
                "note": f"{arm}: {ARM_DESCRIPTIONS[arm]}",
                "table": "",
                "images": [],
            }
        )
    prov = dict(s)
    prov["timings_s"] = {k: round(float(v), 2) for k, v in res.timings.items()}
    prov["medgen_version"] = __version__
    return render_html(
        title="medgen harmonisation study",
        subtitle=(
            f"target {s.get('target')!r}; audited by {attr!r}; arms {', '.join(res.arms)}; "
            f"translator: {s.get('translator', {}).get('description', '')}; seeds "
            f"{', '.join(map(str, s.get('seeds', [])))}; {s.get('n_boot')} paired bootstrap "
            "resamples"
        ),
        warnings=[],
        sections=sections,
        provenance=prov,
    )
