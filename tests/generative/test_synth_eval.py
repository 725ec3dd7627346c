"""Synthesizer evaluation, the memorisation gate and `medgen synth interpolate|evaluate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from medgen.errors import MedgenValueError, MetricWarning
from medgen.generative.synthesis import Synthesizer

TINY = {"image_size": (32, 32), "channels": (8, 16), "latent_channels": 2}
CONFIG = {"epochs": 3, "steps_per_epoch": 15, "batch_size": 8, "device": "cpu", "ema_decay": None}
FAST = {"classifier_epochs": 2, "kid_subsets": 5}

pytestmark = pytest.mark.filterwarnings("ignore::medgen.errors.MetricWarning")


@pytest.fixture(scope="module")
def run(tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("synth-eval") / "run"
    syn = Synthesizer("vae-gan", ("label", "sex"), adv_weight=0.0, **TINY)
    syn.fit(tiny_manifest, run_dir=folder, config=CONFIG, progress=False)
    return folder


@pytest.fixture(scope="module")
def syn(run: Path) -> Synthesizer:
    return Synthesizer.load(run)


@pytest.fixture(scope="module")
def evaluation(syn: Synthesizer, tiny_manifest: Path) -> Any:
    return syn.evaluate(tiny_manifest, seed=0, **FAST)


def test_evaluation_tables(evaluation: Any, tiny_manifest: Path) -> None:
    df = pd.read_csv(tiny_manifest)
    hold = df[df["split"] != "train"]
    q = evaluation.quality
    assert q.index.names == ["attribute", "group"]
    assert list(q.index) == [
        ("overall", "all"), ("label", "0"), ("label", "1"), ("sex", "F"), ("sex", "M"),
    ]  # fmt: skip
    for m in ("fid", "kid", "precision", "recall", "density", "coverage"):
        assert m in q.columns and f"{m}_floor" in q.columns
    # samples are conditioned like the held-out rows: same counts per subgroup
    assert q.loc[("overall", "all"), "n_real"] == q.loc[("overall", "all"), "n_fake"] == len(hold)
    assert q.loc[("sex", "F"), "n_fake"] == (hold["sex"] == "F").sum()
    assert q.loc[("overall", "all"), "fid_floor"] > 0 and np.isfinite(q["fid"]).all()
    assert 0 <= q.loc[("overall", "all"), "coverage_floor"] <= 1
    # the cross-check on the classifier's embedding: the same rows, its own (different) values
    qc = evaluation.quality_classifier
    assert list(qc.index) == list(q.index) and list(qc.columns) == list(q.columns)
    assert (qc["n_fake"] == q["n_fake"]).all() and qc.loc[("overall", "all"), "fid_floor"] > 0
    assert not np.allclose(qc["fid"], q["fid"])

    f = evaluation.fidelity
    assert f.index.names == ["condition", "value"]
    assert list(f.index) == [
        ("label", "overall"), ("label", "0"), ("label", "1"),
        ("sex", "overall"), ("sex", "F"), ("sex", "M"),
    ]  # fmt: skip
    assert list(f.columns) == [
        "n", "accuracy", "auc", "n_real", "accuracy_real", "auc_real",
        "accuracy_reconstruction", "auc_reconstruction",
    ]  # fmt: skip
    assert f.loc[("label", "overall"), "n"] == len(hold)
    for col in ("auc", "auc_real", "auc_reconstruction"):
        assert ((f[col] >= 0) & (f[col] <= 1)).all()

    t = evaluation.tstr
    assert t.index.name == "train_on"
    assert list(t.index) == ["real", "synthetic", "reconstructions"]
    assert list(t.columns) == ["n_train", "n_test", "auc", "accuracy"]
    assert t["n_test"].tolist() == [(df["split"] == "test").sum()] * 3
    assert t["n_train"].tolist() == [(df["split"] == "train").sum()] * 3
    assert ((t["auc"] >= 0) & (t["auc"] <= 1)).all()

    nc = evaluation.near_copies
    assert nc.index.names == ["attribute", "group"] and nc.loc[
        ("overall", "all"), "n_samples"
    ] == len(hold)
    assert evaluation.memorisation.index.name == "sample"
    p = evaluation.provenance
    assert p["weights_sha256"] in p["feature_extractor"]
    assert len(p["classifier_real_sha256"]) == 64 and len(p["classifier_synthetic_sha256"]) == 64
    assert len(p["classifier_reconstruction_sha256"]) == 64


def test_evaluation_is_deterministic_and_renders(
    evaluation: Any, syn: Synthesizer, tiny_manifest: Path, tmp_path: Path
) -> None:
    again = syn.evaluate(tiny_manifest, seed=0, figures=False, **FAST)
    for name, table in evaluation.tables().items():
        pd.testing.assert_frame_equal(table, again.tables()[name], obj=name)
    html = evaluation.to_html(tmp_path / "report.html")
    assert (tmp_path / "report.html").read_text(encoding="utf-8") == html
    assert html.count("data:image/png;base64,") == 4  # grids for label and sex, strip, histogram
    assert "Conditioning fidelity" in evaluation._repr_html_()
    paths = evaluation.to_csv(tmp_path / "csv")
    assert sorted(p.name for p in paths) == sorted(f"{n}.csv" for n in evaluation.TABLES)


def _train_image(tiny_manifest: Path, i: int = 0) -> tuple[torch.Tensor, str]:
    from medgen.io import load

    df = pd.read_csv(tiny_manifest)
    row = df[df["split"] == "train"].iloc[i]
    return load(tiny_manifest.parent / row["image_path"]).as_tensor(), str(row["image_id"])


def _with_copy(syn: Synthesizer, tiny_manifest: Path) -> tuple[Any, str]:
    samples = syn.sample(5, {"label": 1}, seed=3)
    img, iid = _train_image(tiny_manifest, 4)
    samples.images[2] = img  # an exact copy of a training image (in its own units)
    return samples, iid


def test_gate_flags_a_planted_copy_and_write_skips_it(
    syn: Synthesizer, tiny_manifest: Path, tmp_path: Path
) -> None:
    samples, iid = _with_copy(syn, tiny_manifest)
    memo = syn.memorisation_gate(tiny_manifest).check(syn, samples)
    assert memo.index.name == "sample"
    assert bool(memo.loc[2, "near_copy"]) and memo.loc[2, "nearest_train_id"] == iid
    assert memo.loc[2, "pixel_distance"] < 1e-6 and memo.loc[2, "feature_distance"] < 1e-4
    assert int(memo["near_copy"].sum()) == 1
    # write checks against the training manifest by default and drops the copy
    manifest = syn.write(samples, tmp_path / "out")
    df = pd.read_csv(manifest)
    assert len(df) == 4 and not df["image_id"].str.endswith("-00002").any()
    assert df["image_id"].str.endswith("-00004").any()  # ids of the others do not move
    assert not df["near_copy"].any()
    info = json.loads((tmp_path / "out" / "synthesis.json").read_text())
    assert info["n_requested"] == 5 and info["n_written"] == 4 and info["n_dropped"] == 1
    assert info["dropped"][0].endswith("-00002") and info["memorisation_gate"]["checked"]
    memo_csv = pd.read_csv(tmp_path / "out" / "memorisation.csv")
    assert memo_csv["written"].tolist() == [True, True, False, True, True]
    # allow_copies=True writes it, and says so
    manifest = syn.write(samples, tmp_path / "all", allow_copies=True)
    df = pd.read_csv(manifest)
    assert len(df) == 5 and df["near_copy"].tolist() == [False, False, True, False, False]
    info = json.loads((tmp_path / "all" / "synthesis.json").read_text())
    assert info["memorisation_gate"]["allow_copies"] is True and info["n_dropped"] == 0
    assert info["near_copies_written"][0].endswith("-00002")


def test_reconstructions_are_of_their_own_images(syn: Synthesizer, tiny_manifest: Path) -> None:
    from medgen.generative._synth_eval import load_units, reconstruct_units

    df = pd.read_csv(tiny_manifest)
    hold = df[df["split"] != "train"].reset_index(drop=True)
    hold = hold.assign(image_path=[str(tiny_manifest.parent / p) for p in hold["image_path"]])
    units, _ = load_units(syn, hold, "test")
    rec = reconstruct_units(syn, units, hold[list(syn.conditions)], batch_size=5)
    assert rec.shape == units.shape and torch.isfinite(rec).all()
    # each reconstruction is nearer its own image than the other images are, on average
    d = torch.cdist(rec.flatten(1), units.flatten(1))
    assert float(d.diagonal().mean()) < float(d.mean())


def test_sample_with_reference_and_select(syn: Synthesizer, tiny_manifest: Path) -> None:
    checked = syn.sample(3, {"sex": "F"}, seed=1, reference=tiny_manifest)
    assert checked.memorisation is not None and len(checked.memorisation) == 3
    kept = checked.select([True, False, True])
    assert kept.indices.tolist() == [0, 2] and len(kept.memorisation) == 2
    assert torch.equal(kept.images[1], checked.images[2])


def test_gate_needs_a_reference(syn: Synthesizer, tiny_manifest: Path, tmp_path: Path) -> None:
    from medgen.generative import load

    other = load(syn.save(tmp_path / "m"))
    assert isinstance(other, Synthesizer)
    other.training_manifest = str(tmp_path / "gone.csv")
    samples = other.sample(2, seed=0)
    with pytest.raises(MedgenValueError, match=r"pass reference= the training cohort .* or "):
        other.write(samples, tmp_path / "o1")
    other.write(samples, tmp_path / "o2", reference=tiny_manifest)
    other.write(samples, tmp_path / "o3", allow_copies=True)  # unchecked, and says so
    info = json.loads((tmp_path / "o3" / "synthesis.json").read_text())
    assert info["memorisation_gate"] == {"checked": False, "allow_copies": True}
    # a cohort whose train split is not the training data is refused
    df = pd.read_csv(tiny_manifest)
    df["image_path"] = [str(tiny_manifest.parent / p) for p in df["image_path"]]
    df["mask_path"] = [str(tiny_manifest.parent / p) for p in df["mask_path"]]
    df.loc[df.index[:3], "split"] = "val"
    df.loc[df["split"] == "val", "split"] = "train"
    changed = tmp_path / "changed.csv"
    df.to_csv(changed, index=False)
    with pytest.raises(MedgenValueError, match="is not the data this model was trained on"):
        syn.memorisation_gate(changed)


def test_evaluate_bad_input(syn: Synthesizer, tiny_manifest: Path) -> None:
    with pytest.raises(MedgenValueError, match=r"evaluate: n must be a positive integer, not 0"):
        syn.evaluate(tiny_manifest, n=0)
    with pytest.raises(MedgenValueError, match=r"\['site'\] are not conditions of this model"):
        syn.evaluate(tiny_manifest, by=["site"])
    with pytest.raises(MedgenValueError, match=r"target 'site' is not a condition"):
        syn.evaluate(tiny_manifest, target="site")
    with pytest.warns(MetricWarning):
        ev = syn.evaluate(tiny_manifest, n=10, by="sex", target=None, figures=False, **FAST)
    assert list(ev.tstr.index) == [] and ev.quality.loc[("overall", "all"), "n_fake"] == 10


# ---------------------------------------------------------------------------------- the CLI
def _app() -> Any:
    import typer

    from medgen._internal.cli import MedgenGroup
    from medgen.generative._synth_cli import register

    app = typer.Typer(cls=MedgenGroup, add_completion=False, pretty_exceptions_enable=False)
    register(app)
    return app


def test_cli_interpolate(run: Path, tiny_manifest: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medgen.io import load

    df = pd.read_csv(tiny_manifest)
    a, b = (str(tiny_manifest.parent / p) for p in df["image_path"][:2])
    runner = CliRunner()
    out = tmp_path / "interp"
    args = ["synth", "interpolate", str(run), a, b, "--steps", "4", "-o", str(out)]
    res = runner.invoke(_app(), [*args, "--where", "label=1,sex=F"])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == [
        "interp-000.nii.gz", "interp-001.nii.gz", "interp-002.nii.gz", "interp-003.nii.gz",
        "interpolation.csv", "interpolation.png", "run_complete.json",
    ]  # fmt: skip
    img = load(out / "interp-000.nii.gz")
    assert img.meta["synthetic"] is True and tuple(img.shape) == (1, 32, 32)
    res = runner.invoke(_app(), args)  # a finished output is not replaced without --overwrite
    assert res.exit_code == 2 and "already holds a finished run" in res.output
    assert runner.invoke(_app(), [*args, "--overwrite"]).exit_code == 0
    res = runner.invoke(_app(), [*args[:-1], str(Path(a).parent / "x"), "--where", "sx=1"])
    assert res.exit_code == 2
    assert res.output.count("\n") == 1 and "['sx'] are not conditions of this model" in res.output
    res = runner.invoke(_app(), [*args[:5], "--steps", "1", "-o", str(tmp_path / "i2")])
    assert res.exit_code == 2 and "Error: --steps must be an integer >= 2, not 1." in res.output


def test_cli_evaluate(run: Path, tiny_manifest: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medgen.generative import Denoiser

    runner = CliRunner()
    out = tmp_path / "eval"
    base = ["synth", "evaluate", str(run), str(tiny_manifest)]
    fast = ["--classifier-epochs", "2", "--kid-subsets", "5"]
    res = runner.invoke(_app(), [*base, "-o", str(out), *fast])
    assert res.exit_code == 0, res.output
    for name in ("quality", "fidelity", "tstr", "near_copies", "memorisation"):
        assert (out / f"{name}.csv").is_file()
    quality = pd.read_csv(out / "quality.csv")
    assert list(quality.columns[:2]) == ["attribute", "group"]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == 4
    assert (out / "run_complete.json").is_file()
    # bad input: one line each, exit 2
    cases = [
        ([*base, "-o", str(tmp_path / "e1"), "-n", "0"], "-n must be a positive number"),
        ([*base, "-o", str(tiny_manifest.parent)], "contains the input"),
        ([*base, "-o", str(run / "x")], "lies inside the input"),
        ([*base, "-o", str(tmp_path / "e2"), "--by", "site"], "are not conditions"),
    ]
    denoise = Denoiser(channels=(4, 8)).save(tmp_path / "denoise")
    cases.append(
        (
            ["synth", "evaluate", str(denoise), str(tiny_manifest), "-o", str(tmp_path / "e3")],
            "holds a 'denoise' model, not a 'synthesizer' model",
        )
    )
    for args, message in cases:
        res = runner.invoke(_app(), args)
        assert res.exit_code == 2, (args, res.output)
        assert res.output.startswith("Error: ") and res.output.count("\n") == 1, res.output
        assert message in res.output, res.output
