"""Conditional synthesis (:mod:`medgen.generative.synthesis`): tiny models on the tiny preset."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from medgen.errors import ConfigError, MedgenRuntimeError, MedgenValueError, OutputPathError
from medgen.generative.synthesis import Synthesizer

TINY = {
    "image_size": (32, 32),
    "channels": (8, 16),
    "latent_channels": 2,
    "unet_channels": (8, 16),
    "num_train_timesteps": 100,
    "num_inference_steps": 5,
}
CONFIG = {"epochs": 3, "steps_per_epoch": 15, "batch_size": 8, "device": "cpu", "ema_decay": None}


def _train_rows(manifest: Path) -> pd.DataFrame:
    df = pd.read_csv(manifest)
    return df[df["split"] == "train"].reset_index(drop=True)


@pytest.fixture(scope="module", params=["vae-gan", "ldm"])
def trained(request: pytest.FixtureRequest, tiny_manifest: Path) -> Synthesizer:
    if request.param == "vae-gan":
        syn = Synthesizer("vae-gan", ("label", "sex"), adv_weight=0.0, **TINY)
        return syn.fit(tiny_manifest, config=CONFIG, progress=False)
    # 30 autoencoder steps (two epochs), then 45 diffusion steps
    syn = Synthesizer("ldm", ("label", "sex"), autoencoder_steps=30, **TINY)
    return syn.fit(tiny_manifest, config={**CONFIG, "epochs": 5}, progress=False)


@pytest.fixture(scope="module")
def vae_run(tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VAE-GAN (with its PatchGAN) trained into a run folder."""
    run = tmp_path_factory.mktemp("synth") / "run"
    syn = Synthesizer("vae-gan", ("label", "sex"), adv_weight=0.05, **TINY)
    cfg = {**CONFIG, "epochs": 2}
    syn.fit(tiny_manifest, run_dir=run, config=cfg, progress=False)
    return run


def test_loss_decreases(trained: Synthesizer) -> None:
    key = "l1" if trained.model == "vae-gan" else "loss"
    values = [h[key] for h in trained.history if not np.isnan(h[key])]
    assert len(values) >= 2 and values[-1] < values[0]
    if trained.model == "ldm":  # stage 1 (the autoencoder) came first, and improved too
        l1 = [h["l1"] for h in trained.history if not np.isnan(h["l1"])]
        assert l1[-1] < l1[0]


def test_same_seed_same_samples(trained: Synthesizer) -> None:
    a = trained.sample(4, {"label": 1}, seed=7)
    b = trained.sample(4, {"label": 1}, seed=7)
    c = trained.sample(4, {"label": 1}, seed=8)
    assert torch.equal(a.images, b.images)
    pd.testing.assert_frame_equal(a.conditions, b.conditions)
    assert not torch.equal(a.images, c.images)


def test_sample_shape_and_conditions(trained: Synthesizer) -> None:
    out = trained.sample(5, {"label": 1, "sex": "F"}, seed=0)
    assert tuple(out.images.shape) == (5, 1, 32, 32) and out.images.dtype == torch.float32
    assert torch.isfinite(out.images).all()
    assert list(out.conditions.columns) == ["label", "sex"]
    assert out.conditions.index.name == "sample"
    assert (
        out.conditions["label"].tolist() == [1] * 5 and out.conditions["sex"].tolist() == ["F"] * 5
    )
    # unspecified conditions come from the training combinations; a DataFrame gives one per row
    drawn = trained.sample(40, {"label": 0}, seed=1).conditions
    assert set(drawn["sex"]) == {"F", "M"} and set(drawn["label"]) == {0}
    rows = pd.DataFrame({"label": [0, 1, 1], "sex": ["M", "F", "M"]})
    per_row = trained.sample(None, rows, seed=0)
    assert len(per_row) == 3
    pd.testing.assert_frame_equal(per_row.conditions.reset_index(drop=True), rows)


def test_interpolation_endpoints_reconstruct(trained: Synthesizer, tiny_manifest: Path) -> None:
    from medgen.io import load

    rows = _train_rows(tiny_manifest)
    root = tiny_manifest.parent
    a, b = (load(root / rows["image_path"][i]) for i in (0, 1))
    conds = rows.loc[[0, 1], ["label", "sex"]]
    path = trained.interpolate(a, b, 5, conditions=conds)
    assert tuple(path.shape) == (5, 1, 32, 32)
    random = trained.sample(8, seed=3).images

    def err(x: torch.Tensor, ref: torch.Tensor) -> float:
        return float((x - ref.as_tensor()[None]).abs().mean())

    for end, ref in ((path[0], a), (path[-1], b)):
        assert err(end[None], ref) < min(err(r[None], ref) for r in random)
    # latents interpolate too; the ends of a latent path decode exactly those latents
    za, zb = trained.encode([a, b])
    lat = trained.interpolate(za, zb, 3, conditions=conds)
    dec = trained.decode(torch.stack([za, zb]), conds)
    assert torch.allclose(lat[[0, -1]], dec, atol=1e-4)


def test_variations(trained: Synthesizer, tiny_manifest: Path) -> None:
    from medgen.io import load

    rows = _train_rows(tiny_manifest)
    img = load(tiny_manifest.parent / rows["image_path"][0])
    cond = {"label": int(rows["label"][0]), "sex": rows["sex"][0]}
    v = trained.variations(img, 3, 0.3, seed=0, conditions=cond)
    again = trained.variations(img, 3, 0.3, seed=0, conditions=cond)
    assert tuple(v.images.shape) == (3, 1, 32, 32) and torch.equal(v.images, again.images)
    assert v.conditions["label"].tolist() == [cond["label"]] * 3
    with pytest.raises(MedgenValueError, match=r"strength must be in \(0, 1\], not 0"):
        trained.variations(img, 2, 0.0)


def test_save_load_round_trip(trained: Synthesizer, tmp_path: Path) -> None:
    from medgen.generative import load

    again = load(trained.save(tmp_path / "m"))
    assert isinstance(again, Synthesizer) and again.model == trained.model
    assert again.vocabulary == trained.vocabulary == {"label": [0, 1], "sex": ["F", "M"]}
    a = trained.sample(4, {"sex": "M"}, seed=5)
    b = again.sample(4, {"sex": "M"}, seed=5)
    assert torch.equal(a.images, b.images)
    pd.testing.assert_frame_equal(a.conditions, b.conditions)
    assert again.model_id == trained.model_id
    assert list(again.normalisation.columns) == ["low", "high"]
    assert len(again.normalisation) == len(trained.normalisation) > 0


def test_run_folder_and_dicom_output(vae_run: Path, tmp_path: Path) -> None:
    from medgen.cohort import Cohort
    from medgen.generative import load
    from medgen.io import load as load_image

    syn = load(vae_run)
    assert isinstance(syn, Synthesizer) and syn.steps_trained == 30
    assert (vae_run / "run_complete.json").is_file()
    samples = syn.sample(3, {"label": 1}, seed=4)
    manifest = syn.write(samples, tmp_path / "out", format="dicom")
    cohort = Cohort.from_manifest(manifest)
    df = cohort.df
    assert len(cohort) == 3 and set(df["source"]) == {"synthetic"}
    assert df["subject_id"].nunique() == 3 and set(df["label"]) == {1}
    assert set(df["model_id"]) == {syn.model_id} and set(df["seed"]) == {4}
    files = sorted(Path(df["image_path"][0]).iterdir())
    ds = pydicom.dcmread(files[0])
    assert ds.SyntheticData == "YES"
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.PatientIdentityRemoved == "YES"
    assert str(ds.PatientName) == "" and ds.PatientID == "" and ds.PatientBirthDate == ""
    assert syn.weights_sha256[:12] in ds.DerivationDescription
    assert "seed 4" in ds.DerivationDescription
    img = load_image(df["image_path"][0])
    assert img.meta["synthetic"] is True and tuple(img.shape) == (1, 32, 32, 1)
    with pytest.raises(OutputPathError, match="is not an empty folder"):
        syn.write(samples, tmp_path / "out")


def test_nifti_output(trained: Synthesizer, tmp_path: Path) -> None:
    from medgen.cohort import Cohort
    from medgen.io import load

    samples = trained.sample(2, {"label": 0, "sex": "F"}, seed=1)
    cohort = Cohort.from_manifest(trained.write(samples, tmp_path / "nii", split="train"))
    assert cohort.splits.get("train") == 2
    img = load(cohort.df["image_path"][0])
    assert img.meta["synthetic"] is True
    assert np.allclose(img.as_tensor().numpy(), samples.images[0].numpy(), atol=1e-3)


# ---------------------------------------------------------------------------------- bad input
def test_unknown_condition_value_and_column(trained: Synthesizer) -> None:
    with pytest.raises(
        MedgenValueError,
        match=r"condition sex='X' was not seen in training; "
        r"known values of 'sex': \['F', 'M'\]",
    ):
        trained.sample(2, {"sex": "X"})
    with pytest.raises(
        MedgenValueError,
        match=r"\['sx'\] are not conditions of this model; "
        r"its conditions are \['label', 'sex'\]",
    ):
        trained.sample(2, {"sx": "F"})


@pytest.mark.parametrize("n", [0, -3])
def test_n_must_be_positive(trained: Synthesizer, n: int) -> None:
    with pytest.raises(MedgenValueError, match=f"n must be a positive number of images, not {n}"):
        trained.sample(n)


def _manifest_copy(tiny_manifest: Path, folder: Path, edit: Any) -> Path:
    df = pd.read_csv(tiny_manifest)
    df["image_path"] = [str(tiny_manifest.parent / p) for p in df["image_path"]]
    df["mask_path"] = [str(tiny_manifest.parent / p) for p in df["mask_path"]]
    df = edit(df)
    out = folder / "manifest.csv"
    df.to_csv(out, index=False)
    return out


def test_bad_conditions(tiny_manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"condition 'sx' is not a column of the manifest"):
        Synthesizer("vae-gan", ("sx",), **TINY).fit(tiny_manifest, config=CONFIG, progress=False)
    with pytest.raises(ConfigError, match=r"condition 'age' is continuous .* Bin it first"):
        Synthesizer("vae-gan", ("age",), **TINY).fit(tiny_manifest, config=CONFIG, progress=False)

    def one_site(df: pd.DataFrame) -> pd.DataFrame:
        return df.assign(site="site_A")

    m = _manifest_copy(tiny_manifest, tmp_path, one_site)
    with pytest.raises(ConfigError, match=r"condition 'site' has one value \('site_A'\)"):
        Synthesizer("vae-gan", ("site",), **TINY).fit(m, config=CONFIG, progress=False)
    with pytest.raises(ConfigError, match=r"model must be one of \('vae-gan', 'ldm'\), not 'gan'"):
        Synthesizer("gan", ("label",))


def test_other_size_without_resize(tiny_manifest: Path) -> None:
    syn = Synthesizer("vae-gan", ("label",), resize=False, **{**TINY, "image_size": (16, 16)})
    with pytest.raises(
        MedgenValueError,
        match=re.escape(
            "has size (32, 32), not image_size=(16, 16), and resize=False; pass resize=True"
        ),
    ):
        syn.fit(tiny_manifest, config=CONFIG, progress=False)


def test_untrained_and_other_kind(tmp_path: Path) -> None:
    from medgen.generative import Denoiser

    with pytest.raises(MedgenValueError, match="the model is not trained"):
        Synthesizer("vae-gan", ("label",), **TINY).sample(2)
    run = Denoiser(channels=(4, 8)).save(tmp_path / "denoise")
    with pytest.raises(ConfigError, match=r"holds a 'denoise' model, not a 'synthesizer' model"):
        Synthesizer.load(run)


# ---------------------------------------------------------------------------------- the CLI
def _app() -> Any:
    import typer

    from medgen._internal.cli import MedgenGroup
    from medgen.generative._synth_cli import register

    app = typer.Typer(cls=MedgenGroup, add_completion=False, pretty_exceptions_enable=False)
    register(app)
    return app


def test_cli_train_and_sample(tiny_manifest: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    runner = CliRunner()
    app = _app()
    run = tmp_path / "run"
    res = runner.invoke(app, [
        "synth", "train", str(tiny_manifest), "-o", str(run), "--condition", "label",
        "--condition", "sex", "--image-size", "32,32", "--channels", "8,16", "--epochs", "1",
        "--steps-per-epoch", "3", "--batch-size", "4", "--device", "cpu", "--no-progress",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    res = runner.invoke(
        app,
        [
            "synth",
            "sample",
            str(run),
            "-n",
            "2",
            "--where",
            "label=1,sex=F",
            "-o",
            str(out),
            "--seed",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out / "manifest.csv")
    assert df["label"].tolist() == [1, 1] and df["sex"].tolist() == ["F", "F"]
    res = runner.invoke(app, ["synth", "sample", str(run), "-n", "0", "-o", str(tmp_path / "o2")])
    assert res.exit_code == 2
    assert "Error: -n must be a positive number of images, not 0." in res.output
    res = runner.invoke(
        app,
        ["synth", "sample", str(run), "-n", "1", "--where", "label=7", "-o", str(tmp_path / "o3")],
    )
    assert res.exit_code == 2 and "known values of 'label': [0, 1]" in res.output


# ---------------------------------------------------------------------------------- per item
def test_sample_items_are_a_function_of_seed_and_item(trained: Synthesizer) -> None:
    full = trained.sample_items(range(12), {"label": 1}, seed=3, batch_size=4)
    assert tuple(full.images.shape) == (12, 1, 32, 32)
    assert full.indices.tolist() == list(range(12)) and full.draw.tolist() == [0] * 12
    assert full.conditions.index.name == "sample" and set(full.conditions["label"]) == {1}
    again = trained.sample_items(range(12), {"label": 1}, seed=3, batch_size=4)
    assert torch.equal(full.images, again.images)
    # the same items in the same batches, asked for alone: the same images and conditions
    part = trained.sample_items([4, 5, 6, 7], {"label": 1}, seed=3, batch_size=4)
    assert torch.equal(part.images, full.images[4:8])
    pd.testing.assert_frame_equal(part.conditions, full.conditions.loc[[4, 5, 6, 7]])
    # in other batches the conditions and noise are the same; pixels agree to float precision
    other = trained.sample_items([9, 2], {"label": 1}, seed=3, batch_size=1)
    assert torch.allclose(other.images, full.images[[9, 2]], rtol=1e-4, atol=1e-3)
    assert other.conditions["sex"].tolist() == full.conditions["sex"][[9, 2]].tolist()
    assert torch.equal(
        trained.item_noise([9, 2], seed=3), trained.item_noise(range(12), seed=3)[[9, 2]]
    )
    assert not torch.equal(trained.item_noise([2], seed=3), trained.item_noise([2], seed=4))
    assert not torch.equal(trained.item_noise([2], seed=3), trained.item_noise([2], seed=3, draw=1))
    # drawn conditions follow the training combinations, item by item
    drawn = trained.item_conditions(range(40), seed=1)
    assert set(drawn["sex"]) == {"F", "M"} and set(drawn["label"]) == {0, 1}
    pd.testing.assert_frame_equal(trained.item_conditions([7, 30], seed=1), drawn.loc[[7, 30]])
    rows = pd.DataFrame({"label": [0, None], "sex": ["M", "F"]})
    given = trained.item_conditions([5, 6], rows, seed=1)
    assert given["label"].iloc[0] == 0 and given["sex"].tolist() == ["M", "F"]


class _StubGate:
    """Flags the even positions of the first check as near-copies (``always``: every draw)."""

    def __init__(self, always: bool = False) -> None:
        self.calls = 0
        self.always = always

    def check(self, syn: Synthesizer, samples: Any) -> pd.DataFrame:
        self.calls += 1
        n = len(samples)
        flag = np.ones(n, bool) if self.always else (np.arange(n) % 2 == 0) & (self.calls == 1)
        memo = pd.DataFrame({"near_copy": flag, "nearest_train_id": ["t0"] * n})
        memo.attrs = {"quantile": 0.5}
        return memo


def test_sample_items_replace_rejected_draws(trained: Synthesizer) -> None:
    plain = trained.sample_items(range(6), seed=2)
    gated = trained.sample_items(range(6), seed=2, gate=_StubGate())
    assert gated.draw.tolist() == [1, 0, 1, 0, 1, 0]
    assert gated.rejected is not None
    assert gated.rejected[["item", "draw"]].values.tolist() == [[0, 0], [2, 0], [4, 0]]
    assert gated.memorisation is not None and not gated.memorisation["near_copy"].any()
    assert gated.memorisation.attrs["quantile"] == 0.5
    assert torch.equal(gated.images[1::2], plain.images[1::2])  # kept draws unchanged
    assert not torch.allclose(gated.images[0], plain.images[0])
    pd.testing.assert_frame_equal(gated.conditions, plain.conditions)  # same conditions
    if trained.model == "vae-gan":  # the replacement is the item's draw 1
        noise = trained.item_noise([0, 2, 4], seed=2, draw=1)
        rows = plain.conditions.iloc[[0, 2, 4]]
        index = trained._optional_conditions(rows, 3, "test")
        assert index is not None
        again = trained.decode(trained._prior_latents(noise, index), rows)
        assert torch.allclose(again, gated.images[0::2], rtol=1e-4, atol=1e-3)
    with pytest.raises(
        MedgenRuntimeError,
        match=r"item 0 \(\{'label': \d, 'sex': '[FM]'\}\) was a near-copy of a training image in "
        r"all of its 3 draws \(and 1 other item\(s\) too\)",
    ):
        trained.sample_items([0, 1], seed=2, gate=_StubGate(always=True), max_draws=3)


def test_sample_items_bad_input(trained: Synthesizer) -> None:
    with pytest.raises(MedgenValueError, match=r"seed must be a non-negative integer .*, not -1"):
        trained.sample_items([0], seed=-1)
    with pytest.raises(MedgenValueError, match="items must not repeat an index"):
        trained.sample_items([1, 1])
    with pytest.raises(MedgenValueError, match="items must be non-negative integers"):
        trained.sample_items([-2])
    with pytest.raises(MedgenValueError, match="where has 1 rows for 2 items"):
        trained.item_conditions([0, 1], pd.DataFrame({"label": [1]}))
    with pytest.raises(MedgenValueError, match=r"condition sex='X' was not seen in training"):
        trained.sample_items([0], {"sex": "X"})


def test_fit_refuses_foreign_files_before_locking(tiny_manifest: Path, tmp_path: Path) -> None:
    from medgen.errors import RunFolderError

    (tmp_path / "notes.txt").write_text("mine")
    syn = Synthesizer("vae-gan", ("label",), **TINY)
    with pytest.raises(RunFolderError, match="not part of a medgen run"):
        syn.fit(tiny_manifest, run_dir=tmp_path, config=CONFIG, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no .medgen.lock
