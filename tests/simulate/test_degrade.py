"""Tests of medgen.simulate.degrade: noise statistics, shapes, geometry, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medgen.errors import MedgenValueError
from medgen.simulate import degrade, iter_subjects, preset


def _flat(value: float, shape: tuple[int, ...] = (256, 256)) -> np.ndarray:
    img = np.full(shape, value, dtype=np.float32)
    img[0, 0] = 0.0  # intensity range = value - 0 = value
    return img


def test_gaussian_noise_sigma_is_relative_to_range() -> None:
    clean, noisy = degrade(_flat(200.0), noise="gaussian", sigma=0.05, seed=0)
    resid = (noisy - clean)[1:, 1:]
    assert abs(resid.std() / 10.0 - 1.0) < 0.02  # 0.05 * range 200
    assert abs(resid.mean()) < 0.1


def test_rician_noise_bias_matches_theory() -> None:
    img = np.zeros((256, 512), dtype=np.float32)
    img[:, 256:] = 1.0
    pair = degrade(img, noise="rician", sigma=0.1, seed=1)
    _, noisy = pair
    s = 0.1
    background = noisy[:, :256]
    # magnitude of pure noise is Rayleigh: mean sigma * sqrt(pi / 2)
    assert abs(background.mean() / (s * np.sqrt(np.pi / 2)) - 1.0) < 0.02
    # bright signal A >> sigma: mean ~ sqrt(A^2 + sigma^2) (Rician bias), sd ~ sigma
    signal = noisy[:, 256:]
    assert abs(signal.mean() - np.sqrt(1.0 + s**2)) < 0.005
    assert abs(signal.std() / s - 1.0) < 0.03
    assert pair.params["sigma_abs"] == pytest.approx(0.1)


def test_poisson_gaussian_variance_grows_with_intensity() -> None:
    img = np.zeros((200, 400), dtype=np.float32)
    img[:, 200:] = 1.0
    _, noisy = degrade(img, noise="poisson_gaussian", sigma=0.01, photons=100.0, seed=2)
    dark, bright = noisy[:, :200], noisy[:, 200:]
    assert abs(dark.std() / 0.01 - 1.0) < 0.05  # read-out noise only
    # bright: Poisson(100)/100 has variance 1/100, plus read-out 1e-4
    assert abs(bright.var() / (0.01 + 1e-4) - 1.0) < 0.05
    assert abs(bright.mean() - 1.0) < 0.01


def test_downsample_and_thick_slices_shapes_and_means() -> None:
    vol = np.random.default_rng(0).random((32, 32, 16)).astype(np.float32)
    clean, low = degrade(vol, downsample=4, slice_thickness=2, seed=0)
    assert clean.shape == (32, 32, 16) and low.shape == (8, 8, 8)
    np.testing.assert_allclose(low[0, 0, 0], vol[:4, :4, :2].mean(), rtol=1e-5)
    _, restored = degrade(vol, downsample=2, restore_shape=True, seed=0)
    assert restored.shape == vol.shape
    with_channel = np.stack([vol, vol])
    _, low_c = degrade(with_channel, downsample=2, channel_axis=0, seed=0)
    assert low_c.shape == (2, 16, 16, 16)


def test_random_parameters_are_drawn_recorded_and_reproducible() -> None:
    img = next(iter_subjects(preset("tiny"), seed=0)).image
    a = degrade(img, noise="rician", sigma=(0.02, 0.1), downsample=[2, 4], blur=(0.5, 1.5), seed=7)
    b = degrade(img, noise="rician", sigma=(0.02, 0.1), downsample=[2, 4], blur=(0.5, 1.5), seed=7)
    np.testing.assert_array_equal(a.degraded, b.degraded)
    assert a.params == b.params
    assert 0.02 <= a.params["sigma"] <= 0.1 and 0.5 <= a.params["blur"] <= 1.5
    assert a.params["downsample"] in (2, 4)
    assert a.degraded.shape == tuple(s // a.params["downsample"] for s in img.shape)
    c = degrade(img, noise="rician", sigma=(0.02, 0.1), downsample=[2, 4], seed=8)
    assert c.params["sigma"] != a.params["sigma"]
    assert a.clean is a[0]


def test_metatensor_keeps_world_geometry() -> None:
    affine = torch.tensor(
        [[2.0, 0, 0, -10.0], [0, 2.0, 0, 5.0], [0, 0, 3.0, 1.0], [0, 0, 0, 1]], dtype=torch.float64
    )
    mt = MetaTensor(torch.rand(1, 16, 16, 8), affine=affine)
    clean, low = degrade(mt, downsample=2, slice_thickness=2, noise="gaussian", sigma=0.01, seed=0)
    assert isinstance(low, MetaTensor) and tuple(low.shape) == (1, 8, 8, 4)
    np.testing.assert_allclose(np.diag(np.asarray(low.affine))[:3], [4.0, 4.0, 6.0])
    # the first low-res voxel sits at the centre of the block it averages
    np.testing.assert_allclose(np.asarray(low.affine)[:3, 3], [-9.0, 6.0, 2.5])
    assert low.meta["degradation"]["downsample"] == 2
    assert torch.equal(clean.as_tensor(), mt.as_tensor())
    _, t_low = degrade(torch.rand(16, 16), noise="gaussian", sigma=0.1, seed=0)
    assert isinstance(t_low, torch.Tensor) and t_low.dtype == torch.float32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise": "speckle"}, "noise must be None or one of"),
        ({"downsample": 3}, "not a multiple of the factor 3"),
        ({"slice_thickness": 2}, "slice_thickness needs a 3D image"),
        ({"sigma": (0.2, 0.1), "noise": "gaussian"}, "range must satisfy 0 <= low <= high"),
        ({"downsample": 1.5}, "positive integer factor"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(MedgenValueError) as info:
        degrade(np.zeros((32, 32), dtype=np.float32), seed=0, **kwargs)
    assert message in str(info.value)
