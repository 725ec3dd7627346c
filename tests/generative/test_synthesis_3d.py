"""The 3D mode of :class:`~medgen.generative.synthesis.Synthesizer`, end to end (issue 12).

A 40-subject ``demo3d`` cohort simulated at 8 mm (24^3 voxels), resized to 16^3 by the
synthesizer; tiny networks (channels (4, 8), 2 latent channels), 20 steps per model: fit into a
run folder, sample ``Bx1xDxHxW`` with conditions, load the run back, write NIfTI and DICOM with
the volume's geometry and read them back, encode / interpolate / vary, evaluate. About 25 s on
one CPU thread; the measured 3D benchmark is ``benchmarks/synthesis3d.py`` (docs/synthesis.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from medgen.generative.synthesis import Synthesizer

SIZE = (16, 16, 16)
#: simulated at 192 mm / 8 mm = 24 voxels a side, resized to 16: 12 mm voxels
SPACING = 12.0
TINY3D = {
    "spatial_dims": 3,
    "image_size": SIZE,
    "channels": (4, 8),
    "latent_channels": 2,
    "unet_channels": (8, 16),
    "num_train_timesteps": 100,
    "num_inference_steps": 4,
}
CONFIG = {"epochs": 2, "steps_per_epoch": 10, "batch_size": 4, "device": "cpu", "ema_decay": None}


@pytest.fixture(scope="module")
def cohort3d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``demo3d`` preset with 40 subjects at 8 mm (24^3): the path of its manifest."""
    from medgen.simulate import preset, simulate

    cfg = preset("demo3d")
    cfg.population.n_subjects = 40
    cfg.anatomy.spacing_mm = 8.0
    return simulate(cfg, tmp_path_factory.mktemp("demo3d"), seed=0, progress=False)


@pytest.fixture(scope="module", params=["vae-gan", "ldm"])
def run3d(
    request: pytest.FixtureRequest, cohort3d: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Synthesizer, Path]:
    """A tiny 3D model trained into a run folder (LDM: 10 autoencoder + 10 diffusion steps)."""
    run = tmp_path_factory.mktemp("synth3d") / request.param
    extra: dict[str, Any] = {"autoencoder_steps": 10} if request.param == "ldm" else {}
    syn = Synthesizer(request.param, ("label", "sex"), **TINY3D, **extra)
    syn.fit(cohort3d, run_dir=run, config=CONFIG, progress=False)
    return syn, run


def _train_rows(manifest: Path) -> pd.DataFrame:
    df = pd.read_csv(manifest)
    return df[df["split"] == "train"].reset_index(drop=True)


def test_fit_sample_and_reload(run3d: tuple[Synthesizer, Path], cohort3d: Path) -> None:
    from medgen.generative import load
    from medgen.io import load as load_image

    syn, run = run3d
    assert load_image(cohort3d.parent / _train_rows(cohort3d)["image_path"][0]).shape == (
        1,
        24,
        24,
        24,
    )
    assert syn.steps_trained == 20 and (run / "run_complete.json").is_file()
    if syn.model == "vae-gan":
        assert syn.history[-1]["l1"] < syn.history[0]["l1"]
    else:  # epoch 1: the autoencoder; epoch 2: the diffusion U-Net
        assert np.isfinite(syn.history[0]["l1"]) and np.isfinite(syn.history[1]["loss"])
    assert syn.spacing == pytest.approx([SPACING] * 3)  # 8 mm x 24 / 16
    out = syn.sample(5, {"label": 1, "sex": "F"}, seed=3)
    assert tuple(out.images.shape) == (5, 1, *SIZE) and out.images.dtype == torch.float32
    assert torch.isfinite(out.images).all()
    assert out.conditions["label"].tolist() == [1] * 5 and set(out.conditions["sex"]) == {"F"}
    drawn = syn.sample(6, {"label": 0}, seed=3)
    assert set(drawn.conditions["label"]) == {0} and len(drawn) == 6
    again = load(run)
    assert isinstance(again, Synthesizer) and again.options["spatial_dims"] == 3
    assert torch.equal(again.sample(5, {"label": 1, "sex": "F"}, seed=3).images, out.images)


def test_written_volumes_keep_their_geometry(
    run3d: tuple[Synthesizer, Path], cohort3d: Path, tmp_path: Path
) -> None:
    import nibabel as nib

    from medgen.cohort import Cohort
    from medgen.io import load

    syn, _ = run3d
    samples = syn.sample(3, {"sex": "M"}, seed=1)
    cohort = Cohort.from_manifest(syn.write(samples, tmp_path / "nii", reference=cohort3d))
    df = cohort.df
    assert len(cohort) == 3 and set(df["source"]) == {"synthetic"} and set(df["sex"]) == {"M"}
    for k, path in enumerate(df["image_path"]):
        assert str(path).endswith(".nii.gz")
        img = load(path)
        assert tuple(img.shape) == (1, *SIZE) and img.meta["synthetic"] is True
        np.testing.assert_allclose(img.affine[:3, :3].numpy(), np.diag([SPACING] * 3))
        assert tuple(img.meta["spacing"]) == pytest.approx((SPACING,) * 3)
        np.testing.assert_allclose(img.as_tensor().numpy(), samples.images[k].numpy(), atol=1e-3)
        assert nib.load(path).header.get_data_shape() == SIZE  # a volume, not a 4D image
    # DICOM: one series of 16 slices per volume, read back with the same geometry
    dicom = Cohort.from_manifest(
        syn.write(samples, tmp_path / "dcm", format="dicom", reference=cohort3d)
    ).df
    series = Path(dicom["image_path"][0])
    assert series.is_dir() and len(list(series.iterdir())) == SIZE[2]
    vol = load(series)
    assert tuple(vol.shape) == (1, *SIZE) and vol.meta["synthetic"] is True
    assert tuple(vol.meta["spacing"]) == pytest.approx((SPACING,) * 3)
    np.testing.assert_allclose(vol.as_tensor().numpy(), samples.images[0].numpy(), atol=0.05)


def test_encode_interpolate_and_vary_volumes(
    run3d: tuple[Synthesizer, Path], cohort3d: Path
) -> None:
    from medgen.io import load

    syn, _ = run3d
    rows = _train_rows(cohort3d)
    a, b = (load(cohort3d.parent / rows["image_path"][i]) for i in (0, 1))
    z = syn.encode([a, b])
    assert tuple(z.shape) == (2, 2, 8, 8, 8)
    path = syn.interpolate(a, b, 4, conditions=rows.loc[[0, 1], ["label", "sex"]])
    assert tuple(path.shape) == (4, 1, *SIZE) and torch.isfinite(path).all()
    cond = {"label": int(rows["label"][0]), "sex": rows["sex"][0]}
    v = syn.variations(a, 2, 0.3, seed=0, conditions=cond)
    assert tuple(v.images.shape) == (2, 1, *SIZE)
    assert torch.equal(v.images, syn.variations(a, 2, 0.3, seed=0, conditions=cond).images)


@pytest.mark.filterwarnings("ignore::medgen.errors.MetricWarning")  # few rows per subgroup
def test_evaluate_volumes(run3d: tuple[Synthesizer, Path], cohort3d: Path, tmp_path: Path) -> None:
    syn, _ = run3d
    ev = syn.evaluate(cohort3d, seed=0, classifier_epochs=1, kid_subsets=5)
    held_out = (pd.read_csv(cohort3d)["split"] != "train").sum()
    overall = ev.quality.loc[("overall", "all")]
    assert overall["n_real"] == held_out and overall["n_fake"] == held_out
    assert np.isfinite(overall["fid"]) and np.isfinite(overall["fid_floor"])
    assert overall["fid"] >= 0 and overall["fid_floor"] >= 0
    assert set(ev.fidelity.index.get_level_values("condition")) == {"label", "sex"}
    assert list(ev.tstr.index) == ["real", "synthetic", "reconstructions"]
    assert len(ev.memorisation) == held_out
    # features: the 8^3 latent mean pooled to 4^3 (64 cells per channel, as 8x8 in 2D)
    assert "pooled to <= 4 per axis" in ev.provenance["feature_extractor"]
    assert syn.memorisation_gate(cohort3d).train_features.shape[1] == 2 * 4**3
    html = ev.to_html(tmp_path / "report.html")
    assert "data:image/png;base64," in html


def test_conditional_patchgan_trains_on_volumes() -> None:
    """The VAE-GAN's discriminator (image + one-hot condition maps) in 3D, from the first step."""
    from medgen.generative import EngineConfig, fit_objective
    from medgen.generative.objectives.conditional import (
        ConditionalVAEGANConfig,
        ConditionalVAEGANObjective,
    )

    rng = np.random.default_rng(0)
    images = rng.random((6, 8, 8, 8), dtype=np.float32)
    conditions = np.stack([np.arange(6) % 2, np.arange(6) % 3], axis=1)
    cfg = ConditionalVAEGANConfig(
        spatial_dims=3,
        channels=(4, 8),
        latent_channels=2,
        image_size=(8, 8, 8),
        num_classes=(2, 3),
        adv_warmup_steps=0,
        discriminator_channels=4,
        num_layers_d=1,
    )
    obj = ConditionalVAEGANObjective(images, conditions, config=cfg)
    engine = EngineConfig(epochs=1, steps_per_epoch=2, batch_size=2, device="cpu", ema_decay=None)
    res = fit_objective(obj, config=engine, progress=False)
    assert res.networks.keys() == {"autoencoder", "discriminator"}
    row = res.history[-1]
    assert all(np.isfinite(row[k]) for k in ("l1", "kl", "adv", "loss_d"))
