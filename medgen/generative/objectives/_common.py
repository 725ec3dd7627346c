"""Pieces the objectives share: the KL term, patch sampling from pools of images, the Adam
optimisers of a generator and its discriminator (the option checks are in
:mod:`medgen.generative._checks`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from medgen.errors import MedgenValueError

__all__ = [
    "as_pool",
    "conditional_discriminator_step",
    "foreground_slices",
    "generator_optimizers",
    "kl_divergence",
    "lesion_contrast_loss",
    "lesion_weighted_l1",
    "masked_lsgan",
    "random_patches",
    "unit_range",
]


def conditional_discriminator_step(
    ctx: Any,
    discriminator: nn.Module,
    adv_loss: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    pred: torch.Tensor,
    *,
    cells: torch.Tensor | None = None,
) -> torch.Tensor:
    """One step of a conditional PatchGAN (pix2pix): real pairs ``(x, y)`` against fakes
    ``(x, pred)`` (detached), the half-sum of the two adversarial losses, back-propagated into
    the ``"discriminator"`` optimiser; returns the detached loss for the logs. ``cells`` (a 0/1
    map on the output grid, pix2pix's ``lesion_adv_weight``): the same real/fake losses
    averaged over those cells are added, so the discriminator learns what a lesion looks like."""
    with ctx.autocast():
        real = discriminator(torch.cat([x, y], dim=1))[-1]
        fake = discriminator(torch.cat([x, pred.detach()], dim=1))[-1]
        loss_d = adv_loss(real, target_is_real=True, for_discriminator=True) + adv_loss(
            fake, target_is_real=False, for_discriminator=True
        )
        if cells is not None:
            loss_d = loss_d + masked_lsgan(real, cells, real=True)
            loss_d = loss_d + masked_lsgan(fake, cells, real=False)
        loss_d = 0.5 * loss_d
    ctx.backward(loss_d, "discriminator")
    return loss_d.detach()


def masked_lsgan(logits: torch.Tensor, cells: torch.Tensor, *, real: bool) -> torch.Tensor:
    """The least-squares adversarial loss (``(D - 1)^2`` for ``real``, ``D^2`` otherwise)
    averaged over the cells where ``cells`` is 1; 0 (with a gradient path) where there are none."""
    err = (logits.float() - (1.0 if real else 0.0)) ** 2
    return (err * cells).sum() / cells.sum().clamp(min=1.0)


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, 1)), summed over latent dims, averaged over the batch.

    ``mu``, ``sigma``: ``BxCx[SPATIAL]`` posterior moments (Kingma & Welling 2014).
    """
    dims = list(range(1, mu.ndim))
    kl = 0.5 * torch.sum(mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1, dim=dims)
    return kl.mean()


def lesion_weighted_l1(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    lesion_weight: float,
    *,
    base: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean absolute error with the pixels inside ``mask`` weighted ``1 + lesion_weight``.

    ``mask``: ``BxCx[SPATIAL]`` lesion occupancy (0..1; soft values weigh in proportion) or
    ``None``; with ``None`` or ``lesion_weight == 0`` this is the plain L1. ``base``: per-pixel
    weights replacing the ``1`` (pix2pix's :func:`~medgen.generative.objectives.paired.
    detail_weight_map`), the lesion term added to them. Why: a lesion of a few pixels is a
    thousandth of a 64x64 image's L1, so an autoencoder trained on the plain mean blurs it away
    first (docs/synthesis.md).

    Example:
        >>> x, y = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
        >>> y[..., 0, 0] = 1.0
        >>> m = torch.zeros(1, 1, 4, 4)
        >>> m[..., 0, 0] = 1.0
        >>> float(lesion_weighted_l1(x, y, None, 3.0)), float(lesion_weighted_l1(x, y, m, 3.0))
        (0.0625, 0.25)
    """
    err = torch.abs(pred.float() - target.float())
    weight = base
    if mask is not None and lesion_weight > 0:
        weight = (1.0 if base is None else base) + float(lesion_weight) * mask.float()
    return torch.mean(err if weight is None else weight * err)


def lesion_contrast_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *, ring: int = 2
) -> torch.Tensor:
    """Mean over the patches with lesion pixels of ``|C(pred) - C(target)|``, where ``C`` is a
    patch's lesion contrast: its mean inside ``mask`` minus its mean outside the mask dilated by
    ``ring`` pixels (a max-pool of edge ``2 ring + 1``, so a square ring; soft masks weigh in
    proportion). This is the training-patch form of ``evaluate_translation``'s
    ``lesion_contrast`` (which uses the image's foreground and a cross-shaped ring), so the
    term penalises exactly the under- or over-rendered lesion that the per-pixel L1 leaves when
    the output's lesion is off by the same amount everywhere. 0 (with a gradient path) when no
    patch holds a lesion.

    ``pred``, ``target``, ``mask``: ``BxCx[SPATIAL]`` (2D or 3D).

    Example:
        >>> y = torch.zeros(1, 1, 8, 8)
        >>> m = torch.zeros(1, 1, 8, 8)
        >>> m[..., 3:5, 3:5] = 1.0
        >>> y[m > 0] = 1.0
        >>> round(float(lesion_contrast_loss(0.5 * y, y, m)), 6)
        0.5
    """
    m = mask.float()
    pool = nn.functional.max_pool2d if m.ndim == 4 else nn.functional.max_pool3d
    outside = 1.0 - pool(m, kernel_size=2 * ring + 1, stride=1, padding=ring)  # type: ignore[operator]
    dims = tuple(range(1, m.ndim))
    n_in, n_out = m.sum(dim=dims), outside.sum(dim=dims)
    has = (n_in > 0) & (n_out > 0)
    err = pred.float() - target.float()  # C(pred) - C(target) is the contrast of the error
    diff = (err * m).sum(dim=dims) / n_in.clamp(min=1e-6) - (err * outside).sum(
        dim=dims
    ) / n_out.clamp(min=1e-6)
    return (diff.abs() * has).sum() / has.sum().clamp(min=1)


def generator_optimizers(
    networks: Mapping[str, nn.Module],
    generator: str,
    *,
    lr_g: float,
    lr_d: float,
    betas: tuple[float, float],
) -> dict[str, torch.optim.Optimizer]:
    """Adam for ``networks[generator]`` (``lr_g``) and, when there is one, for
    ``networks["discriminator"]`` (``lr_d``), both with ``betas``; keyed by the network names."""
    opts: dict[str, torch.optim.Optimizer] = {
        generator: torch.optim.Adam(networks[generator].parameters(), lr=lr_g, betas=betas)
    }
    if "discriminator" in networks:
        opts["discriminator"] = torch.optim.Adam(
            networks["discriminator"].parameters(), lr=lr_d, betas=betas
        )
    return opts


def as_pool(
    images: Sequence[Any], *, name: str, spatial_dims: int, patch_size: int
) -> list[np.ndarray]:
    """Images ``[SPATIAL]`` (arrays or tensors, one channel, no channel axis) as float32 arrays.

    Raises:
        MedgenValueError: the pool is empty, or an image has the wrong rank or is smaller than a
            patch.
    """
    pool = [
        np.asarray(im.detach().cpu().numpy() if isinstance(im, torch.Tensor) else im, np.float32)
        for im in images
    ]
    if not pool:
        raise MedgenValueError(f"{name}: no images given; pass a list of {spatial_dims}D arrays.")
    for i, a in enumerate(pool):
        if a.ndim != spatial_dims or min(a.shape) < patch_size:
            raise MedgenValueError(
                f"{name}[{i}]: expected a {spatial_dims}D image of at least {patch_size} pixels "
                f"per axis (patch_size), got shape {a.shape}; crop/resample the images or lower "
                "patch_size."
            )
    return pool


def random_patches(
    pool: Sequence[np.ndarray], n: int, patch_size: int, rng: np.random.Generator
) -> torch.Tensor:
    """``n`` random patches (uniform image, uniform corner) as a ``Bx1x[patch_size]*D`` tensor."""
    out = []
    for _ in range(n):
        img = pool[int(rng.integers(len(pool)))]
        starts = [int(rng.integers(s - patch_size + 1)) for s in img.shape]
        out.append(img[tuple(slice(a, a + patch_size) for a in starts)])
    return torch.from_numpy(np.stack(out)[:, None].astype(np.float32))


def foreground_slice_indices(arr: np.ndarray) -> list[int]:
    """Indices along the last axis of a volume ``(X, Y, Z)`` of the slices that hold some
    foreground (more than 5% of pixels above 20% of the 90th percentile); the middle slice
    when none does."""
    thr = np.percentile(arr, 90) * 0.2
    ks = [k for k in range(arr.shape[-1]) if np.mean(arr[..., k] > thr) > 0.05]
    return ks or [arr.shape[-1] // 2]


def foreground_slices(arr: np.ndarray) -> list[np.ndarray]:
    """A 2D image as ``[arr]``; a volume ``(X, Y, Z)`` as its slices along the last axis that hold
    some foreground (:func:`foreground_slice_indices`)."""
    if arr.ndim == 2:
        return [arr]
    return [arr[..., k] for k in foreground_slice_indices(arr)]


def unit_range(arr: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """``arr`` scaled so its ``percentiles`` map to 0 and 1 (float32)."""
    from medgen.generative._restorer import robust_range

    lo, hi = robust_range(arr, percentiles)
    return ((arr - lo) / (hi - lo)).astype(np.float32)
