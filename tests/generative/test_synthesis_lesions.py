"""Lesion-weighted training of the synthesizer (``lesion_weight``) and the reconstruction
column of its evaluation: tiny models on the tiny preset."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from medgen.errors import ConfigError, MedgenValueError
from medgen.generative.engine import EngineConfig
from medgen.generative.objectives._common import lesion_weighted_l1
from medgen.generative.objectives.conditional import (
    ConditionalVAEGANConfig,
    ConditionalVAEGANObjective,
)
from medgen.generative.synthesis import Synthesizer
from medgen.io import load

TINY = {"image_size": (32, 32), "channels": (8, 16), "latent_channels": 2}
CONFIG = {"epochs": 2, "steps_per_epoch": 15, "batch_size": 8, "device": "cpu", "ema_decay": None}


def _absolute(manifest: Path, folder: Path, edit: Any = None) -> Path:
    df = pd.read_csv(manifest)
    for col in ("image_path", "mask_path"):
        df[col] = [str(manifest.parent / p) if isinstance(p, str) else p for p in df[col]]
    if edit is not None:
        df = edit(df)
    out = folder / "manifest.csv"
    df.to_csv(out, index=False)
    return out


def test_lesion_weighted_l1_weighs_the_mask() -> None:
    rng = np.random.default_rng(0)
    pred = torch.from_numpy(rng.random((2, 1, 8, 8), dtype=np.float32))
    target = torch.from_numpy(rng.random((2, 1, 8, 8), dtype=np.float32))
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, 0, 2:4, 2:4] = 1.0
    mask[1, 0, 5, 5] = 0.5  # soft occupancy weighs in proportion
    err = (pred - target).abs()
    plain = float(err.mean())
    assert float(lesion_weighted_l1(pred, target, None, 10.0)) == pytest.approx(plain)
    assert float(lesion_weighted_l1(pred, target, mask, 0.0)) == pytest.approx(plain)
    want = float(((1 + 10.0 * mask) * err).mean())
    assert float(lesion_weighted_l1(pred, target, mask, 10.0)) == pytest.approx(want, rel=1e-6)
    assert want > plain


def test_objective_batches_carry_the_masks_of_their_images() -> None:
    rng = np.random.default_rng(1)
    images = rng.random((6, 16, 16), dtype=np.float32)
    masks = np.zeros_like(images)
    for i in range(6):  # mask i marks pixel (i, i): a batch's masks must follow its images
        masks[i, i, i] = 1.0
        images[i, 0, 0] = i
    cfg = ConditionalVAEGANConfig(
        image_size=(16, 16), channels=(4, 8), latent_channels=1, lesion_weight=5.0
    )
    obj = ConditionalVAEGANObjective(images, np.zeros((6, 1), np.int64), config=cfg, masks=masks)
    obj.setup(EngineConfig(seed=0, batch_size=4, device="cpu"))
    batch = obj.sample_batch(3)
    assert batch["mask"].shape == batch["image"].shape == (4, 1, 16, 16)
    for img, m in zip(batch["image"], batch["mask"], strict=True):
        i = int(img[0, 0, 0])
        assert m[0, i, i] == 1.0 and float(m.sum()) == 1.0
    with pytest.raises(MedgenValueError, match=r"masks must have the images' shape"):
        ConditionalVAEGANObjective(images, np.zeros((6, 1), np.int64), config=cfg, masks=masks[:3])
    with pytest.raises(ConfigError, match="lesion_weight"):
        ConditionalVAEGANConfig(image_size=(16, 16), channels=(4, 8), lesion_weight=-1.0)


@pytest.mark.parametrize("model", ["vae-gan", "ldm"])
def test_fit_with_lesion_weight(model: str, tiny_manifest: Path) -> None:
    extra = {"autoencoder_steps": 20} if model == "ldm" else {"adv_weight": 0.0}
    syn = Synthesizer(model, ("label",), lesion_weight=20.0, **TINY, **extra)
    df = pd.read_csv(tiny_manifest)
    train = df[df["split"] == "train"].reset_index(drop=True)
    masks = syn._training_masks(
        train.assign(mask_path=[str(tiny_manifest.parent / p) for p in train["mask_path"]]),
        [(32, 32)] * len(train),
    )
    assert masks is not None and masks.shape == (len(train), 32, 32)
    assert masks.min() >= 0.0 and masks.max() <= 1.0
    # the loaded masks are the manifest's: lesions in diseased rows only, at the file's pixels
    has = masks.reshape(len(train), -1).max(1) > 0
    assert has.any() and not has[train["label"].to_numpy() == 0].any()
    i = int(np.flatnonzero(has)[0])
    truth = load(tiny_manifest.parent / train.loc[i, "mask_path"]).numpy().squeeze() > 0
    np.testing.assert_array_equal(masks[i] > 0, truth)
    syn.fit(tiny_manifest, config=CONFIG, progress=False)
    l1 = [h["l1"] for h in syn.history if not np.isnan(h["l1"])]
    assert l1[-1] < l1[0]
    # the synthesizer keeps no copy of the masks after training (the objective had them)
    assert syn.options["lesion_weight"] == 20.0
    assert not any(isinstance(v, np.ndarray) and v.shape == masks.shape for v in vars(syn).values())


def test_lesion_weight_bad_input(tiny_manifest: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"lesion_weight must be a number >= 0"):
        Synthesizer("vae-gan", ("label",), lesion_weight=-2.0, **TINY)
    syn = Synthesizer("vae-gan", ("label",), lesion_weight=5.0, mask_column="lesions", **TINY)
    with pytest.raises(MedgenValueError, match=r"the manifest has no column 'lesions'"):
        syn.fit(tiny_manifest, config=CONFIG, progress=False)

    (tmp_path / "healthy").mkdir()
    healthy = _absolute(tiny_manifest, tmp_path / "healthy", lambda d: d.assign(mask_path=""))
    syn = Synthesizer("vae-gan", ("label",), lesion_weight=5.0, **TINY)
    with pytest.raises(MedgenValueError, match=r"no train row's 'mask_path' mask has a lesion"):
        syn.fit(healthy, config=CONFIG, progress=False)

    from medgen.io import save

    small = tmp_path / "small_mask.nii.gz"
    save(np.ones((1, 16, 16), np.uint8), small)
    (tmp_path / "other").mkdir()

    def other_grid(d: pd.DataFrame) -> pd.DataFrame:
        d.loc[d["split"] == "train", "mask_path"] = str(small)
        return d

    wrong = _absolute(tiny_manifest, tmp_path / "other", other_grid)
    with pytest.raises(
        MedgenValueError,
        match=re.escape("has shape (16, 16), its image (32, 32); give masks on the images' grid"),
    ):
        syn.fit(wrong, config=CONFIG, progress=False)


def test_cli_lesion_weight(tiny_manifest: Path, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from medgen.cli import app

    common = [
        "synth", "train", str(tiny_manifest), "--condition", "label", "--image-size", "32,32",
        "--channels", "8,16", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "4",
        "--device", "cpu", "--no-progress", "--lesion-weight", "10",
    ]  # fmt: skip
    runner = CliRunner()
    res = runner.invoke(app, [*common, "-o", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    options = config["model"]["options"]
    assert options["lesion_weight"] == 10.0 and options["mask_column"] == "mask_path"
    res = runner.invoke(app, [*common, "--mask-column", "nope", "-o", str(tmp_path / "bad")])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "the manifest has no column 'nope'" in lines[0]
