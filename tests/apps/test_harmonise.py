"""The harmonisation study on the tiny preset with counterfactual site renders: arms, tables,
written images, the oracle arm, planted facts (a translator that does nothing changes nothing;
one that erases the source images puts the source group at chance), run folder, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from medgen.apps import HarmonisationResult, harmonisation_study
from medgen.apps._study import STUDY_METRICS
from medgen.errors import ConfigError, ManifestError, OutputPathError, RunFolderError

A, B = {"site": "site_A"}, {"site": "site_B"}
TINY = {
    "model": "densenet",
    "model_kwargs": {"init_features": 8, "growth_rate": 8, "block_config": (2, 2)},
    "epochs": 1,
    "batch_size": 16,
    "augment": "none",
    "patience": None,
}
FAST: dict[str, Any] = {"classifier": TINY, "n_boot": 200, "device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medgen.simulate import preset, simulate

    out = tmp_path_factory.mktemp("tiny_cf")
    return simulate(preset("tiny"), out, seed=0, progress=False, counterfactual=("site",))


@pytest.fixture(scope="module")
def table(manifest: Path) -> pd.DataFrame:
    return pd.read_csv(manifest, keep_default_na=False)


def _input_hashes(manifest: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(manifest.parent.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def study(
    manifest: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[HarmonisationResult, Path, Any, dict[str, str]]:
    from medgen.generative import Translator

    translator = Translator("histogram", source=A, target=B).fit(manifest)
    before = _input_hashes(manifest)
    out = tmp_path_factory.mktemp("study") / "run"
    res = harmonisation_study(manifest, translator, out, seeds=(0, 1), **FAST)
    return res, out, translator, before


class Identity:
    """A translator that does nothing."""

    source, target = A, B

    def apply(self, image: Any) -> Any:
        return image


class Eraser:
    """A translator that replaces every source image by one fixed image (same affine)."""

    source, target = A, B

    def __init__(self, fixed: Any) -> None:
        self.fixed = fixed

    def apply(self, image: Any) -> Any:
        from monai.data import MetaTensor

        return MetaTensor(self.fixed.as_tensor().clone(), affine=image.affine.clone())


# ---------------------------------------------------------------------------------------------
# tables


def test_tables_have_the_arms_groups_and_metrics(study: Any, table: pd.DataFrame) -> None:
    res, _, _, _ = study
    assert res.arms == ["raw", "harmonised", "oracle"]
    assert res.by_site.index.names == ["arm", "group"]
    assert set(res.by_site.index) == {
        (arm, g) for arm in res.arms for g in ("all", "site_A", "site_B")
    }
    factual_test = table[(table["split"] == "test") & (table["counterfactual_of"] == "")]
    n = res.by_site["n"]
    assert (n.xs("all", level="group") == len(factual_test)).all()
    assert (n.xs("site_A", level="group") == (factual_test["site"] == "site_A").sum()).all()
    assert res.deltas.index.names == ["arm", "attribute", "group", "metric"]
    assert set(res.deltas.index.get_level_values("arm")) == {"harmonised", "oracle"}
    assert set(res.deltas.index.get_level_values("metric")) == set(STUDY_METRICS)
    assert {"raw", "value", "delta", "delta_low", "delta_high", "p_adjusted"} <= set(res.deltas)
    assert (res.deltas["delta_low"] <= res.deltas["delta"] + 1e-12).all()
    assert res.gaps.index.names == ["arm", "attribute", "metric", "statistic"]
    assert len(res.gaps) == 2 * 2 * 2  # two arms x (auc, tpr) x (worst, gap)
    # the gap rows are the audits' max - min over the groups, averaged over seeds
    auc = res.study.metrics["auc"].xs(("raw", "site"), level=("arm", "attribute"))
    per_seed = auc.groupby(level="seed").agg(lambda v: v.max() - v.min())
    assert len(per_seed) == 2
    assert res.gaps.loc[("oracle", "site", "auc", "gap"), "raw"] == pytest.approx(
        per_seed.mean(), abs=1e-9
    )
    assert f"is {per_seed.mean():.3f}" in res.answer
    assert res.answer.startswith("The raw classifier's AUC gap across site is")
    assert res.answer.endswith(".") and "oracle" in res.answer and "histogram" in res.answer
    # against the truth: one row per source test image with a counterfactual, per method
    tr = res.translation
    assert tr is not None and list(tr.index) == ["identity", "histogram"]
    assert (tr["n"] == (factual_test["site"] == "site_A").sum()).all()
    assert tr.loc["histogram", "psnr"] > tr.loc["identity", "psnr"]  # it moves towards site B


def test_harmonised_images_are_written_marked_derived(study: Any, table: pd.DataFrame) -> None:
    from medgen.io import load

    _, out, translator, _ = study
    written = pd.read_csv(out / "harmonised" / "manifest.csv")
    source = table[(table["site"] == "site_A") & (table["counterfactual_of"] == "")]
    assert sorted(written["image_id"]) == sorted(source["image_id"])  # every split
    assert set(written["split"]) == {"train", "val", "test"}
    for row in written.head(5).itertuples():
        path = Path(row.image_path)
        assert path.resolve().parent == (out / "harmonised" / "images").resolve()
        img = load(path)
        assert "medgen translator histogram" in img.meta["descrip"]
        src = load(row.derived_from)
        assert Path(row.derived_from).resolve().parent == _ROOT[0] / "images"  # the input
        np.testing.assert_allclose(img.numpy(), translator.apply(src).numpy(), atol=1e-5)
        np.testing.assert_allclose(np.asarray(img.affine), np.asarray(src.affine), atol=1e-6)
    # the study's predictions of the harmonised arm read the written files
    preds = pd.read_csv(out / "predictions" / "harmonised-seed0.csv")
    on_a = preds[preds["site"] == "site_A"]
    assert on_a["image_path"].str.contains("harmonised").all()
    assert not preds.loc[preds["site"] == "site_B", "image_path"].str.contains("harmonised").any()


_ROOT: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def _root(manifest: Path) -> None:
    _ROOT[:] = [manifest.parent.resolve()]


def test_inputs_are_never_replaced(study: Any, manifest: Path) -> None:
    _, _, _, before = study
    assert _input_hashes(manifest) == before


def test_oracle_arm_uses_the_counterfactual_truth(study: Any, table: pd.DataFrame) -> None:
    res, out, _, _ = study
    oracle = pd.read_csv(out / "oracle" / "manifest.csv")
    cf = table[table["counterfactual_of"] != ""].set_index("image_id")
    assert (oracle["oracle_of"] == oracle["subject_id"] + "-cf-site_B").all()
    assert (oracle["site"] == "site_A").all()  # audited as what it was
    root = _ROOT[0]
    for row in oracle.itertuples():
        assert Path(row.image_path).resolve() == (root / cf.loc[row.oracle_of, "image_path"])
        assert cf.loc[row.oracle_of, "counterfactual_of"] == row.image_id
    assert res.example is not None and {"source", "harmonised", "truth"} <= set(res.example)


def test_run_folder_report_and_refusals(study: Any, manifest: Path) -> None:
    res, out, translator, _ = study
    marker = json.loads((out / "run_complete.json").read_text())
    assert marker["kind"] == "harmonisation-study"
    assert {"report.html", "study.json", "harmonised/manifest.csv"} <= set(marker["files"])
    html = (out / "report.html").read_text()
    assert "Is the gap caused by appearance" in html and "<script" not in html
    assert "http://" not in html and "https://" not in html
    assert "data:image/png;base64," in html
    assert json.loads((out / "study.json").read_text())["answer"] == res.answer
    assert {f"{t}.csv" for t in res.tables()} == {p.name for p in (out / "tables").iterdir()}
    with pytest.raises(RunFolderError, match="already holds a finished run"):
        harmonisation_study(manifest, translator, out, **FAST)
    with pytest.raises(OutputPathError, match="contains the input"):
        harmonisation_study(manifest, translator, manifest.parent / "images", **FAST)


# ---------------------------------------------------------------------------------------------
# planted facts


def test_a_translator_that_does_nothing_changes_nothing(manifest: Path) -> None:
    res = harmonisation_study(manifest, Identity(), oracle=False, **FAST)
    assert res.arms == ["raw", "harmonised"]
    pd.testing.assert_series_equal(
        res.study.predictions[("raw", 0)]["y_score"],
        res.study.predictions[("harmonised", 0)]["y_score"],
    )
    d = res.deltas.dropna(subset=["delta"])
    assert len(d) and np.allclose(d["delta"], 0.0)
    assert ((d["delta_low"] <= 0) & (d["delta_high"] >= 0)).all()
    assert not res.gaps["significant"].any()
    assert "harmonising with Identity does not change it significantly" in res.answer
    assert "cannot tell appearance from other site differences" in res.answer  # no oracle


def test_a_translator_that_erases_the_source_puts_it_at_chance(manifest: Path) -> None:
    from medgen.cohort import Cohort
    from medgen.io import load

    row = Cohort.from_manifest(manifest).select(split="train", **A).df.iloc[0]
    res = harmonisation_study(manifest, Eraser(load(row["image_path"])), oracle=False, **FAST)
    preds = res.study.predictions[("harmonised", 0)]
    on_a = preds[preds["site"] == "site_A"]
    assert on_a["y_score"].nunique() == 1  # one image, one score
    auc = res.by_site["auc"]
    assert auc[("harmonised", "site_A")] == pytest.approx(0.5)
    raw_a = res.study.predictions[("raw", 0)]
    assert raw_a.loc[raw_a["site"] == "site_A", "y_score"].nunique() > 1


# ---------------------------------------------------------------------------------------------
# bad input and the CLI


def test_bad_input(manifest: Path) -> None:
    class Other(Identity):
        def __init__(self, source: dict[str, str]) -> None:
            self.source = source  # type: ignore[misc]

    with pytest.raises(ManifestError, match="column 'scanner_site'"):
        harmonisation_study(manifest, Other({"scanner_site": "site_A"}), **FAST)
    with pytest.raises(ManifestError, match="no test row belongs to the translator's source"):
        harmonisation_study(manifest, Other({"site": "site_Z"}), **FAST)
    with pytest.raises(ManifestError, match="Did you mean 'site'"):
        harmonisation_study(manifest, Identity(), attribute="sites", **FAST)
    with pytest.raises(ConfigError, match="metric must be one of"):
        harmonisation_study(manifest, Identity(), metric="ppv", **FAST)
    with pytest.raises(ConfigError, match="must have source"):
        harmonisation_study(manifest, object(), **FAST)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="set by the study"):
        harmonisation_study(manifest, Identity(), classifier={"seed": 3}, device="cpu")


def test_cli_study_harmonise(manifest: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medgen.cli import app

    run = tmp_path / "translator"
    r = CliRunner().invoke(
        app,
        ["translate", "train", str(manifest), "--from", "site=site_A", "--to", "site=site_B",
         "-o", str(run), "--model", "histogram", "--no-progress"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    out = tmp_path / "study"
    base = ["study", "harmonise", str(manifest), "--translator", str(run), "-o", str(out)]
    fast = ["--epochs", "1", "--batch-size", "16", "--n-boot", "50", "--no-progress"]
    r = CliRunner().invoke(app, [*base, *fast, "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "report:" in r.output and "The raw classifier's AUC gap across site" in r.output
    assert (out / "run_complete.json").is_file()
    for args, msg in [
        ([*base, "--seeds", "a"], "--seeds must be integers"),
        ([*base, "--attribute", "sitee"], "Did you mean 'site'"),
        ([*base[:3], "--translator", str(tmp_path / "nope"), "-o", str(tmp_path / "o")], "nope"),
    ]:
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error:") and msg in lines[0], r.output


@pytest.mark.slow
def test_the_oracle_finds_the_appearance_gap_of_the_underrep_preset(tmp_path: Path) -> None:
    """demo-underrep, 800 subjects (~4 minutes on one thread): site C is T1-like (lesions dark where sites A and B show them
    bright) and its training positives are scarce, so the raw classifier does worse there.
    Rendering site C's subjects at site A's appearance (the oracle) removes the cause: its AUC
    gap must shrink significantly. Histogram matching cannot reorder tissue intensities, so it
    must get less of that gain than the oracle."""
    from medgen.generative import Translator
    from medgen.simulate import preset, simulate

    cfg = preset("demo-underrep")
    cfg.population.n_subjects = 800
    manifest = simulate(cfg, tmp_path / "cohort", seed=0, progress=False, counterfactual=("site",))
    translator = Translator("histogram", source={"site": "site_C"}, target={"site": "site_A"})
    res = harmonisation_study(
        manifest,
        translator.fit(manifest),
        classifier={"model": "densenet", "epochs": 20, "batch_size": 32, "lr": 3e-3},
        n_boot=500,
        device="cpu",
        progress=False,
    )
    auc = res.by_site["auc"]
    assert auc[("raw", "site_C")] < auc[("raw", "site_A")] - 0.1  # the gap exists
    oracle = res.gaps.loc[("oracle", "site", "auc", "gap")]
    assert oracle["effect"] == "improved" and oracle["delta"] < -0.1
    harmonised = res.gaps.loc[("harmonised", "site", "auc", "gap")]
    assert harmonised["delta"] > oracle["delta"]
    assert "appearance causes at least part of it" in res.answer
