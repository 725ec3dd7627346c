"""Preprocessing and augmentation presets composed from MONAI (and TorchIO) transforms.

All presets act on one channel-first image ``Cx[SPATIAL DIMS]`` (a ``torch.Tensor`` or
``MetaTensor``) and return a tensor of the same shape. Random presets take a ``seed`` and are
reproducible: the same seed gives the same sequence of draws.

Presets (``augment=`` in :func:`medgen.classify.train`):

========  ====================================================================================
name      transforms
========  ====================================================================================
none      identity
light     flip along the first spatial axis (p=0.5), small affine (rotate ±0.15 rad, scale ±10 %,
          p=0.5, border padding)
medium    light + Gaussian noise (σ ≤ 0.05, p=0.3) + gamma contrast (0.8-1.25, p=0.3) +
          TorchIO bias field (coefficients ≤ 0.3, p=0.3)
strong    flip along the first spatial axis (p=0.5), affine (p=0.8: rotate ±0.3 rad, scale
          ±20 %, translate ±10 % of the size, border padding), Gaussian noise (σ ≤ 0.05,
          p=0.3), gamma contrast (0.7-1.4, p=0.3), intensity scale ±10 % (p=0.3), one
          coarse dropout hole of 1/8-1/4 of the size (p=0.3); for training ViTs from scratch
========  ====================================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from medgen._internal.suggest import did_you_mean
from medgen.errors import ConfigError

__all__ = ["AUGMENT_PRESETS", "augmentation", "normalize_intensity", "resize"]

AUGMENT_PRESETS = ("none", "light", "medium", "strong")


class _TorchIOBiasField:
    """TorchIO's ``RandomBiasField`` on a 2D or 3D channel-first tensor, seeded per call."""

    def __init__(self, *, coefficients: float, prob: float, spatial_dims: int, seed: int) -> None:
        import numpy as np

        self.coefficients = coefficients
        self.prob = prob
        self.spatial_dims = spatial_dims
        self.rng = np.random.default_rng(seed)

    def __call__(self, img: Any) -> Any:
        import torch
        import torchio as tio

        if self.rng.random() >= self.prob:
            return img
        torch_seed = int(self.rng.integers(0, 2**31 - 1))
        x = torch.as_tensor(img).float()
        x4 = x.unsqueeze(-1) if self.spatial_dims == 2 else x
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch_seed)
            out = tio.RandomBiasField(coefficients=self.coefficients)(x4)
        out = torch.as_tensor(out)
        return out.squeeze(-1) if self.spatial_dims == 2 else out


def augmentation(
    preset: str, *, spatial_dims: int = 2, seed: int | None = 0
) -> Callable[[Any], Any]:
    """Build an augmentation preset.

    Args:
        preset: one of :data:`AUGMENT_PRESETS`.
        spatial_dims: 2 or 3.
        seed: seeds the preset's random state (recorded by the caller).

    Returns:
        A callable mapping a ``Cx[SPATIAL DIMS]`` tensor to an augmented tensor of the same shape.

    Raises:
        ConfigError: unknown preset (the message lists the presets and the closest one).
    """
    from monai.transforms import (
        Compose,
        Identity,
        RandAdjustContrast,
        RandAffine,
        RandFlip,
        RandGaussianNoise,
    )

    if preset not in AUGMENT_PRESETS:
        hint = did_you_mean(preset, AUGMENT_PRESETS)
        raise ConfigError(
            f"Unknown augment preset {preset!r}.{hint} Choose one of {', '.join(AUGMENT_PRESETS)}."
        )
    if preset == "none":
        return Identity()
    if preset == "strong":
        return _Strong(spatial_dims=spatial_dims, seed=seed)
    rot: float | Sequence[float] = 0.15 if spatial_dims == 2 else (0.15, 0.15, 0.15)
    steps: list[Any] = [
        RandFlip(prob=0.5, spatial_axis=0),
        RandAffine(
            prob=0.5,
            rotate_range=rot,
            scale_range=0.1,
            padding_mode="border",
        ),
    ]
    if preset == "medium":
        steps += [
            RandGaussianNoise(prob=0.3, std=0.05),
            RandAdjustContrast(prob=0.3, gamma=(0.8, 1.25)),
            _TorchIOBiasField(
                coefficients=0.3, prob=0.3, spatial_dims=spatial_dims, seed=(seed or 0) + 1
            ),
        ]
    comp = Compose(steps, lazy=False)
    comp.set_random_state(seed=seed)
    return comp  # type: ignore[no-any-return]


class _Strong:
    """The ``strong`` preset (see the module docstring). Its translation and dropout sizes are
    fractions of the image, so the MONAI ``Compose`` is built at the first image of each shape
    (the first shape draws from ``seed``, the ``k``-th new one from ``seed + k``)."""

    def __init__(self, *, spatial_dims: int, seed: int | None) -> None:
        self.spatial_dims = spatial_dims
        self.seed = seed
        self.by_shape: dict[tuple[int, ...], Any] = {}

    def _build(self, shape: tuple[int, ...]) -> Any:
        from monai.transforms import (
            Compose,
            RandAdjustContrast,
            RandAffine,
            RandCoarseDropout,
            RandFlip,
            RandGaussianNoise,
            RandScaleIntensity,
        )

        rot: float | Sequence[float] = 0.3 if self.spatial_dims == 2 else (0.3, 0.3, 0.3)
        comp = Compose(
            [
                RandFlip(prob=0.5, spatial_axis=0),
                RandAffine(
                    prob=0.8,
                    rotate_range=rot,
                    scale_range=0.2,
                    translate_range=[0.1 * s for s in shape],
                    padding_mode="border",
                ),
                RandGaussianNoise(prob=0.3, std=0.05),
                RandAdjustContrast(prob=0.3, gamma=(0.7, 1.4)),
                RandScaleIntensity(prob=0.3, factors=0.1),
                RandCoarseDropout(
                    holes=1,
                    spatial_size=[max(1, s // 8) for s in shape],
                    max_spatial_size=[max(1, s // 4) for s in shape],
                    fill_value=0.0,
                    prob=0.3,
                ),
            ],
            lazy=False,
        )
        k = len(self.by_shape)
        comp.set_random_state(seed=None if self.seed is None else self.seed + k)
        return comp

    def __call__(self, img: Any) -> Any:
        shape = tuple(int(s) for s in img.shape[1:])
        if shape not in self.by_shape:
            self.by_shape[shape] = self._build(shape)
        return self.by_shape[shape](img)


def normalize_intensity(img: Any) -> Any:
    """Z-score one image over all its voxels: ``(x - mean) / std`` (std floored at 1e-6).

    Args:
        img: ``Cx[SPATIAL DIMS]`` tensor.
    """
    import torch

    x = torch.as_tensor(img).float()
    return (x - x.mean()) / x.std().clamp_min(1e-6)


def resize(img: Any, size: Sequence[int]) -> Any:
    """Resize a ``Cx[SPATIAL DIMS]`` tensor to ``size`` with area (2D/3D) interpolation (MONAI)."""
    from monai.transforms import Resize

    return Resize(spatial_size=tuple(int(s) for s in size), mode="area")(img)
