"""`medgen demo` end to end on the tiny preset: simulate, train a synthesizer, run the augmentation
study (real, reweight, synthetic-balanced), audit every arm, one report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medgen.cli import app


def test_demo_runs_end_to_end_on_tiny(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    r = CliRunner().invoke(app, ["demo", "-o", str(out), "--preset", "tiny", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "report:" in r.output
    html = (out / "report.html").read_text()
    assert "<html" in html.lower() and "sex" in html and "handedness" in html
    preds = pd.read_csv(out / "predictions.csv")
    manifest = pd.read_csv(out / "cohort" / "manifest.csv")
    assert len(preds) == int((manifest["split"] == "test").sum())
    assert {"y_true", "y_score", "y_pred", "sex", "site"} <= set(preds.columns)
    summary = json.loads((out / "demo.json").read_text())
    assert summary["injected_bias_attributes"] == ["sex"]
    # every categorical attribute is audited; simulator ground truth (presentation, marker...) is not
    assert {"sex", "age_group", "site", "handedness"} <= set(summary["sensitive"])
    assert not {"presentation", "marker", "label_true"} & set(summary["sensitive"])
    by_group = pd.read_csv(out / "audit_by_group.csv")
    assert set(by_group["attribute"]) == set(summary["sensitive"])
    # the study: every arm trained, audited and compared; the report answers first
    assert [a["arm"] for a in summary["arms"]] == ["real", "reweight", "synthetic-balanced"]
    assert (out / "study" / "models" / "real-seed0" / "model.safetensors").is_file()
    for arm in ("real", "reweight", "synthetic-balanced"):
        assert (out / "study" / "predictions" / f"{arm}-seed0.csv").is_file()
        assert f"Arm: {arm}" in html
    assert (
        html.index("The answer, beside the injected truth")
        < html.index("Does augmentation help, and whom?")
        < html.index("Real arm audit")
    )
    assert "presentation on sex=F" in html and "Answer: the real arm" in html
    # the synthetic images filled the label x sex cells and are marked synthetic
    generated = pd.read_csv(out / "study" / "synthetic" / "fill" / "manifest.csv")
    assert (generated["source"] == "synthetic").all() and len(generated) > 0
    gen = summary["synthesizer"]["generated"]["pools"]["fill"]
    assert gen["written"] == len(generated) and gen["requested"] >= gen["written"]
    train = manifest[manifest["split"] == "train"]
    real_cells = train.groupby(["label", "sex"]).size()
    counts = pd.read_csv(out / "study" / "tables" / "training_counts.csv")
    bal = counts[counts["arm"] == "synthetic-balanced"]
    assert (bal["n_real"].to_numpy() == real_cells.to_numpy()).all()
    assert (bal["n"] <= real_cells.max()).all() and (bal["n_extra"] > 0).any()
    assert summary["timings_s"]["study"] > 0 and summary["timings_s"]["synthesizer"] > 0
    # rerunning into the same folder replaces the run (a researcher's usual second try)
    again = [
        "demo",
        "-o",
        str(out),
        "--preset",
        "tiny",
        "--no-progress",
        "--epochs",
        "1",
        "--seed",
        "1",
    ]
    r = CliRunner().invoke(app, again)
    assert r.exit_code == 0, r.output
    rerun = json.loads((out / "demo.json").read_text())
    assert (
        rerun["seed"] == 1
        and json.loads((out / "cohort" / "simulation.json").read_text())["seed"] == 1
    )


@pytest.mark.slow
def test_demo_preset_flags_the_injected_bias_not_the_control(tmp_path: Path) -> None:
    """The full main job (under 10 minutes on 2 cores): sex is flagged, handedness is not, and no
    arm is credited with closing the presentation gap (the generator cannot add that signal)."""
    from medgen.apps import run_demo

    res = run_demo(tmp_path / "demo", preset="demo", progress=False)
    assert res.injected == ["sex"]
    assert res.flagged["sex"]
    assert not res.flagged["handedness"]
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert summary["test_auc"] >= 0.85
    auc = res.report.by_group["auc"]
    assert auc.loc[("sex", "F")] < auc.loc[("sex", "M")]
    d = res.study.deltas
    for arm in ("reweight", "synthetic-balanced"):
        row = d.loc[(arm, "sex", "F", "auc")]
        assert not (row["significant"] and row["delta"] > 0), f"{arm} credited on sex=F"


def test_demo_never_writes_into_a_folder_of_someone_elses_files(tmp_path: Path) -> None:
    from medgen.apps import run_demo
    from medgen.errors import RunFolderError

    (tmp_path / "predictions.csv").write_text("the user's own predictions\n")
    (tmp_path / "notes.txt").write_text("mine\n")
    with pytest.raises(RunFolderError, match=r"not part of a medgen run \(notes.txt\)"):
        run_demo(tmp_path, preset="tiny", progress=False)
    assert (tmp_path / "predictions.csv").read_text() == "the user's own predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "predictions.csv"]
