"""medgen.generative.quality: low-dose CT noise (photons), through-plane SR and its baselines.

Real images: pydicom's CT_small (HU) and a crop of nilearn's MNI152 template (2 mm).
"""

from __future__ import annotations

import numpy as np
import pytest

from medgen.errors import ConfigError, MedgenValueError
from medgen.generative import SuperResolver, evaluate
from medgen.generative.baselines import upsample
from medgen.generative.quality import image_metrics, upsample_z


@pytest.fixture(scope="module")
def ct_slice() -> np.ndarray:
    """pydicom's CT_small in HU: ``(128, 128)``."""
    from pydicom.data import get_testdata_file

    from medgen.io import load

    return np.asarray(load(get_testdata_file("CT_small.dcm")))[0, :, :, 0]


@pytest.fixture(scope="module")
def mni_crop(mni: np.ndarray) -> np.ndarray:
    """The MNI152 head at 2 mm, 48 axial slices (a multiple of 4): ``(64, 80, 48)``."""
    return mni[14:78, 16:96, 20:68]


def test_poisson_gaussian_photons_are_passed_to_degrade(ct_slice: np.ndarray) -> None:
    from skimage.metrics import peak_signal_noise_ratio

    from medgen.simulate import degrade

    def table(photons: float):  # type: ignore[no-untyped-def]
        return evaluate(
            None,
            [ct_slice],
            task="denoise",
            noise="poisson_gaussian",
            sigma=0.001,
            photons=photons,
            baselines=["tv"],
            seed=5,
            progress=False,
        )

    low, high = table(2_000.0), table(50_000.0)
    noisy = np.asarray(
        degrade(ct_slice, noise="poisson_gaussian", sigma=0.001, photons=2_000.0, seed=5).degraded
    )
    dr = float(ct_slice.max() - ct_slice.min())
    row = low[low.method == "input"].iloc[0]
    assert row["psnr"] == pytest.approx(peak_signal_noise_ratio(ct_slice, noisy, data_range=dr))
    assert row["photons"] == 2_000.0 and row["noise"] == "poisson_gaussian"
    # fewer photons, more noise; the noise s.d. follows sqrt(range * (x - min) / photons)
    assert high[high.method == "input"]["psnr"].iloc[0] > row["psnr"] + 10
    soft = (ct_slice > -100) & (ct_slice < 100)
    expected = np.sqrt(dr * (ct_slice[soft] - ct_slice.min()) / 2_000.0).mean()
    assert np.std((noisy - ct_slice)[soft]) == pytest.approx(expected, rel=0.1)
    assert (low[low.method == "tv"]["psnr_fg"].to_numpy() > row["psnr_fg"]).all()
    gauss = evaluate(None, [ct_slice], task="denoise", baselines=[], progress=False)
    assert gauss["photons"].isna().all()


def test_upsample_z_reproduces_linear_z_on_the_fine_grid() -> None:
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(5, 6, 1))
    coarse_z = np.arange(32, dtype=np.float64)
    vol = (xy + 0.1 * coarse_z).astype(np.float32)  # linear in z, any pattern in plane
    fine = upsample_z(vol, 4)
    assert fine.shape == (5, 6, 128) and fine.dtype == np.float32
    # fine slice i at coarse index (i + 0.5) / 4 - 0.5: the grid of output_affine
    centre = (np.arange(128) + 0.5) / 4 - 0.5
    truth = xy + 0.1 * centre
    inner = slice(32, -32)  # 8 coarse slices from the mirrored ends
    np.testing.assert_allclose(fine[..., inner], truth[..., inner], atol=1e-4)
    # the model's own input (linear along Z) lies on the same grid
    np.testing.assert_allclose(upsample(vol, (1, 1, 4))[..., 4:-4], truth[..., 4:-4], atol=1e-4)
    from medgen.generative.superres import output_affine

    aff = output_affine(np.diag([1.0, 1.0, 4.0, 1.0]), (1, 1, 4))
    np.testing.assert_allclose(aff[2, 2] * np.arange(128) + aff[2, 3], 4 * centre)
    with pytest.raises(MedgenValueError, match=r"upsample_z: expected a volume"):
        upsample_z(vol[..., 0], 4)
    with pytest.raises(MedgenValueError, match=r"factor must be a positive integer, not 0"):
        upsample_z(vol, 0)


def test_through_plane_baselines_cubic_z_beats_linear_and_nearest(mni_crop: np.ndarray) -> None:
    tab = evaluate(
        None,
        [mni_crop],
        task="superres",
        scale=4,
        axes="through",
        baselines=["cubic_z", "linear_z", "nearest"],
        progress=False,
    ).set_index("method")
    assert (tab["axes"] == "through").all() and (tab["scale"] == 4).all()
    assert (tab["n_slices"] == 48).all()
    for metric in ("psnr", "psnr_fg"):
        assert tab.loc["cubic_z", metric] > tab.loc["linear_z", metric] > tab.loc["nearest", metric]
    assert tab.loc["cubic_z", "psnr"] > tab.loc["linear_z", "psnr"] + 0.3
    # the table's number is the metric of the baseline on the block-averaged volume
    low = mni_crop.reshape(64, 80, 12, 4).mean(-1)
    assert tab.loc["cubic_z", "psnr"] == pytest.approx(
        image_metrics(mni_crop, upsample_z(low, 4))["psnr"], abs=1e-3
    )
    default = evaluate(None, [mni_crop], task="superres", scale=4, axes="through", progress=False)
    assert list(default["method"]) == ["cubic_z"]


def test_through_plane_model_is_on_the_baseline_grid(mni_crop: np.ndarray) -> None:
    sr = SuperResolver(scale=4, axes="through", spatial_dims=3, channels=(4, 8), patch_size=16)
    vol = mni_crop[:, :, 1:46]  # 45 slices: cropped to 44
    tab = evaluate(sr, [vol], progress=False)
    assert list(tab["method"]) == ["cubic_z", "model"]
    assert (tab["n_slices"] == 44).all() and np.isfinite(tab["psnr_fg"]).all()
    with pytest.raises(ConfigError, match=r"axes='inplane' but the model super-resolves"):
        evaluate(sr, [vol], axes="inplane", progress=False)


def test_sr_baseline_and_axes_errors(mni_crop: np.ndarray) -> None:
    with pytest.raises(ConfigError, match=r"\['cubic_z'\] for super-resolution axes='inplane'"):
        evaluate(None, [mni_crop[..., 0]], task="superres", baselines=["cubic_z"], progress=False)
    with pytest.raises(ConfigError, match=r"\['bicubic'\] for super-resolution axes='through'"):
        evaluate(
            None, [mni_crop], task="superres", axes="through", baselines=["bicubic"], progress=False
        )
    with pytest.raises(ConfigError, match=r"axes must be one of \('inplane', 'through'\)"):
        evaluate(None, [mni_crop], task="superres", axes="z", progress=False)
    with pytest.raises(MedgenValueError, match=r"needs a volume \(X, Y, Z\), not a 2D image"):
        evaluate(None, [mni_crop[..., 0]], task="superres", axes="through", progress=False)
    with pytest.raises(ConfigError, match=r"choose from \['nl_means'"):
        evaluate(None, [mni_crop[..., 0]], task="denoise", baselines=["cubic_z"], progress=False)


def test_2d_model_on_a_volume_is_evaluated_slice_by_slice(mni_crop: np.ndarray) -> None:
    from medgen.generative import Denoiser

    den = Denoiser(channels=(4, 8), patch_size=16)
    vol = mni_crop[..., 20:23]
    tab = evaluate(den, [vol], sigma=0.05, baselines=[], progress=False).set_index("method")
    assert (tab["n_slices"] == 3).all()
    assert tab.loc["model", "seconds_per_slice"] == pytest.approx(tab.loc["model", "seconds"] / 3)
    assert np.isfinite(tab.loc["model", ["psnr", "psnr_fg", "ssim_fg"]].astype(float)).all()
