"""2D through-plane super-resolution (``SuperResolver(axes="through", spatial_dims=2)``): a 2D
model of the planes that contain Z, trained on block-averaged planes and applied to a volume's
(Y, Z) and (X, Z) planes, refining the cubic-spline interpolation along Z."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medgen.errors import MedgenValueError
from medgen.generative import SuperResolver, evaluate, load
from medgen.generative._restorer import robust_range
from medgen.generative.quality import upsample_z
from medgen.generative.superres import output_affine

TINY = {"channels": (4, 8), "patch_size": 16}
FAST = {"epochs": 1, "steps_per_epoch": 3, "batch_size": 2}


@pytest.fixture(scope="module")
def volume(mni: np.ndarray) -> np.ndarray:
    """A 40x48x24 block of the 2 mm MNI template (0..1)."""
    v = mni / mni.max()
    return np.ascontiguousarray(v[25:65, 30:78, 30:54], dtype=np.float32)


def test_degradation_and_input_are_along_z_only(volume: np.ndarray) -> None:
    sr = SuperResolver(scale=4, axes="through", spatial_dims=2, **TINY)
    assert sr.planar_through and sr.factors(3) == (1, 1, 4) and sr.factors(2) == (1, 4)
    low = sr.downsample(volume)
    assert low.shape == (40, 48, 6)
    np.testing.assert_allclose(low[..., 1], volume[..., 4:8].mean(axis=-1), atol=1e-6)
    plane = volume[:, 10, :]  # an (X, Z) plane: averaged along its second axis
    np.testing.assert_allclose(sr.downsample(plane), low[:, 10, :], atol=1e-6)
    # the network's input is the cubic_z baseline: an untrained model (ReZero gain 0) returns it
    np.testing.assert_allclose(sr.apply(low), upsample_z(low, 4, order=3), atol=1e-5)
    np.testing.assert_allclose(sr.apply(low[:, 10, :]), upsample_z(low, 4)[:, 10, :], atol=1e-5)
    t = evaluate(sr, [volume], baselines=["cubic_z"], progress=False)
    psnr = t.set_index("method")["psnr"]
    assert psnr["model"] == pytest.approx(psnr["cubic_z"], abs=1e-3)
    with pytest.raises(MedgenValueError, match="not a multiple of the scale 4"):
        sr.downsample(volume[..., :22])


def test_training_planes_contain_z(volume: np.ndarray) -> None:
    sr = SuperResolver(scale=2, axes="through", spatial_dims=2, **TINY)
    planes = sr._slices(volume)
    shapes = {p.shape for p in planes}
    assert shapes == {(48, 24), (40, 24)}  # (Y, Z) planes along X, (X, Z) planes along Y
    assert 0 < len(planes) <= 40 + 48
    along_x = [volume[i] for i in range(40)]
    along_y = [volume[:, j] for j in range(48)]
    for p in planes:  # every plane is one of the volume's own planes through Z
        pool = along_x if p.shape == (48, 24) else along_y
        assert any(np.array_equal(p, q) for q in pool)
    # a 2D image is one plane; pairs are block-averaged along the axis that plays Z
    rng = np.random.default_rng(0)
    x, y = sr._make_pair(volume[:, :, 5], None, rng)
    assert x.shape == y.shape == (16, 16)


def test_fit_apply_volume_geometry_save_load(tmp_path: Path, volume: np.ndarray) -> None:
    from monai.data import MetaTensor

    sr = SuperResolver(scale=4, axes="through", spatial_dims=2, **TINY)
    sr.fit([volume, volume[:, :, 3]], config=FAST, progress=False)  # volumes and 2D images mix
    assert sr.network.gain.item() != 0.0  # it trained
    low = sr.downsample(volume)
    aff = np.diag([2.0, 2.0, 8.0, 1.0])
    aff[:3, 3] = (-10.0, 4.0, 30.0)
    img = MetaTensor(torch.from_numpy(low[None]), affine=torch.from_numpy(aff))
    out = sr.apply(img)  # no slices= flag: the model slices along X and Y itself
    assert tuple(out.shape) == (1, 40, 48, 24)
    assert out.meta["spacing"] == pytest.approx((2.0, 2.0, 2.0))
    np.testing.assert_allclose(np.asarray(out.affine), output_affine(aff, (1, 1, 4)))
    # the volume's result is the mean of its (Y, Z)-plane and (X, Z)-plane restorations
    with torch.no_grad():
        sr.network.gain.fill_(1.0)  # a large correction, so that the two differ clearly
    lo, hi = robust_range(low, sr.config.norm_percentiles)
    x = torch.from_numpy((upsample_z(low, 4) - lo) / (hi - lo))
    with torch.no_grad():
        along_x = sr.network(x[:, None]).image[:, 0]  # (Y, Z) planes as a batch along X
        along_y = sr.network(x.permute(1, 0, 2)[:, None]).image[:, 0].permute(1, 0, 2)
    assert float((along_x - along_y).abs().max()) > 1e-3
    want = ((along_x + along_y) / 2).numpy() * (hi - lo) + lo
    np.testing.assert_allclose(sr.apply(low), want, atol=1e-5)
    sr.save(tmp_path / "run")
    back = load(tmp_path / "run")
    assert back.axes == "through" and back.config.spatial_dims == 2
    np.testing.assert_allclose(back.apply(low), sr.apply(low), atol=1e-6)


def test_self_ensemble_keeps_z_in_place(volume: np.ndarray) -> None:
    sr = SuperResolver(scale=2, axes="through", spatial_dims=2, self_ensemble=True, **TINY)
    with torch.no_grad():
        sr.network.gain.fill_(0.5)  # not the identity: flips matter
    shapes: list[tuple[int, ...]] = []
    restore = sr._restore

    def spy(batch: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(batch.shape))
        return restore(batch)

    sr._restore = spy  # type: ignore[method-assign]
    low = sr.downsample(volume)
    out = sr.apply(low[5])  # one (Y, Z) plane, 48 x 24 on the fine grid: not square
    assert out.shape == (48, 24)
    assert shapes == [(1, 1, 48, 24)] * 4  # 4 flips, never a quarter turn (Z stays the last axis)
    plain = SuperResolver(scale=2, axes="through", spatial_dims=2, **TINY)
    plain.network.load_state_dict(sr.network.state_dict())
    x = torch.from_numpy(np.ascontiguousarray(upsample_z(low, 2)[5], dtype=np.float32))[None, None]
    flips = [(), (2,), (3,), (2, 3)]
    want = sum(
        plain._restore(x.flip(d) if d else x).flip(d) if d else plain._restore(x) for d in flips
    )
    got = sr(x).image
    torch.testing.assert_close(got, want / 4, atol=1e-6, rtol=0)


def test_3d_through_model_unchanged(volume: np.ndarray) -> None:
    """The 3D through-plane model still refines the trilinear interpolation of the volume."""
    from medgen.generative.baselines import upsample

    sr = SuperResolver(scale=2, axes="through", spatial_dims=3, **TINY)
    assert not sr.planar_through
    low = sr.downsample(volume)
    np.testing.assert_allclose(sr.apply(low), upsample(low, (1, 1, 2)), atol=1e-5)
