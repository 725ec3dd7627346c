"""Mask-conditioned decoding of the VAE-GAN (``Synthesizer(mask_condition=True)``): the decoder
sees the lesion mask, samples are decoded under a training mask of their conditions, and the
masks travel with the samples (result, save/load, written dataset). Tiny models on the tiny
preset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import medgen
from medgen.errors import ConfigError, MedgenValueError
from medgen.generative import load
from medgen.generative.objectives.conditional import (
    ConditionalVAEGANConfig,
    ConditionalVAEGANObjective,
    build_conditional_autoencoder,
)
from medgen.generative.synthesis import Synthesizer

TINY = {"image_size": (32, 32), "channels": (8, 16), "latent_channels": 2}
CONFIG = {"epochs": 2, "steps_per_epoch": 20, "batch_size": 8, "device": "cpu", "ema_decay": None}


@pytest.fixture(scope="module")
def masked(
    tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Synthesizer, Path]:
    """A mask-conditioned VAE-GAN trained on the tiny preset, and its run folder."""
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("masked") / "run"
    syn = Synthesizer("vae-gan", ("label", "sex"), mask_condition=True, lesion_weight=10.0, **TINY)
    syn.fit(tiny_manifest, run_dir=run, config=CONFIG, progress=False)
    return syn, run


def _train_masks(tiny_manifest: Path) -> tuple[pd.DataFrame, np.ndarray]:
    df = pd.read_csv(tiny_manifest)
    train = df[df["split"] == "train"].reset_index(drop=True)
    masks = np.stack(
        [
            np.asarray(medgen.io.load(tiny_manifest.parent / p)).squeeze() > 0.5
            for p in train["mask_path"]
        ]
    )
    return train, masks


def test_the_decoder_sees_the_mask_where_it_is() -> None:
    cfg = ConditionalVAEGANConfig(
        image_size=(32, 32), channels=(8, 16), latent_channels=2, mask_condition=True
    )
    ae = build_conditional_autoencoder(cfg).eval()
    assert ae.mask_condition
    z = torch.zeros(2, 2, 16, 16)
    w = [torch.tensor([[1.0, 0.0], [1.0, 0.0]])]
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 4:8, 20:24] = 1.0
    with torch.no_grad():
        plain = ae.decode(z, w)
        empty = ae.decode(z, w, torch.zeros_like(mask))
        lesion = ae.decode(z, w, mask)
    # no mask is the empty mask; a lesion changes the latent offset at its place only: the
    # 3x3 convolution of the pooled mask reaches one latent cell around the lesion's cells
    torch.testing.assert_close(plain, empty)
    assert not torch.allclose(lesion, plain)
    with torch.no_grad():
        delta = (ae.mask_offset(mask, 2) - ae.mask_offset(None, 2)).abs().amax((0, 1))
    reach = torch.zeros(16, 16, dtype=torch.bool)
    reach[1:5, 9:13] = True  # lesion pixels 4:8 x 20:24 -> latent cells 2:4 x 10:12, +-1
    assert float(delta[~reach].max()) == 0.0 and float(delta[reach].min()) > 0.0
    # without mask_condition there is no mask path, and masks are ignored by construction
    ae0 = build_conditional_autoencoder(
        ConditionalVAEGANConfig(image_size=(32, 32), channels=(8, 16), latent_channels=2)
    )
    assert not ae0.mask_condition and ae0.mask_offset(mask, 2) is None


def test_objective_needs_masks_and_judges_them() -> None:
    rng = np.random.default_rng(0)
    images = rng.random((6, 16, 16), dtype=np.float32)
    cfg = ConditionalVAEGANConfig(
        image_size=(16, 16), channels=(4, 8), latent_channels=1, mask_condition=True
    )
    with pytest.raises(MedgenValueError, match=r"mask_condition decodes under lesion masks"):
        ConditionalVAEGANObjective(images, np.zeros((6, 1), np.int64), config=cfg)
    obj = ConditionalVAEGANObjective(
        images, np.zeros((6, 1), np.int64), config=cfg, masks=np.zeros_like(images)
    )
    nets = obj.build_networks()
    # the discriminator sees the image, the condition maps and the mask
    first = next(p for p in nets["discriminator"].parameters() if p.ndim == 4)
    assert first.shape[1] == 1 + 2 + 1
    with pytest.raises(ConfigError, match=r"mask_condition and guide_weight"):
        ConditionalVAEGANConfig(
            image_size=(16, 16), channels=(4, 8), mask_condition=True, guide_weight=0.1
        )
    with pytest.raises(ConfigError, match=r"mask_condition=True needs model='vae-gan'"):
        Synthesizer("ldm", ("label",), mask_condition=True, **TINY)


def test_samples_carry_a_training_mask_of_their_conditions(
    masked: tuple[Synthesizer, Path], tiny_manifest: Path
) -> None:
    syn, _ = masked
    train, truth = _train_masks(tiny_manifest)
    s1 = syn.sample(12, {"label": 1}, seed=4)
    s0 = syn.sample(12, {"label": 0}, seed=4)
    assert s1.masks is not None and s0.masks is not None
    assert s1.masks.shape == s1.images.shape == (12, 1, 32, 32)
    # healthy conditions: the empty masks of healthy training images
    assert float(s0.masks.sum()) == 0.0
    # diseased ones: each mask is one of a training image of the same label and sex
    for m, sex in zip(s1.masks[:, 0].numpy() > 0.5, s1.conditions["sex"], strict=True):
        rows = np.flatnonzero(((train["label"] == 1) & (train["sex"] == sex)).to_numpy())
        assert m.any() and any(np.array_equal(m, truth[r]) for r in rows)
    # not one mask for all: the draw picks among them
    assert len({m.numpy().tobytes() for m in s1.masks}) > 1
    # the same seed, the same masks and images
    again = syn.sample(12, {"label": 1}, seed=4)
    assert again.masks is not None
    assert torch.equal(again.masks, s1.masks) and torch.equal(again.images, s1.images)
    # per item: a pure function of (seed, item) in any company
    items = syn.sample_items([3, 7, 11], {"label": 1}, seed=2)
    alone = syn.sample_items([11], {"label": 1}, seed=2)
    assert items.masks is not None and alone.masks is not None
    assert torch.equal(items.masks[2], alone.masks[0])
    # select keeps the masks in step with the images
    keep = np.arange(12) % 3 == 0
    sub = s1.select(keep)
    assert sub.masks is not None and torch.equal(sub.masks, s1.masks[torch.from_numpy(keep)])


def test_mask_bank_survives_save_and_load(masked: tuple[Synthesizer, Path]) -> None:
    syn, run = masked
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["options"]["mask_condition"] is True
    assert config["model"]["mask_bank"]["spatial"] == [32, 32]
    back = load(run)
    a = syn.sample(6, {"label": 1}, seed=9)
    b = back.sample(6, {"label": 1}, seed=9)
    assert a.masks is not None and b.masks is not None
    assert torch.equal(a.masks, b.masks)
    torch.testing.assert_close(a.images, b.images)


def test_decode_under_given_masks(masked: tuple[Synthesizer, Path]) -> None:
    syn, _ = masked
    s = syn.sample(4, {"label": 1, "sex": "F"}, seed=1)
    assert s.masks is not None
    z = syn.encode(s.images)
    cond = {"label": 1, "sex": "F"}
    with_masks = syn.decode(z, cond, masks=s.masks)
    without = syn.decode(z, cond)
    assert with_masks.shape == s.images.shape
    assert not torch.allclose(with_masks, without)
    # 2D masks without the channel axis are accepted
    torch.testing.assert_close(syn.decode(z, cond, masks=s.masks[:, 0].numpy()), with_masks)
    with pytest.raises(MedgenValueError, match=r"masks must be 4 x 1 x 32x32"):
        syn.decode(z, cond, masks=s.masks[:2])
    plain = Synthesizer("vae-gan", ("label",), **TINY)
    plain.vocabulary, plain.nets = {"label": [0, 1]}, plain.networks()
    with pytest.raises(MedgenValueError, match=r"masks= needs a mask-conditioned model"):
        plain.decode(torch.zeros(1, 2, 16, 16), {"label": 1}, masks=np.zeros((1, 32, 32)))


@pytest.mark.parametrize("fmt", ["nifti", "dicom"])
def test_written_samples_come_with_their_masks(
    masked: tuple[Synthesizer, Path], tmp_path: Path, fmt: str
) -> None:
    syn, _ = masked
    s = syn.sample(5, {"label": 1}, seed=2)
    assert s.masks is not None
    manifest = syn.write(s, tmp_path / "out", format=fmt, allow_copies=True)
    cohort = medgen.Cohort.from_manifest(manifest)
    assert "mask_path" in cohort.df.columns
    for k, row in enumerate(cohort.df.to_dict("records")):
        m = np.asarray(medgen.io.load(row["mask_path"])).squeeze()
        img = medgen.io.load(row["image_path"])
        assert m.shape == np.asarray(img).squeeze().shape
        np.testing.assert_array_equal(m > 0.5, s.masks[k, 0].numpy() > 0.5)
        assert Path(row["mask_path"]).resolve().is_relative_to((tmp_path / "out").resolve())


def test_cli_mask_condition(tiny_manifest: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medgen.cli import app

    common = [
        "synth", "train", str(tiny_manifest), "--condition", "label", "--image-size", "32,32",
        "--channels", "8,16", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4",
        "--device", "cpu", "--no-progress", "--mask-condition",
    ]  # fmt: skip
    runner = CliRunner()
    res = runner.invoke(app, [*common, "-o", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    options = json.loads((tmp_path / "run" / "config.json").read_text())["model"]["options"]
    assert options["mask_condition"] is True
    res = runner.invoke(app, [*common, "--model", "ldm", "-o", str(tmp_path / "bad")])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "mask_condition=True needs model='vae-gan'" in lines[0]


def test_batch_datasets_carry_and_check_their_masks(
    masked: tuple[Synthesizer, Path], tmp_path: Path
) -> None:
    from medgen.batch import check_dataset, generate

    syn, run = masked
    out = tmp_path / "dataset"
    generate(run, 8, out, where={"label": 1}, shard_size=4, batch_size=4, progress=False)
    df = pd.read_csv(out / "manifest.csv")
    assert {"mask_path", "mask_sha256"} <= set(df.columns)
    direct = syn.sample_items(np.arange(8), {"label": 1}, seed=int(df["seed"][0]))
    assert direct.masks is not None
    for row in df.to_dict("records"):
        m = np.asarray(medgen.io.load(out / row["mask_path"])).squeeze() > 0.5
        # the mask the item's image was decoded under, beside the image in its shard
        np.testing.assert_array_equal(m, direct.masks[int(row["item"]), 0].numpy() > 0.5)
        assert Path(row["mask_path"]).parent == Path(row["image_path"]).parent
    assert check_dataset(out).ok
    # a lost mask is a problem named by its image, not a stray or a silent pass
    (out / df["mask_path"][2]).unlink()
    report = check_dataset(out)
    assert not report.ok
    problems = dict(zip(report.problems["image_id"], report.problems["problem"], strict=True))
    assert problems == {df["image_id"][2]: "lesion mask missing"}


def test_reconstructions_need_the_rows_masks(
    masked: tuple[Synthesizer, Path], tiny_manifest: Path
) -> None:
    from medgen.generative._synth_eval import reconstruct_units

    syn, _ = masked
    rows = pd.read_csv(tiny_manifest).head(3).drop(columns=["mask_path"])
    with pytest.raises(MedgenValueError) as err:
        reconstruct_units(syn, torch.zeros(3, 1, 32, 32), rows)
    msg = str(err.value)
    assert msg.startswith("evaluate: a mask-conditioned model reconstructs each image under")
    assert "no column 'mask_path'" in msg and "pass mask_column=" in msg
