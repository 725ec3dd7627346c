"""``medgen translate train|apply`` on the tiny preset with counterfactual site renders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medgen.cli import app
from medgen.errors import MedgenValueError


@pytest.fixture(scope="module")
def manifest(simulate_counterfactual: Any) -> Path:
    return simulate_counterfactual("tiny_cf", 24, ("site",))


def _train(manifest: Path, out: Path, *extra: str) -> object:
    args = ["translate", "train", str(manifest), "-o", str(out), "--no-progress", *extra]
    return CliRunner().invoke(app, args)


def test_train_writes_a_loadable_run(manifest: Path, tmp_path: Path) -> None:
    from medgen.generative import Translator, load
    from medgen.io import load as load_image

    run = tmp_path / "run"
    res = _train(manifest, run, "--from", "site=site_A", "--to", "site=site_B", "--model", "nyul")
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    assert {"config.json", "model.safetensors", "run_complete.json"} <= {
        p.name for p in run.iterdir()
    }
    t = load(run)
    assert isinstance(t, Translator) and t.model == "nyul" and t.fitted
    assert t.source == {"site": "site_A"} and t.target == {"site": "site_B"}
    # the same translator as the library fits on the same cohort
    ref = Translator("nyul", source={"site": "site_A"}, target={"site": "site_B"}).fit(manifest)
    np.testing.assert_allclose(t._buffer(), ref._buffer())
    df = pd.read_csv(manifest, keep_default_na=False)
    row = df[(df["site"] == "site_A") & (df["counterfactual_of"] == "")].iloc[0]
    img = load_image(manifest.parent / row["image_path"])
    np.testing.assert_allclose(t.apply(img).numpy(), ref.apply(img).numpy())
    # a second train into the finished run is refused before training; --overwrite replaces it
    again = _train(manifest, run, "--from", "site=site_A", "--to", "site=site_B")
    assert again.exit_code == 2  # type: ignore[attr-defined]
    assert "already holds files" in again.output and "--overwrite" in again.output  # type: ignore[attr-defined]
    res = _train(
        manifest, run, "--from", "site=site_B", "--to", "site=site_A", "--model", "histogram",
        "--overwrite",
    )  # fmt: skip
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    assert load(run).source == {"site": "site_B"}


def test_selector_values_are_typed_like_the_column(manifest: Path, tmp_path: Path) -> None:
    from medgen.generative import load

    run = tmp_path / "lab"
    res = _train(manifest, run, "--from", "label=1", "--to", "label=0", "--model", "histogram")
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    t = load(run)
    assert t.source == {"label": 1} and type(t.source["label"]) is int


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        ("sit=site_A", "site=site_B", "no column 'sit'. Did you mean 'site'?"),
        ("site=site_Q", "site=site_B", "--from site=site_Q matches no rows: column 'site' holds"),
        ("site=site_B", "site=site_B", "--from and --to select the same group (site=site_B)"),
        ("source=simulated", "site=site_B", "matches every training-split row"),
        ("site", "site=site_B", "--from must be COLUMN=VALUE pairs"),
        ("site=site_A,site=site_B", "site=site_B", "gives column 'site' twice"),
        ("label=1", "site=site_B", "both match"),
    ],
)
def test_bad_selectors_are_one_line_errors(
    manifest: Path, tmp_path: Path, source: str, target: str, message: str
) -> None:
    out = tmp_path / "run"
    res = _train(manifest, out, "--from", source, "--to", target, "--model", "histogram")
    assert res.exit_code == 2, res.output  # type: ignore[attr-defined]
    lines = [ln for ln in res.output.splitlines() if ln.strip()]  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output  # type: ignore[attr-defined]
    assert message in lines[0]
    assert not out.exists()  # nothing written


def test_unknown_model_is_the_translators_error(manifest: Path, tmp_path: Path) -> None:
    res = _train(
        manifest, tmp_path / "r", "--from", "site=site_A", "--to", "site=site_B", "--model",
        "cyclegn",
    )  # fmt: skip
    assert res.exit_code == 2
    assert "Translator: model must be one of" in res.output and "cyclegan" in res.output  # type: ignore[attr-defined]


def test_parse_selector_errors_are_medgen_errors() -> None:
    from medgen.generative._translate_cli import parse_selector

    df = pd.DataFrame({"site": ["site_A", "site_B"], "severity": [0.0, 2.0]})
    assert parse_selector("severity=2", df, flag="--to") == {"severity": 2.0}
    with pytest.raises(MedgenValueError, match=r"column 'severity' holds 0\.0, 2\.0"):
        parse_selector("severity=1", df, flag="--to")


def test_apply_translates_a_manifest(manifest: Path, tmp_path: Path) -> None:
    from medgen.generative import load
    from medgen.io import load as load_image

    run = tmp_path / "run"
    assert _train(manifest, run, "--from", "site=site_A", "--to", "site=site_B", "--model",
                  "histogram").exit_code == 0  # type: ignore[attr-defined]  # fmt: skip
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app, ["translate", "apply", str(run), str(manifest), "-o", str(out), "--no-progress"]
    )
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    table = pd.read_csv(out / "manifest.csv")
    n = len(pd.read_csv(manifest))
    assert len(table) == n
    t = load(run)
    first = table.iloc[0]
    src = load_image(first["derived_from"])
    out_img = load_image(first["image_path"])
    np.testing.assert_allclose(out_img.numpy(), t.apply(src).numpy(), atol=1e-4)
    np.testing.assert_allclose(np.asarray(out_img.affine), np.asarray(src.affine), atol=1e-6)
    assert "medgen translator histogram" in out_img.meta["descrip"]


@pytest.mark.parametrize("model", ["cyclegan", "pix2pix"])
def test_learned_models_train_with_the_given_options(
    manifest: Path, tmp_path: Path, model: str
) -> None:
    from medgen.generative import load

    run = tmp_path / model
    tiny = ["--channels", "4,8", "--patch-size", "16", "--epochs", "2", "--steps-per-epoch", "2",
            "--batch-size", "2", "--device", "cpu", "--seed", "3"]  # fmt: skip
    res = _train(manifest, run, "--from", "site=site_A", "--to", "site=site_B", "--model", model,
                 *tiny)  # fmt: skip
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    t = load(run)
    assert t.model == model and t.steps_trained == 4 and t.seed == 3
    cfg = t.cyclegan_config() if model == "cyclegan" else t.pix2pix_config()
    assert tuple(cfg.channels) == (4, 8) and cfg.patch_size == 16


def test_options_a_baseline_cannot_take(manifest: Path, tmp_path: Path) -> None:
    sel = ["--from", "site=site_A", "--to", "site=site_B", "--model", "nyul"]
    res = _train(manifest, tmp_path / "a", *sel, "--channels", "4,8")
    assert res.exit_code == 2 and "--model nyul has none" in res.output  # type: ignore[attr-defined]
    res = _train(manifest, tmp_path / "b", *sel, "--resume")
    assert res.exit_code == 2 and "--resume" in res.output  # type: ignore[attr-defined]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
