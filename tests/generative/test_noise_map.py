"""Noise-aware (noise-level map) denoising and the noise estimator, on real images."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from medgen.errors import ConfigError, NoiseLevelWarning
from medgen.generative import Denoiser, SuperResolver, load
from medgen.generative.baselines import estimate_noise
from medgen.simulate import degrade

TINY = {"epochs": 1, "steps_per_epoch": 20, "batch_size": 4, "lr_g": 3e-3, "ema_decay": None}


def _real_slices() -> dict[str, np.ndarray]:
    from pydicom.data import get_testdata_file
    from skimage.data import camera

    from medgen.io import load as load_image

    out = {
        name[:-4]: np.asarray(load_image(get_testdata_file(name))[0])[..., 0]
        for name in ("MR_small.dcm", "CT_small.dcm")
    }
    out["camera"] = camera().astype(np.float32)
    return out


@pytest.mark.parametrize("sigma", [0.05, 0.1])
def test_noise_estimator_recovers_a_known_sigma_within_10_percent(sigma: float) -> None:
    for name, img in _real_slices().items():
        pair = degrade(img, noise="gaussian", sigma=sigma, seed=0)
        est = estimate_noise(np.asarray(pair.degraded))
        true = pair.params["sigma_abs"]
        assert abs(est / true - 1) < 0.10, (name, est, true)


@pytest.fixture(scope="module")
def noise_map_model(mni_slices: np.ndarray) -> Denoiser:
    den = Denoiser(
        channels=(4, 8), patch_size=16, noise="gaussian", sigma=(0.05, 0.1), noise_map=True
    )
    return den.fit(list(mni_slices), config=TINY, progress=False)


def test_the_noise_map_is_a_second_input_channel(
    noise_map_model: Denoiser, mni_slices: np.ndarray
) -> None:
    den = noise_map_model
    assert den.noise_map and den.in_channels == 2
    first = next(p for p in den.network.parameters() if p.ndim == 4)
    assert first.shape[1] == 2  # the first convolution sees image + map
    noisy = np.asarray(degrade(mni_slices[0], noise="gaussian", sigma=0.08, seed=1).degraded)
    blind = den.apply(noisy)
    assert blind.shape == noisy.shape
    # blind = the estimated level; a given sigma is used instead and changes the output
    est = den.apply(noisy, sigma=estimate_noise(noisy))
    np.testing.assert_allclose(blind, est, atol=1e-6)
    with pytest.warns(NoiseLevelWarning):  # 3x the level is outside the trained range
        other = den.apply(noisy, sigma=3 * estimate_noise(noisy))
    assert np.abs(other - blind).max() > 1e-4  # the map reaches the output


def test_a_noise_map_model_saves_and_loads(
    noise_map_model: Denoiser, mni_slices: np.ndarray, tmp_path
) -> None:
    noise_map_model.save(tmp_path / "m")
    again = load(tmp_path / "m")
    assert isinstance(again, Denoiser) and again.noise_map
    x = mni_slices[2]
    np.testing.assert_array_equal(again.apply(x, sigma=0.05), noise_map_model.apply(x, sigma=0.05))


def test_a_sigma_outside_the_trained_range_warns_with_the_range(
    noise_map_model: Denoiser, mni_slices: np.ndarray
) -> None:
    x = mni_slices[1]
    with pytest.warns(NoiseLevelWarning, match=r"0\.050-0\.100"):
        noise_map_model.apply(x, sigma=0.9 * float(np.ptp(x)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoiseLevelWarning)
        noise_map_model.apply(x, sigma=0.07 * float(np.ptp(x)))
    with pytest.raises(ConfigError, match="sigma must be"):
        noise_map_model.apply(x, sigma=-1.0)


def test_sigma_is_refused_by_models_without_a_noise_map(mni_slices: np.ndarray) -> None:
    sr = SuperResolver(channels=(4, 8), patch_size=16)
    with pytest.raises(ConfigError, match="noise-level map"):
        sr.apply(mni_slices[0], sigma=0.1)
    with pytest.raises(ConfigError, match="model='unet'"):
        Denoiser(model="vae", channels=(4, 8), patch_size=16, noise_map=True)


def test_poisson_gaussian_noise_range_covers_the_photon_noise() -> None:
    den = Denoiser(
        channels=(4, 8),
        patch_size=16,
        noise="poisson_gaussian",
        sigma=(0.002, 0.01),
        photons=(1000.0, 5000.0),
        noise_map=True,
    )
    lo, hi = den.noise_range
    # photon noise at mid intensity: sqrt(0.3 / photons) of the range
    assert lo <= np.sqrt(0.3 / 5000.0) and hi >= np.sqrt(0.3 / 1000.0)
