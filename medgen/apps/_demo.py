"""medgen's main job: does generative augmentation make a classifier better and fairer, and for whom?

``run_demo(out_dir)`` (CLI: ``medgen demo -o OUT``) chains library calls with nothing of its own:
:func:`medgen.simulate.simulate` (a cohort with a known bias) → :class:`medgen.generative.
Synthesizer` trained on the train split, conditioned on label and sex →
:func:`medgen.apps.augmentation_study` with the arms ``real``, ``reweight`` and
``synthetic-balanced`` (every arm audited by every categorical attribute on the same real test
split) → ``OUT/report.html``, whose first screen answers the question beside the injected truth.

The demo preset injects a *presentation* bias on ``sex = F`` (subtler lesions in women) and
carries ``handedness`` as a control with no effect; a correct pipeline flags the first and not the
second in the ``real`` arm's audit, and a generator trained on the same images cannot invent the
missing signal, so no arm should be credited with closing that gap. ``OUT/demo.json`` records
which attributes were injected and flagged and what each arm changed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medgen._internal.runs import mark_complete, prepare_run_folder, run_lock
from medgen.errors import ConfigError, MedgenValueError

if TYPE_CHECKING:
    import pandas as pd

    from medgen.classify import Classifier

log = logging.getLogger(__name__)

__all__ = ["DEMO_SETTINGS", "DemoResult", "run_demo"]

#: Training settings per simulator preset: chosen so ``demo`` fits 10 minutes on 2 CPU cores.
#: No wall-time budget by default: a budget makes the trained models, and so the report's
#: conclusions, depend on how busy the machine is (a loaded run stopped after 6 of 40 epochs and
#: missed the injected bias). Epoch caps + early stopping give the same result for the same seed.
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "demo": {
        # a small MONAI DenseNet (init_features=16, growth_rate=8, blocks (2, 2, 2)): ~1.5 s per
        # epoch of 1,100 64x64 images on 2 cores, so 40 epochs fit where DenseNet121 manages 2-6,
        # and it reaches a higher test AUC within the 10-minute budget (docs/classify.md)
        "model": "densenet",
        "epochs": 40,
        "batch_size": 32,
        "lr": 3e-3,
        "patience": 8,
        "time_budget_s": None,
        "n_boot": 1000,
        "arms": ("real", "reweight", "synthetic-balanced"),
        # the generator is what the 10 minutes trade away: 600 steps of the default VAE-GAN
        # (about 2.5 minutes on 2 cores) where the synthesis benchmark trains 10-20 minutes
        "synthesizer": {"model": "vae-gan", "image_size": (64, 64)},
        "synth_train": {"epochs": 12, "steps_per_epoch": 50, "batch_size": 16},
    },
    "tiny": {
        "model": "densenet",
        "epochs": 3,
        "batch_size": 16,
        "lr": 2e-3,
        "patience": None,
        "time_budget_s": None,
        "n_boot": 100,
        "arms": ("real", "reweight", "synthetic-balanced"),
        "synthesizer": {
            "model": "vae-gan",
            "image_size": (32, 32),
            "channels": (8, 16),
            "latent_channels": 2,
        },
        "synth_train": {"epochs": 2, "steps_per_epoch": 15, "batch_size": 8},
    },
}


@dataclass
class DemoResult:
    """What :func:`run_demo` wrote and found.

    Attributes:
        out_dir: the output folder.
        report_path: ``out_dir / "report.html"``.
        study: the :class:`medgen.apps.StudyResult` of the augmentation study.
        predictions: the ``real`` arm's test-split prediction table.
        report: the ``real`` arm's :class:`medgen.audit.AuditReport`.
        classifier: the ``real`` arm's classifier (saved under ``study/models/real-seed<k>``).
        synthesizer: the trained :class:`medgen.generative.Synthesizer` (saved under ``synth``).
        injected: attributes the simulator biased (ground truth from ``simulation.json``).
        flagged: attribute → whether the ``real`` arm's audit found a disparity for it that is
            significant after multiplicity adjustment (Holm by default).
        timings: seconds per stage.
    """

    out_dir: Path
    report_path: Path
    study: Any
    predictions: pd.DataFrame
    report: Any
    classifier: Classifier
    synthesizer: Any
    injected: list[str]
    flagged: dict[str, bool]
    timings: dict[str, float] = field(default_factory=dict)


def _categorical_attributes(
    df: pd.DataFrame, candidates: list[str], *, exclude: set[str], max_groups: int = 12
) -> list[str]:
    """Attributes to audit: non-numeric columns with 2..max_groups values, minus ground truth."""
    import pandas as pd

    out = []
    for c in candidates:
        if c not in df.columns or c in exclude or pd.api.types.is_numeric_dtype(df[c]):
            continue
        if 2 <= df[c].nunique(dropna=False) <= max_groups:
            out.append(c)
    return out


def _ground_truth(sim_dir: Path) -> tuple[list[str], set[str]]:
    """(attributes the simulator biased, ground-truth columns not to audit by)."""
    side = sim_dir / "simulation.json"
    if not side.is_file():
        return [], set()
    truth = json.loads(side.read_text()).get("ground_truth", {})
    biases = truth.get("biases", [])
    injected = sorted({str(b["attribute"]) for b in biases if float(b.get("strength", 0)) > 0})
    return injected, set(truth.get("columns", {}))


#: what the demo writes into its folder (and replaces on a rerun); ``model/`` is what earlier
#: versions wrote (the real classifier, now ``study/models/real-seed<k>``), owned so that a demo
#: folder of an earlier version is replaced too
DEMO_OUTPUTS = (
    "cohort/",
    "synth/",
    "study/",
    "model/",
    "predictions.csv",
    "audit_by_group.csv",
    "audit_disparities.csv",
    "audit_summary.csv",
    "report.html",
    "demo.json",
)


def run_demo(
    out_dir: str | Path,
    *,
    preset: str = "demo",
    model: str | None = None,
    epochs: int | None = None,
    time_budget_s: float | None = None,
    synth_epochs: int | None = None,
    arms: tuple[str, ...] | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> DemoResult:
    """Run the end-to-end demo (the augmentation study on a simulated cohort) and write the report.

    Args:
        out_dir: output folder (created): ``cohort/`` (simulated images + manifest), ``synth/``
            (the synthesizer's run folder), ``study/`` (the augmentation study's run folder:
            predictions, tables, per-arm audits and models, the generated images),
            ``predictions.csv`` and ``audit_*.csv`` (the ``real`` arm), ``report.html``,
            ``demo.json`` (:data:`DEMO_OUTPUTS`). A rerun replaces them; a folder holding other
            files is refused (nothing of a user's is overwritten); one demo per folder at a time.
        preset: simulator preset (``"demo"``: ~2,000 64x64 slices, presentation bias on women;
            ``"demo-underrep"``: positive women rare in training; ``"tiny"``: 80 32x32 slices).
        model: override the classifier network (default per preset in :data:`DEMO_SETTINGS`).
        epochs: override the classifier's epoch cap.
        time_budget_s: cap each classifier's training wall time (seconds); off by default,
            because the result then depends on machine load.
        synth_epochs: override the synthesizer's epochs (of ``steps_per_epoch`` steps each).
        arms: the study's arms (default ``real``, ``reweight``, ``synthetic-balanced``).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        seed: seeds the simulation, the synthesizer, the classifiers and the bootstrap.
        progress: show progress bars.

    Returns:
        A :class:`DemoResult`.
    """
    base = preset.split("-")[0]
    settings = dict(DEMO_SETTINGS.get(preset, DEMO_SETTINGS.get(base, DEMO_SETTINGS["demo"])))
    if model is not None:
        settings["model"] = model
    if epochs is not None:
        settings["epochs"] = epochs
    if time_budget_s is not None:
        settings["time_budget_s"] = time_budget_s
    if arms is not None:
        settings["arms"] = tuple(arms)
    settings["synth_train"] = dict(settings["synth_train"])
    if synth_epochs is not None:
        settings["synth_train"]["epochs"] = synth_epochs
    for name, value in (
        ("epochs", settings["epochs"]),
        ("synth_epochs", settings["synth_train"]["epochs"]),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, not {value!r}")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise MedgenValueError(f"demo: -o {str(out)!r} is a file; give a folder for the outputs.")
    # the demo owns its outputs: a rerun replaces them, and only them (never a user's files)
    with run_lock(out, what="demo", owned=DEMO_OUTPUTS):
        prepare_run_folder(out, owned=DEMO_OUTPUTS, overwrite=True, what="demo")
        result = _run(out, settings, preset=preset, device=device, seed=seed, progress=progress)
        mark_complete(out, ["report.html", "demo.json"], kind="demo")
    return result


def _run(
    out: Path, settings: dict[str, Any], *, preset: str, device: str, seed: int, progress: bool
) -> DemoResult:
    """The body of :func:`run_demo`, in a locked and prepared ``out``."""
    import shutil

    from medgen._internal.files import write_table, write_text_atomic
    from medgen._internal.provenance import package_versions
    from medgen.apps._study import augmentation_study
    from medgen.classify import Classifier
    from medgen.cohort import Cohort
    from medgen.generative.synthesis import Synthesizer
    from medgen.simulate import preset as sim_preset
    from medgen.simulate import simulate

    timings: dict[str, float] = {}
    if (out / "model").is_dir():  # an earlier version's output (see DEMO_OUTPUTS)
        shutil.rmtree(out / "model")

    t = time.perf_counter()
    log.info("[1/4] simulating the %r cohort into %s", preset, out / "cohort")
    # the demo owns OUT/cohort: a rerun replaces the previous simulation there (and only that)
    manifest = simulate(
        sim_preset(preset), out / "cohort", seed=seed, progress=progress, overwrite=True
    )
    cohort = Cohort.from_manifest(manifest)
    timings["simulate"] = time.perf_counter() - t
    injected, truth_columns = _ground_truth(out / "cohort")
    sensitive = _categorical_attributes(cohort.df, list(cohort.attributes), exclude=truth_columns)
    # the cells filled and compared: the attribute the simulator biased (sex in `demo`, site in
    # `demo-underrep`), else sex
    biased = [a for a in injected if a in sensitive]
    attribute = biased[0] if biased else ("sex" if "sex" in sensitive else sensitive[0])

    t = time.perf_counter()
    syn_opts = dict(settings["synthesizer"])
    syn_train = {**settings["synth_train"], "seed": seed, "device": device}
    log.info(
        "[2/4] training a %s synthesizer on label x %s (%d epochs of %d steps)",
        syn_opts["model"],
        attribute,
        syn_train["epochs"],
        syn_train["steps_per_epoch"],
    )
    syn = Synthesizer(conditions=("label", attribute), **syn_opts)
    syn.fit(manifest, run_dir=out / "synth", config=syn_train, overwrite=True, progress=progress)
    timings["synthesizer"] = time.perf_counter() - t

    t = time.perf_counter()
    arms = tuple(settings["arms"])
    log.info("[3/4] the augmentation study: arms %s", ", ".join(arms))
    classifier = {k: settings[k] for k in ("model", "epochs", "batch_size", "lr", "patience")} | {
        "time_budget_s": settings["time_budget_s"]
    }
    study = augmentation_study(
        cohort,
        target="label",
        attributes=[attribute],
        arms=arms,
        synthesizer=syn if any(a.startswith("synthetic") for a in arms) else None,
        synthesizer_seed=seed,
        seeds=(seed,),
        classifier=classifier,
        sensitive=sensitive,
        shortage="warn",
        n_boot=int(settings["n_boot"]),
        out_dir=out / "study",
        overwrite=True,  # the demo owns OUT/study
        save_models=True,
        device=device,
        progress=progress,
    )
    timings["study"] = time.perf_counter() - t

    t = time.perf_counter()
    log.info("[4/4] writing the report")
    preds = study.predictions[("real", seed)]
    report = study.audits[("real", seed)]
    write_table(preds, out / "predictions.csv")
    write_table(report.by_group.reset_index(), out / "audit_by_group.csv")
    write_table(report.disparities.reset_index(), out / "audit_disparities.csv")
    write_table(report.summary.reset_index(), out / "audit_summary.csv")
    clf = Classifier.load(out / "study" / "models" / f"real-seed{seed}")

    disp = report.disparities.reset_index()
    # an attribute is flagged when one of its disparities is significant after the audit's
    # multiplicity adjustment; ratio-only flags (outside the tolerance band, not significant)
    # are recorded too but are noise-prone in small groups (e.g. 90 left-handers)
    flagged = {
        a: bool(disp.loc[disp["attribute"] == a, "significant"].astype(bool).any())
        for a in sensitive
    }
    ratio_only = {a: bool(disp.loc[disp["attribute"] == a, "flagged"].any()) for a in sensitive}
    truth = _truth_text(out / "cohort")
    answer = _answer(study, attribute=attribute, seed=seed)
    report_path = out / "report.html"
    write_text_atomic(
        report_path,
        _render(study, report, truth=truth, answer=answer, flagged=flagged, preset=preset),
    )
    timings["report"] = time.perf_counter() - t
    summary = {
        "preset": preset,
        "seed": seed,
        "settings": settings,
        "sensitive": sensitive,
        "injected_bias_attributes": injected,
        "injected_truth": truth,
        "flagged_attributes": [a for a, f in flagged.items() if f],
        "ratio_outside_tolerance": [a for a, f in ratio_only.items() if f],
        "test_auc": float(_auc(preds)),
        "arms": answer,
        "synthesizer": {
            "model_id": syn.model_id,
            "steps": len(syn.history),
            "generated": study.settings.get("synthesizer"),
        },
        "classifier_metrics": clf.metrics,
        "timings_s": timings,
        "manifest_sha256": clf.provenance.get("manifest_sha256"),
        "versions": package_versions(),
    }
    write_text_atomic(out / "demo.json", json.dumps(summary, indent=2, default=str))
    log.info(
        "done in %.0f s: real-arm test AUC %.3f; injected bias on %s; flagged: %s; report %s",
        sum(timings.values()),
        summary["test_auc"],
        injected or "-",
        summary["flagged_attributes"] or "-",
        report_path,
    )
    return DemoResult(out, report_path, study, preds, report, clf, syn, injected, flagged, timings)


def _truth_text(sim_dir: Path) -> list[str]:
    """One line per injected bias, from the simulator's ground truth."""
    side = sim_dir / "simulation.json"
    if not side.is_file():
        return []
    biases = json.loads(side.read_text()).get("ground_truth", {}).get("biases", [])
    return [
        f"{b['mechanism']} on {b['attribute']}={b['group']} (strength {b['strength']}): "
        f"{b.get('description', '')}"
        for b in biases
        if float(b.get("strength", 0)) > 0
    ]


def _answer(study: Any, *, attribute: str, seed: int) -> list[dict[str, Any]]:
    """Per arm: overall AUC, AUC per group of ``attribute``, the gap and its change vs real."""
    m = study.metrics
    rows = []
    real_gap = None
    for arm in study.arms:
        sub = m.xs((arm, seed), level=("arm", "seed"))
        per = sub.xs(attribute, level="attribute")["auc"]
        gap = float(per.max() - per.min())
        if arm == "real":
            real_gap = gap
        d = study.deltas
        key = (arm, "overall", "all", "auc")
        delta = float(d.loc[key, "delta"]) if arm != "real" and key in d.index else 0.0
        worst = str(per.idxmin())
        wkey = (arm, attribute, worst, "auc")
        row = {
            "arm": arm,
            "auc": float(sub.loc[("overall", "all"), "auc"]),
            "auc_delta": delta,
            "auc_by_group": {str(k): float(v) for k, v in per.items()},
            "gap": gap,
            "gap_delta": None if real_gap is None else gap - real_gap,
            "worst_group": worst,
            "worst_group_significant": bool(
                arm != "real" and wkey in d.index and bool(d.loc[wkey, "significant"])
            ),
            "worst_group_delta": (
                float(d.loc[wkey, "delta"]) if arm != "real" and wkey in d.index else 0.0
            ),
        }
        gd = study.worst_group_deltas
        gkey = (arm, attribute, "auc", "gap")
        if arm != "real" and gd is not None and gkey in gd.index:
            g = gd.loc[gkey]
            row["gap_ci"] = [float(g["delta_low"]), float(g["delta_high"])]
            row["gap_significant"] = bool(g["significant"])
        rows.append(row)
    return rows


def _answer_sentence(answer: list[dict[str, Any]], attribute: str) -> str:
    """One line per arm: its gap against real's, with the paired CI and whether it counts."""
    parts = []
    for r in answer:
        if r["arm"] == "real" or "gap_ci" not in r:
            continue
        lo, hi = r["gap_ci"]
        verdict = (
            ("narrowed it" if r["gap_delta"] < 0 else "widened it")
            if r.get("gap_significant")
            else "no significant change"
        )
        parts.append(
            f"{r['arm']}: {attribute} AUC gap {r['gap']:.3f} (Δ {r['gap_delta']:+.3f} "
            f"[{lo:+.3f}, {hi:+.3f}], {verdict}; overall AUC {r['auc_delta']:+.3f})"
        )
    real = next(r for r in answer if r["arm"] == "real")
    return (
        f"Answer: the real arm's {attribute} AUC gap is {real['gap']:.3f}; "
        + "; ".join(parts)
        + "."
    )


def _render(
    study: Any,
    report: Any,
    *,
    truth: list[str],
    answer: list[dict[str, Any]],
    flagged: dict[str, bool],
    preset: str,
) -> str:
    """The demo page: the answer beside the truth, then the study, then the real arm's audit."""
    from medgen._internal.report import fmt, html_table, render_html
    from medgen._version import __version__

    attribute = study.settings["attributes"][0]
    groups = sorted({g for r in answer for g in r["auc_by_group"]})
    rows = []
    for r in answer:
        cells = [r["arm"], fmt(r["auc"]), "" if r["arm"] == "real" else f"{r['auc_delta']:+.3f}"]
        cells += [fmt(r["auc_by_group"].get(g, float("nan"))) for g in groups]
        cells += [
            fmt(r["gap"]),
            "" if r["gap_delta"] is None or r["arm"] == "real" else f"{r['gap_delta']:+.3f}",
        ]
        rows.append((cells, "significant" if r["worst_group_significant"] else ""))
    found = [a for a, f in flagged.items() if f]
    note = (
        _answer_sentence(answer, attribute)
        + " Injected by the simulator: "
        + ("; ".join(truth) if truth else "nothing")
        + f". The real arm's audit flags: {', '.join(found) or 'nothing'} "
        "(significant after multiplicity adjustment). "
        "A generator trained on the same images cannot add signal the images lack (a presentation "
        "bias), so no arm should be credited with closing that gap; where positives of a group "
        "are rare in training but look the same (under-representation), good synthetic images "
        "of that cell should shrink it. Bold rows: the arm changed its worst group's AUC "
        "significantly. "
    )
    first = {
        "title": "The answer, beside the injected truth",
        "note": note,
        "table": html_table(
            [
                "arm",
                "overall AUC",
                "Δ AUC vs real",
                *[f"AUC {attribute}={g}" for g in groups],
                f"AUC gap by {attribute}",
                "Δ gap vs real",
            ],
            rows,
        ),
        "images": [],
    }
    audit = report.html_sections()
    for sec in audit:
        sec["title"] = f"Real arm audit: {sec['title']}"
    s = study.settings
    gen = s.get("synthesizer") or {}
    traded = (
        f"The generator ({gen.get('model_id') or 'none'}) trained for the demo's budget, far "
        "shorter than the synthesis benchmark's; its images are weaker than a full run's "
        "(docs/synthesis.md), so read the synthetic arm as a lower bound."
        if gen
        else ""
    )
    return render_html(
        title="medgen demo: does generative augmentation make the classifier better and fairer?",
        subtitle=(
            f"preset {preset!r}; arms {', '.join(study.arms)}; seeds "
            f"{', '.join(map(str, study.seeds))}; {s.get('test_rows')} real test images. {traded}"
        ),
        warnings=[],
        sections=[first, *study.html_sections(), *audit],
        provenance={
            "preset": preset,
            "medgen_version": __version__,
            "study": "study/report.html",
            "timings_s": {k: round(float(v), 2) for k, v in study.timings.items()},
        },
    )


def _auc(preds: pd.DataFrame) -> float:
    from sklearn.metrics import roc_auc_score

    if preds["y_true"].nunique() < 2:
        return float("nan")
    return float(roc_auc_score(preds["y_true"].astype(int), preds["y_score"]))
