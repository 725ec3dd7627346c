"""``SuperResolver``: learned x2 / x4 super-resolution, in plane or through plane (thick slices).

The process: a clean image is down-sampled by block averaging (:func:`medgen.simulate.degrade`,
``downsample=`` in plane or ``slice_thickness=`` through plane), interpolated back to the fine
grid (bicubic in 2D, trilinear in 3D: the classical baseline, :func:`~medgen.generative.baselines.upsample`),
and the generator learns the residual between that interpolation and the truth.

Through plane there are two models. A 3D model (``spatial_dims=3``) refines the trilinear
interpolation of the whole volume. A 2D model (``spatial_dims=2``) works on the planes that
contain Z: it trains on (X, Z) and (Y, Z) planes, and on any 2D image with one of its axes
treated as Z (block-averaged along it), and refines the cubic B-spline interpolation along Z
(the ``cubic_z`` baseline, :func:`~medgen.generative.quality.upsample_z`). On a volume it
restores every (Y, Z) plane and every (X, Z) plane and averages the two results. At inference the
output lies on the fine grid: its affine has voxel sizes divided by the factor, with the origin
moved so that the fine voxels tile the coarse ones exactly (voxel centres at
``(i + 0.5) / f - 0.5`` in coarse index units).

Example (tiny, CPU, seconds):
    >>> import numpy as np
    >>> from skimage.data import camera
    >>> from medgen.generative import SuperResolver
    >>> img = camera()[::4, ::4].astype(np.float32) / 255.0
    >>> sr = SuperResolver(scale=2, channels=(4, 8), patch_size=16)
    >>> _ = sr.fit([img], config={"epochs": 1, "steps_per_epoch": 2, "batch_size": 2}, progress=False)
    >>> sr.apply(img[::2, ::2]).shape
    (128, 128)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from medgen.errors import ConfigError, MedgenValueError
from medgen.generative._model import register_model_kind
from medgen.generative._restorer import (
    Restorer,
    default_patch_size,
    robust_range,
    task_config,
)

__all__ = ["SCALES", "SuperResolver", "output_affine"]

SCALES = (2, 4)
AXES = ("inplane", "through")


def output_affine(affine: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """The affine of a grid refined by integer ``factors`` per voxel axis (same field of view).

    Fine voxel ``i`` has its centre at coarse index ``(i + 0.5) / f - 0.5``.
    """
    a = np.asarray(affine, dtype=np.float64)
    n = a.shape[0] - 1
    s = np.eye(n + 1)
    for ax, f in enumerate(factors):
        s[ax, ax] = 1.0 / f
        s[ax, n] = (1.0 - f) / (2.0 * f)
    return a @ s


@register_model_kind("superres")
class SuperResolver(Restorer):
    """Learned super-resolution by ``scale`` (2 or 4), in plane or through plane.

    Args:
        scale: 2 or 4.
        axes: ``"inplane"`` (axes X and Y; 2D or 3D models) or ``"through"`` (axis Z: thick
            slices; a 3D model, or a 2D model of the planes that contain Z).
        model, spatial_dims, channels, patch_size, discriminator_channels, self_ensemble,
            model_kwargs: as
            for :class:`~medgen.generative.Denoiser`. ``patch_size`` is on the fine grid and must
            be divisible by ``scale``.
    """

    kind: ClassVar[str] = "superres"
    task: ClassVar[str] = "superres"
    # L1 + 0.1 (1 - SSIM) (TrainConfig's defaults) at lr 3e-3: the benchmark's recipe
    train_defaults: ClassVar[dict[str, Any]] = {"lr_g": 3e-3}

    def __init__(
        self,
        *,
        scale: int = 2,
        axes: str = "inplane",
        model: str = "unet",
        spatial_dims: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128),
        patch_size: int | None = None,
        discriminator_channels: int = 16,
        self_ensemble: bool = False,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(scale, bool) or scale not in SCALES:
            raise ConfigError(f"scale must be one of {SCALES}, not {scale!r}.")
        if axes not in AXES:
            raise ConfigError(f"axes must be one of {AXES}, not {axes!r}.")
        if patch_size is None:
            patch_size = default_patch_size(spatial_dims)
        if isinstance(patch_size, int) and patch_size % scale:
            raise ConfigError(
                f"patch_size={patch_size} must be divisible by scale={scale}; try "
                f"{patch_size - patch_size % scale + scale}."
            )
        super().__init__(task_config(locals(), {"scale": int(scale), "axes": axes}))

    @property
    def scale(self) -> int:
        """The up-sampling factor."""
        return int(self.config.task_options["scale"])

    @property
    def axes(self) -> str:
        """``"inplane"`` or ``"through"``."""
        return str(self.config.task_options["axes"])

    @property
    def planar_through(self) -> bool:
        """A 2D through-plane model: it restores the planes of a volume that contain Z."""
        return self.axes == "through" and self.config.spatial_dims == 2

    def factors(self, ndim: int) -> tuple[int, ...]:
        """Per-axis factors for an image with ``ndim`` spatial axes (a 2D through-plane model's
        2D images are planes ``(X or Y, Z)``)."""
        f = self.scale
        if self.axes == "through":
            if ndim == 2 and self.planar_through:
                return (1, f)
            if ndim != 3:
                raise MedgenValueError(
                    f"through-plane super-resolution needs a volume (X, Y, Z), not a {ndim}D image."
                )
            return (1, 1, f)
        return (f, f) if ndim == 2 else (f, f, 1)

    def downsample(
        self, clean: np.ndarray, *, seed: int | np.random.Generator | None = 0
    ) -> np.ndarray:
        """The low-resolution version of ``clean`` (X, Y[, Z]) this model is trained to invert.

        Raises:
            MedgenValueError: a size along a down-sampled axis is not a multiple of ``scale``.
        """
        from medgen.simulate import degrade

        arr = np.asarray(clean, dtype=np.float32)
        for ax, f in enumerate(self.factors(arr.ndim)):
            if f > 1 and arr.shape[ax] % f:
                raise MedgenValueError(
                    f"super-resolution x{f}: axis {ax} of the image has {arr.shape[ax]} voxels, "
                    f"not a multiple of the scale {f}; crop it to "
                    f"{arr.shape[ax] - arr.shape[ax] % f} first."
                )
        if self.axes == "through" and arr.ndim == 2:  # a plane (X or Y, Z)
            out = np.asarray(degrade(arr[None], slice_thickness=self.scale, seed=seed).degraded)[0]
        elif self.axes == "through":
            out = degrade(arr, slice_thickness=self.scale, seed=seed).degraded
        else:
            out = degrade(arr, downsample=self.scale, seed=seed).degraded
        return np.asarray(out, dtype=np.float32)

    def _prepare(self, arr: np.ndarray) -> np.ndarray:
        from medgen.generative.baselines import upsample

        if self.planar_through:  # cubic B-spline along Z (the cubic_z baseline)
            from medgen.generative.quality import upsample_z

            vol = arr if arr.ndim == 3 else arr[None]
            out = upsample_z(vol, self.scale, order=3)
            return out if arr.ndim == 3 else out[0]
        return upsample(arr, self.factors(arr.ndim))

    def _output_affine(self, affine: np.ndarray, ndim: int) -> np.ndarray:
        fac = self.factors(ndim)
        return output_affine(affine, (*fac, *(1,) * (3 - len(fac))))

    def _plane_axes(self) -> tuple[int, ...]:
        return (0, 1) if self.planar_through else super()._plane_axes()

    def _ensemble_rotations(self) -> tuple[int, ...]:
        # a plane (X or Y, Z) must keep Z where it is: flips only (rotations by 0 and 180 degrees)
        return (0, 2) if self.planar_through else super()._ensemble_rotations()

    def _slices(self, arr: np.ndarray) -> list[np.ndarray]:
        if not (self.planar_through and arr.ndim == 3):
            return super()._slices(arr)
        from medgen.generative.objectives._common import foreground_slices

        # the planes that contain Z: (Y, Z) planes along X, then (X, Z) planes along Y
        return [
            *foreground_slices(np.moveaxis(arr, 0, -1)),
            *foreground_slices(np.moveaxis(arr, 1, -1)),
        ]

    def _make_pair(
        self, clean: np.ndarray, degraded: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        if degraded is not None:
            raise ConfigError(
                "SuperResolver trains on clean images (pairs are made by down-sampling); "
                "drop the noisy/clean pair columns from the manifest."
            )
        if self.planar_through and clean.ndim == 2 and rng.random() < 0.5:
            clean = clean.T  # either axis of a plane or a 2D image plays Z
        fac = self.factors(clean.ndim)
        src = clean
        if clean.ndim == 3:  # a context crop around one patch
            ctx = [min(2 * self.config.patch_size, s) for s in clean.shape]
            ctx = [c - c % f for c, f in zip(ctx, fac, strict=True)]
            starts = [int(rng.integers(s - c + 1)) for s, c in zip(clean.shape, ctx, strict=True)]
            src = clean[tuple(slice(a, a + c) for a, c in zip(starts, ctx, strict=True))]
        else:
            src = clean[
                : clean.shape[0] - clean.shape[0] % fac[0],
                : clean.shape[1] - clean.shape[1] % fac[1],
            ]
        low = self.downsample(src, seed=rng)
        up = self._prepare(low)
        lo, hi = robust_range(low, self.config.norm_percentiles)
        x = (up - lo) / (hi - lo)
        y = (src - lo) / (hi - lo)
        xs, ys = self._crop([x, y], rng, multiple=fac)
        return xs, ys
