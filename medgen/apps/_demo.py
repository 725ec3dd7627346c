"""medgen's main job: simulate a cohort with a known bias, train, predict, audit, report.

``run_demo(out_dir)`` (CLI: ``medgen demo -o OUT``) chains the library calls with nothing of its
own: :func:`medgen.simulate.simulate` → :meth:`medgen.Cohort.from_manifest` →
:func:`medgen.classify.train` → :meth:`Classifier.predict` on the test split →
:func:`medgen.audit.audit` by every categorical attribute → ``OUT/report.html`` and tables.

The demo preset injects a *presentation* bias on ``sex = F`` (subtler lesions in women) and
carries ``handedness`` as a control with no effect; a correct pipeline flags the first and not the
second. ``OUT/demo.json`` records which attributes were injected and which were flagged.
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
#: No wall-time budget by default: a budget makes the trained model, and so the report's
#: conclusions, depend on how busy the machine is (a loaded run stopped after 6 of 40 epochs and
#: missed the injected bias). Epoch cap + early stopping give the same result for the same seed.
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "demo": {
        # a small MONAI DenseNet (init_features=16, growth_rate=8, blocks (2, 2, 2)): ~1.5 s per
        # epoch of 1,400 64x64 images on 2 cores, so 40 epochs fit where DenseNet121 manages 2-6,
        # and it reaches a higher test AUC within the 10-minute budget (docs/classify.md)
        "model": "densenet",
        "epochs": 40,
        "batch_size": 32,
        "lr": 3e-3,
        "patience": 8,
        "time_budget_s": None,
        "n_boot": 1000,
    },
    "tiny": {
        "model": "densenet",
        "epochs": 3,
        "batch_size": 16,
        "lr": 2e-3,
        "patience": None,
        "time_budget_s": None,
        "n_boot": 100,
    },
}


@dataclass
class DemoResult:
    """What :func:`run_demo` wrote and found.

    Attributes:
        out_dir: the output folder.
        report_path: ``out_dir / "report.html"``.
        predictions: the test-split prediction table.
        report: the :class:`medgen.audit.AuditReport`.
        classifier: the trained classifier (also saved under ``out_dir / "model"``).
        injected: attributes the simulator biased (ground truth from ``simulation.json``).
        flagged: attribute → whether the audit found a disparity for it that is significant
            after multiplicity adjustment (Holm by default).
        timings: seconds per stage.
    """

    out_dir: Path
    report_path: Path
    predictions: pd.DataFrame
    report: Any
    classifier: Classifier
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


#: what the demo writes into its folder (and replaces on a rerun)
DEMO_OUTPUTS = (
    "cohort/",
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
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> DemoResult:
    """Run the end-to-end demo and write the report.

    Args:
        out_dir: output folder (created): ``cohort/`` (simulated images + manifest), ``model/``
            (saved classifier), ``predictions.csv``, ``audit_by_group.csv``,
            ``audit_disparities.csv``, ``audit_summary.csv``, ``report.html``, ``demo.json``
            (:data:`DEMO_OUTPUTS`). A rerun replaces them; a folder holding other files is
            refused (nothing of a user's is overwritten); one demo per folder at a time.
        preset: simulator preset (``"demo"``: ~2,000 64x64 slices, ``"tiny"``: 80 32x32 slices).
        model: override the network (default per preset in :data:`DEMO_SETTINGS`).
        epochs: override the epoch cap.
        time_budget_s: cap training wall time (seconds); off by default, because the result
            then depends on machine load.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        seed: seeds the simulation, training and the audit's bootstrap.
        progress: show progress bars.

    Returns:
        A :class:`DemoResult`.
    """
    settings = dict(DEMO_SETTINGS.get(preset, DEMO_SETTINGS["demo"]))
    if model is not None:
        settings["model"] = model
    if epochs is not None:
        settings["epochs"] = epochs
    if time_budget_s is not None:
        settings["time_budget_s"] = time_budget_s
    if int(settings["epochs"]) < 1:
        raise ConfigError(f"epochs must be >= 1, not {settings['epochs']}")
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
    from medgen._internal.files import write_table, write_text_atomic
    from medgen._internal.provenance import package_versions
    from medgen.audit import audit
    from medgen.classify import train
    from medgen.cohort import Cohort
    from medgen.simulate import preset as sim_preset
    from medgen.simulate import simulate

    timings: dict[str, float] = {}

    t = time.perf_counter()
    log.info("[1/4] simulating the %r cohort into %s", preset, out / "cohort")
    # the demo owns OUT/cohort: a rerun replaces the previous simulation there (and only that)
    manifest = simulate(
        sim_preset(preset), out / "cohort", seed=seed, progress=progress, overwrite=True
    )
    cohort = Cohort.from_manifest(manifest)
    timings["simulate"] = time.perf_counter() - t

    t = time.perf_counter()
    log.info("[2/4] training %s on %d images", settings["model"], cohort.splits.get("train", 0))
    clf = train(
        cohort,
        target="label",
        model=settings["model"],
        epochs=int(settings["epochs"]),
        batch_size=int(settings["batch_size"]),
        lr=float(settings["lr"]),
        patience=settings["patience"],
        time_budget_s=settings["time_budget_s"],
        device=device,
        out_dir=out / "model",
        overwrite=True,  # the demo owns OUT/model, as it owns OUT/cohort
        seed=seed,
        progress=progress,
    )
    timings["train"] = time.perf_counter() - t

    t = time.perf_counter()
    log.info("[3/4] predicting the test split")
    preds = clf.predict(cohort, split="test", progress=progress)
    write_table(preds, out / "predictions.csv")
    timings["predict"] = time.perf_counter() - t

    t = time.perf_counter()
    injected, truth_columns = _ground_truth(out / "cohort")
    sensitive = _categorical_attributes(preds, list(cohort.attributes), exclude=truth_columns)
    log.info("[4/4] auditing by %s", ", ".join(sensitive))
    report = audit(
        preds,
        y_true="y_true",
        y_score="y_score",
        sensitive=sensitive,
        intersections=False,
        n_boot=int(settings["n_boot"]),
        seed=seed,
        progress=progress,
    )
    report_path = out / "report.html"
    report.to_html(report_path)
    write_table(report.by_group.reset_index(), out / "audit_by_group.csv")
    write_table(report.disparities.reset_index(), out / "audit_disparities.csv")
    write_table(report.summary.reset_index(), out / "audit_summary.csv")
    timings["audit"] = time.perf_counter() - t

    disp = report.disparities.reset_index()
    # an attribute is flagged when one of its disparities is significant after the audit's
    # multiplicity adjustment; ratio-only flags (outside the tolerance band, not significant)
    # are recorded too but are noise-prone in small groups (e.g. 90 left-handers)
    flagged = {
        a: bool(disp.loc[disp["attribute"] == a, "significant"].astype(bool).any())
        for a in sensitive
    }
    ratio_only = {a: bool(disp.loc[disp["attribute"] == a, "flagged"].any()) for a in sensitive}
    summary = {
        "preset": preset,
        "seed": seed,
        "settings": settings,
        "sensitive": sensitive,
        "injected_bias_attributes": injected,
        "flagged_attributes": [a for a, f in flagged.items() if f],
        "ratio_outside_tolerance": [a for a, f in ratio_only.items() if f],
        "test_auc": float(_auc(preds)),
        "classifier_metrics": clf.metrics,
        "timings_s": timings,
        "manifest_sha256": clf.provenance.get("manifest_sha256"),
        "versions": package_versions(),
    }
    write_text_atomic(out / "demo.json", json.dumps(summary, indent=2, default=str))
    log.info(
        "done in %.0f s: test AUC %.3f; injected bias on %s; flagged: %s; report %s",
        sum(timings.values()),
        summary["test_auc"],
        injected or "-",
        summary["flagged_attributes"] or "-",
        report_path,
    )
    return DemoResult(out, report_path, preds, report, clf, injected, flagged, timings)


def _auc(preds: pd.DataFrame) -> float:
    from sklearn.metrics import roc_auc_score

    if preds["y_true"].nunique() < 2:
        return float("nan")
    return float(roc_auc_score(preds["y_true"].astype(int), preds["y_score"]))
