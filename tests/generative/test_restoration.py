"""medgen.generative restoration: Denoiser, SuperResolver, baselines, evaluation, CLI.

Tiny configs (channels (4, 8), 16-px patches) on real anatomy: slices of nilearn's MNI152
template, pydicom's MR_small and nibabel's anatomical.nii.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from medgen.errors import ConfigError, MedgenFileNotFoundError, MedgenValueError
from medgen.generative import (
    Denoiser,
    SuperResolver,
    evaluate,
    summarize,
)
from medgen.generative.baselines import bm3d_available, denoise_baseline, upsample
from medgen.generative.superres import output_affine

TINY = {"channels": (4, 8), "patch_size": 16}


@pytest.fixture(scope="module")
def nifti_cohort(tmp_path_factory: pytest.TempPathFactory, write_cohort: Any) -> Path:
    """A manifest of three small 3D NIfTI volumes (64x80x4, spacing 2x2x3 mm, shifted origin)."""
    d = tmp_path_factory.mktemp("cohort")
    affine = np.array([[2.0, 0, 0, -60], [0, 2.0, 0, -80], [0, 0, 3.0, 10], [0, 0, 0, 1]])
    return write_cohort(d, affine=affine)


# ---------------------------------------------------------------------------------- models


def test_denoiser_fit_apply_save_load(tmp_path: Path, mni_slices: np.ndarray) -> None:
    den = Denoiser(**TINY, noise=["gaussian", "rician"], sigma=(0.05, 0.1))
    den.fit(
        list(mni_slices),
        run_dir=tmp_path / "run",
        config={"epochs": 2, "steps_per_epoch": 10, "batch_size": 4, "ema_decay": None},
        progress=False,
    )
    noisy = mni_slices[0] + np.random.default_rng(0).normal(0, 0.08, mni_slices[0].shape)
    out = den.apply(noisy.astype(np.float32))
    assert out.shape == noisy.shape and out.dtype == np.float32
    again = Denoiser.load(tmp_path / "run")
    np.testing.assert_array_equal(again.apply(noisy.astype(np.float32)), out)
    assert pd.DataFrame(again.history).equals(pd.DataFrame(den.history))
    assert again.data_hash == den.data_hash and len(str(den.data_hash)) == 64
    with pytest.raises(ConfigError, match=r"differs in \['run_info.data_sha256'\]"):
        den.fit(
            [mni_slices[0], mni_slices[1] + 0.01, mni_slices[2], mni_slices[3]],
            run_dir=tmp_path / "run",
            config={"epochs": 3, "steps_per_epoch": 10, "batch_size": 4, "ema_decay": None},
            resume=True,
        )
    assert len(den.history) == 2
    assert (tmp_path / "run" / "metrics.csv").is_file()
    tab = evaluate(den, [mni_slices[0]], sigma=0.08, baselines=[], progress=False)
    assert list(tab["method"]) == ["input", "model"] and np.isfinite(tab["psnr"]).all()
    # a volume through a 2D model: slice by slice, on request only
    vol = np.moveaxis(mni_slices, 0, -1)
    with pytest.raises(MedgenValueError, match="slices=True"):
        den.apply(vol)
    out = den.apply(vol, slices=True)
    assert out.shape == vol.shape
    assert np.isfinite(out).all()
    assert den.apply(vol[..., :1]).shape == vol[..., :1].shape  # one slice needs no flag


def test_whole_slice_inference_odd_sizes_and_the_sliding_window_fallback(
    mni_slices: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2D slices go through the network whole (padded to its down-sampling), any size; slices
    over the size limit go through MONAI's sliding window and agree with the whole-slice result."""
    import medgen.generative._restorer as restorer_mod

    den = Denoiser(channels=(4, 8, 16), patch_size=16, noise="gaussian", sigma=0.1)
    den.fit(
        list(mni_slices),
        config={
            "epochs": 1,
            "steps_per_epoch": 60,
            "batch_size": 8,
            "lr_g": 1e-2,
            "ema_decay": None,
            "l1_weight": 0.0,
            "mse_weight": 1.0,
            "ssim_weight": 0.0,
        },
        progress=False,
    )
    assert float(den.network.gain.detach()) != 0.0  # the network's correction is in use
    rng = np.random.default_rng(0)
    clean = mni_slices[0][:61, :75]  # not a multiple of 4
    noisy = (clean + rng.normal(0, 0.1, clean.shape)).astype(np.float32)
    whole = den.apply(noisy)
    tiny = den.apply(noisy[:3, :5])  # smaller than the padding: edge padding instead of mirroring
    assert whole.shape == clean.shape and tiny.shape == (3, 5)
    assert np.isfinite(tiny).all()
    calls = []
    real_swi = __import__("monai.inferers", fromlist=["x"]).sliding_window_inference

    def spy(*args, **kwargs):
        calls.append(kwargs["roi_size"])
        return real_swi(*args, **kwargs)

    monkeypatch.setattr("monai.inferers.sliding_window_inference", spy)
    monkeypatch.setattr(restorer_mod, "WHOLE_SLICE_MAX_PIXELS", 100)
    tiled = den.apply(noisy)
    assert calls == [(16, 16)]
    err = lambda a: float(np.mean((a - clean) ** 2))  # noqa: E731
    assert err(whole) < 0.8 * err(noisy)
    # same network, other tiling: the two results agree far better than either matches the truth
    assert float(np.mean((whole - tiled) ** 2)) < 0.35 * err(whole)


def test_self_ensemble_makes_the_model_rotation_and_flip_equivariant(
    tmp_path: Path, mni_slices: np.ndarray
) -> None:
    """Averaged over the 8 rotations/flips, the restorer commutes with them (exactly, up to float
    rounding); a single pass does not. Saved and loaded with the model."""
    den = Denoiser(channels=(4, 8), patch_size=16, noise="gaussian", sigma=0.1)
    den.fit(
        list(mni_slices),
        config={
            "epochs": 1,
            "steps_per_epoch": 20,
            "batch_size": 4,
            "lr_g": 1e-2,
            "ema_decay": None,
        },
        progress=False,
    )
    rng = np.random.default_rng(3)
    img = (mni_slices[2][:64, :64] + rng.normal(0, 0.1, (64, 64))).astype(np.float32)

    def gap(model: Denoiser) -> float:
        a = np.rot90(np.fliplr(model.apply(img)))
        b = model.apply(np.ascontiguousarray(np.rot90(np.fliplr(img))))
        return float(np.abs(a - b).max())

    single = den.apply(img)
    assert gap(den) > 1e-3
    den.config.self_ensemble = True
    ens = den.apply(img)
    assert gap(den) < 1e-5
    assert 1e-4 < float(np.abs(ens - single).mean()) < 0.05
    again = Denoiser.load(den.save(tmp_path / "ens"))
    assert again.config.self_ensemble is True
    np.testing.assert_allclose(again.apply(img), ens, atol=1e-6)


def test_defaults_are_the_benchmarked_recipe(mni_slices: np.ndarray) -> None:
    """Without options, a Denoiser is the benchmark's U-Net trained with MSE at lr 3e-3; a dict
    config overrides single options; SR keeps L1 + SSIM. 3D models default to 32-voxel patches."""
    den = Denoiser()
    assert den.config.channels == (16, 32, 64, 128) and den.config.patch_size == 64
    assert Denoiser(spatial_dims=3).config.patch_size == 32
    den.fit(list(mni_slices), config={"epochs": 1, "steps_per_epoch": 1, "batch_size": 2,
                                      "ssim_weight": 0.5}, progress=False)  # fmt: skip
    tc = den.train_config
    assert tc is not None
    assert (tc.lr_g, tc.l1_weight, tc.mse_weight, tc.ssim_weight) == (3e-3, 0.0, 1.0, 0.5)
    sr = SuperResolver(scale=4, channels=(4, 8), patch_size=16)
    sr.fit(list(mni_slices), config={"epochs": 1, "steps_per_epoch": 1, "batch_size": 2},
           progress=False)  # fmt: skip
    assert sr.train_config is not None
    assert (sr.train_config.lr_g, sr.train_config.l1_weight) == (3e-3, 1.0)
    assert sr.train_config.mse_weight == 0.0 and sr.train_config.ssim_weight == 0.1


def test_augment_keeps_the_range_and_varies_orientation_and_contrast(
    mni_slices: np.ndarray,
) -> None:
    from medgen.generative.denoise import _augment

    img = mni_slices[1]
    rng = np.random.default_rng(0)
    outs = [_augment(img, rng) for _ in range(40)]
    for o in outs:
        assert o.dtype == np.float32
        assert o.min() == pytest.approx(img.min()) and o.max() == pytest.approx(img.max())
    assert {o.shape for o in outs} == {img.shape, img.shape[::-1]}  # rotated by 90 degrees too
    same_values = [np.allclose(np.sort(o, axis=None), np.sort(img, axis=None)) for o in outs]
    assert 5 < sum(same_values) < 35  # gamma changes the contrast of about half
    den = Denoiser(**TINY, noise="gaussian", sigma=0.1, augment=True)
    assert den.config.task_options["augment"] is True
    x, y = den._make_pair(img, None, np.random.default_rng(1))
    assert x.shape == y.shape == (16, 16)


def test_denoiser_3d_and_vae(mni_slices: np.ndarray) -> None:
    vol = np.moveaxis(np.concatenate([mni_slices] * 4), 0, -1)[:32, :32]  # 32x32x16
    den3 = Denoiser(spatial_dims=3, **TINY, sigma=0.1)
    den3.fit([vol], config={"epochs": 1, "steps_per_epoch": 2, "batch_size": 2}, progress=False)
    assert den3.apply(vol).shape == vol.shape
    vae = Denoiser(model="vae", **TINY, sigma=0.1)
    vae.fit(
        list(mni_slices),
        config={"epochs": 1, "steps_per_epoch": 3, "batch_size": 2},
        progress=False,
    )
    assert np.isfinite(vae.history[0]["kl"])
    a = vae.apply(mni_slices[0])
    np.testing.assert_array_equal(a, vae.apply(mni_slices[0]))  # deterministic at inference


def test_poisson_gaussian_training_pairs(mni_slices: np.ndarray) -> None:
    """Low-dose-CT-like pairs: the training input is noisier than the target, same grid."""
    den = Denoiser(**TINY, noise="poisson_gaussian", sigma=0.01, photons=50.0)
    x, y = den._make_pair(mni_slices[0], None, np.random.default_rng(0))
    assert x.shape == y.shape == (16, 16)
    assert np.abs(x - y).mean() > 0.02
    with pytest.raises(ConfigError, match="noise must be one or more of"):
        Denoiser(noise="speckle")


def test_real_pairs_from_arrays_and_mismatch(mni_slices: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    pairs = [(s, s + rng.normal(0, 0.05, s.shape).astype(np.float32)) for s in mni_slices]
    den = Denoiser(**TINY)
    den.fit(pairs, config={"epochs": 1, "steps_per_epoch": 2, "batch_size": 2}, progress=False)
    with pytest.raises(MedgenValueError, match="pair 0: clean has shape"):
        den.fit([(mni_slices[0], mni_slices[0][:-2])], config={"epochs": 1}, progress=False)


def test_real_pairs_from_a_manifest(tmp_path: Path, mni_slices: np.ndarray) -> None:
    from medgen.generative._restorer import load_images
    from medgen.io import save

    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    vol = np.moveaxis(mni_slices, 0, -1)
    save(vol[None], tmp_path / "clean.nii.gz", affine=aff)
    save((vol + 0.05)[None], tmp_path / "noisy.nii.gz", affine=aff)
    save(vol[None, :-2], tmp_path / "short.nii.gz", affine=aff)
    row = {"image_id": "a", "subject_id": "s", "split": "train", "source": "real"}
    good = pd.DataFrame([{**row, "image_path": "clean.nii.gz", "noisy_path": "noisy.nii.gz"}])
    good.to_csv(tmp_path / "good.csv", index=False)
    ((iid, clean, noisy),) = load_images(tmp_path / "good.csv")
    assert iid == "a"
    np.testing.assert_allclose(noisy - clean, 0.05, atol=1e-5)
    bad = pd.DataFrame([{**row, "image_path": "clean.nii.gz", "noisy_path": "short.nii.gz"}])
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(
        MedgenValueError,
        match=r"image a: image_path .*clean.nii.gz has shape \(64, 80, 4\) but noisy_path .*short.nii.gz has shape \(62, 80, 4\)",
    ):
        load_images(tmp_path / "bad.csv")


def test_superres_geometry_and_errors(mni_slices: np.ndarray) -> None:
    with pytest.raises(ConfigError, match=r"scale must be one of \(2, 4\), not 3"):
        SuperResolver(scale=3)
    with pytest.raises(ConfigError, match="axes must be one of"):
        SuperResolver(axes="z")
    with pytest.raises(ConfigError, match="patch_size=18 must be divisible by scale=4; try 20"):
        SuperResolver(scale=4, patch_size=18)
    sr = SuperResolver(scale=4, **TINY)
    with pytest.raises(MedgenValueError, match="66 voxels, not a multiple of the scale 4"):
        sr.downsample(np.zeros((66, 64), np.float32))
    # output affine: each fine voxel block tiles its coarse voxel exactly
    aff = np.array([[0, -2.0, 0, 30], [3.0, 0, 0, -10], [0, 0, 4.0, 5], [0, 0, 0, 1]])
    fine = output_affine(aff, (2, 2, 1))
    np.testing.assert_allclose(np.linalg.norm(fine[:3, :3], axis=0), [1.5, 1.0, 4.0])
    block = np.array([[i, j, 0, 1] for i in (0, 1) for j in (0, 1)], float)
    np.testing.assert_allclose((fine @ block.T).mean(axis=1), aff @ [0, 0, 0, 1])


def test_superres_fit_apply_metatensor(tmp_path: Path, nifti_cohort: Path) -> None:
    from medgen.io import load

    sr = SuperResolver(scale=2, **TINY)
    sr.fit(
        nifti_cohort, config={"epochs": 1, "steps_per_epoch": 3, "batch_size": 2}, progress=False
    )
    img = load(nifti_cohort.parent / "s0.nii.gz")
    out = sr.apply(img, slices=True)  # a 4-slice volume through a 2D model
    assert tuple(out.shape) == (1, 128, 160, 4)
    assert out.meta["spacing"] == pytest.approx((1.0, 1.0, 3.0))
    np.testing.assert_allclose(
        np.asarray(out.affine), output_affine(np.asarray(img.affine), (2, 2, 1))
    )
    through = SuperResolver(scale=2, axes="through", spatial_dims=3, **TINY)
    vol = np.asarray(img[0])[:32, :32]
    vol = np.concatenate([vol] * 4, axis=-1)  # 32x32x16
    through.fit([vol], config={"epochs": 1, "steps_per_epoch": 2, "batch_size": 2}, progress=False)
    assert through.apply(through.downsample(vol)).shape == vol.shape


# ---------------------------------------------------------------------------------- baselines


def test_baselines_beat_noisy_input_and_match_skimage(mni_slices: np.ndarray) -> None:
    from skimage.metrics import peak_signal_noise_ratio as psnr
    from skimage.restoration import denoise_tv_chambolle

    clean = mni_slices[1].astype(np.float64)
    noisy = clean + np.random.default_rng(0).normal(0, 0.1, clean.shape)
    base = psnr(clean, noisy, data_range=1.0)
    methods = ["nl_means", "tv", "wavelet"] + (["bm3d"] if bm3d_available() else [])
    for m in methods:
        out = denoise_baseline(noisy, m)
        assert out.shape == noisy.shape
        assert psnr(clean, out, data_range=1.0) > base + 3.0, m
    noisy01 = (noisy - noisy.min()) / (noisy.max() - noisy.min())  # 0..1: no internal rescaling
    np.testing.assert_allclose(
        denoise_baseline(noisy01, "tv", sigma=0.07),
        denoise_tv_chambolle(noisy01, weight=0.07),
        atol=1e-6,
    )
    with pytest.raises(ConfigError, match="not a baseline; choose one of"):
        denoise_baseline(noisy, "median")


def test_upsample_inverts_block_average_on_smooth_images() -> None:
    from medgen.simulate import degrade

    x, y = np.meshgrid(np.arange(32.0), np.arange(32.0), indexing="ij")
    ramp = (0.5 * x + 0.25 * y).astype(np.float32)
    low = degrade(ramp, downsample=2, seed=0).degraded
    up = upsample(low, (2, 2))
    # torch's bicubic (a = -0.75) is exact for constants, close for ramps; far better than nearest
    err = np.abs(up - ramp)[4:-4, 4:-4].max()
    err_nearest = np.abs(upsample(low, (2, 2), mode="nearest") - ramp)[4:-4, 4:-4].max()
    assert err < 0.1 < err_nearest
    const = np.full((16, 16), 3.0, np.float32)
    np.testing.assert_allclose(upsample(const[::2, ::2], (2, 2)), const, atol=1e-5)
    vol = np.repeat(ramp[..., None], 8, axis=-1)
    assert upsample(vol[..., ::2], (1, 1, 2)).shape == (32, 32, 8)


# ---------------------------------------------------------------------------------- quality


def test_evaluate_table_columns_psnr_and_subgroups(nifti_cohort: Path) -> None:
    from skimage.metrics import peak_signal_noise_ratio

    from medgen.cohort import Cohort
    from medgen.io import load
    from medgen.simulate import degrade

    cohort = Cohort.from_manifest(nifti_cohort)
    tab = evaluate(
        None, cohort, task="denoise", sigma=0.1, baselines=["tv"], seed=3, progress=False
    )
    for col in (
        "image_id",
        "method",
        "psnr",
        "ssim",
        "psnr_fg",
        "ssim_fg",
        "data_range",
        "seconds_per_slice",
        "site",
        "noise",
        "sigma",
    ):
        assert col in tab.columns
    assert set(tab["method"]) == {"input", "tv"} and len(tab) == 6
    clean = np.asarray(load(nifti_cohort.parent / "s1.nii.gz")[0])
    noisy = np.asarray(degrade(clean, noise="gaussian", sigma=0.1, seed=4).degraded)
    expected = peak_signal_noise_ratio(clean, noisy, data_range=float(clean.max() - clean.min()))
    row = tab[(tab.image_id == "img1") & (tab.method == "input")].iloc[0]
    assert row["psnr"] == pytest.approx(expected, abs=1e-4)
    assert (
        tab[tab.method == "tv"]["psnr"].to_numpy() > tab[tab.method == "input"]["psnr"].to_numpy()
    ).all()
    by = summarize(tab, by=("site", "method"))
    assert by.index.names == ["site", "method"]
    assert by.loc[("B", "input"), "n_images"] == 1
    from medgen.errors import MetricWarning
    from medgen.generative import image_metrics

    with pytest.warns(MetricWarning, match="constant"):
        assert np.isnan(image_metrics(np.zeros((8, 8)), np.ones((8, 8)))["psnr"])
    sr_tab = evaluate(None, cohort, task="superres", scale=2, progress=False)
    assert set(sr_tab["method"]) == {"bicubic"} and (sr_tab["psnr"] > 20).all()


# ---------------------------------------------------------------------------------- load errors and CLI


def test_load_errors(tmp_path: Path, mni_slices: np.ndarray) -> None:
    with pytest.raises(MedgenFileNotFoundError, match="not a trained denoise run"):
        Denoiser.load(tmp_path / "missing")
    den = Denoiser(**TINY)
    den.save(tmp_path / "den")
    with pytest.raises(ConfigError, match="holds a 'denoise' model, not a 'superres' model"):
        SuperResolver.load(tmp_path / "den")


def test_cli_train_and_apply(tmp_path: Path, nifti_cohort: Path) -> None:
    import pydicom
    from pydicom.data import get_testdata_file
    from typer.testing import CliRunner

    from medgen.cli import app
    from medgen.io import load

    runner = CliRunner()
    run = tmp_path / "run"
    common = [
        "--channels",
        "4,8",
        "--patch-size",
        "16",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "2",
        "--batch-size",
        "2",
        "--no-progress",
        "--device",
        "cpu",
    ]
    res = runner.invoke(app, ["denoise", "train", str(nifti_cohort), "-o", str(run), *common])
    assert res.exit_code == 0, res.output
    assert {"config.json", "model.safetensors", "checkpoint.pt", "metrics.csv"} <= {
        p.name for p in run.iterdir()
    }
    out = tmp_path / "out"
    mr = get_testdata_file("MR_small.dcm")
    res = runner.invoke(
        app, ["denoise", "apply", str(run), str(nifti_cohort), mr, "-o", str(out), "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    src = load(nifti_cohort.parent / "s0.nii.gz")
    den = load(out / "img0.nii.gz")
    assert den.shape == src.shape
    np.testing.assert_allclose(np.asarray(den.affine), np.asarray(src.affine), atol=1e-5)
    assert len(pd.read_csv(out / "manifest.csv")) == 3
    dcm_files = sorted((out / "MR_small").iterdir())
    ds = pydicom.dcmread(dcm_files[0])
    assert "DERIVED" in ds.ImageType and "medgen denoise" in ds.DerivationDescription
    assert load(out / "MR_small").meta["spacing"] == pytest.approx(
        load(mr).meta["spacing"], abs=1e-4
    )

    srun = tmp_path / "srun"
    res = runner.invoke(
        app,
        [
            "superres",
            "train",
            str(nifti_cohort),
            "-o",
            str(srun),
            "--scale",
            "2",
            *common,
            "--lr-schedule",
            "cosine",
            "--workers",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    import json

    saved = json.loads((srun / "config.json").read_text())["train"]
    assert saved["lr_schedule"] == "cosine" and saved["num_workers"] == 1
    res = runner.invoke(
        app,
        [
            "superres",
            "apply",
            str(srun),
            str(nifti_cohort.parent / "s2.nii.gz"),
            "-o",
            str(tmp_path / "out_sr"),  # another model: another output folder (resume refuses)
            "--no-progress",
            "--self-ensemble",
        ],
    )
    assert res.exit_code == 0, res.output
    up = load(tmp_path / "out_sr" / "s2.nii.gz")
    assert tuple(up.shape) == (1, 128, 160, 4) and up.meta["spacing"] == pytest.approx(
        (1.0, 1.0, 3.0)
    )
    res = runner.invoke(app, ["superres", "apply", str(tmp_path / "nope"), mr, "-o", str(out)])
    # the app's error handler: one "Error: ..." line, exit code 2
    assert res.exit_code == 2, (res.output, res.exception)
    assert "Error: " in res.output and "not a trained superres run" in res.output
