"""The ``"paired"`` objective: restoration / image-to-image translation from aligned pairs.

Batches are ``{"input": BxCx[SPATIAL], "target": BxCx[SPATIAL]}`` made by a ``sample_batch(step)``
function (the *process*: how pairs are made, e.g. :func:`medgen.simulate.degrade`). One step
optimises the generator on

``l1_weight * L1 + mse_weight * MSE + ssim_weight * (1 - SSIM) + kl_weight * KL
+ adv_weight * LSGAN``

(the KL term for generators that return posterior moments, see
:class:`~medgen.generative._nets.GeneratorOutput`; with :class:`Pix2PixConfig`'s
``detail_weight`` > 0 the L1 is weighted per pixel by :func:`detail_weight_map`), then, once
``adv_warmup_steps`` have passed, the conditional PatchGAN on ``cat([input, target])`` (real) vs ``cat([input, prediction])``
(fake): pix2pix (Isola et al. 2017) with MONAI's least-squares ``PatchAdversarialLoss``. The
generator has an EMA copy (the inference model); generator and discriminator have their own Adam
optimisers and learning rates.

:class:`~medgen.generative.Denoiser` and :class:`~medgen.generative.SuperResolver` train with
it; :func:`medgen.generative.train` with a :class:`~medgen.generative.TrainConfig` is the
shorthand (engine options + these options in one recipe).

:class:`Pix2PixConfig` (the objective's options plus its networks: a residual U-Net generator and
a conditional PatchGAN, :func:`build_pix2pix_networks`) and :func:`paired_patches` (the same
random patch cut from both images of an aligned pair) are what
:class:`~medgen.generative.Translator` ``model="pix2pix"`` trains with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from medgen.errors import ConfigError
from medgen.generative import _checks
from medgen.generative.engine import Objective, StepContext
from medgen.generative.objectives._common import (
    conditional_discriminator_step,
    generator_optimizers,
    kl_divergence,
    lesion_contrast_loss,
    lesion_weighted_l1,
    masked_lsgan,
)

if TYPE_CHECKING:
    from monai.losses import SSIMLoss

    from medgen.generative._nets import GeneratorOutput

__all__ = [
    "LESION_TERMS",
    "PAIRED_LOG_KEYS",
    "PairedConfig",
    "PairedObjective",
    "Pix2PixConfig",
    "build_pix2pix_networks",
    "check_paired_options",
    "detail_weight_map",
    "paired_patches",
]

#: the columns of ``metrics.csv`` a paired run always has
PAIRED_LOG_KEYS = ("loss_g", "l1", "mse", "ssim", "kl", "adv", "loss_d")

#: pix2pix's options that train on the training rows' lesion masks (any > 0: masks are read)
LESION_TERMS = ("lesion_weight", "lesion_adv_weight", "lesion_contrast_weight")


def check_paired_options(obj: Any, owner: str) -> None:
    """Validate the paired-objective options held by ``obj``; ``owner`` names it."""
    _checks.check_positive(obj, owner, ("lr_g", "lr_d"))
    _checks.check_non_negative(
        obj, owner, ("l1_weight", "mse_weight", "ssim_weight", "kl_weight", "adv_weight")
    )
    _checks.check_int(obj, owner, ("adv_warmup_steps",))  # <= 0: adversarial from the start
    _checks.normalise_betas(obj)


@dataclass
class PairedConfig:
    """Options of the paired objective.

    Attributes:
        lr_g, lr_d: Adam learning rates of the generator and the discriminator (the engine's LR
            schedule scales both).
        betas: Adam betas (both optimisers).
        l1_weight, mse_weight, ssim_weight, kl_weight, adv_weight: loss weights (0 switches a
            term off). MSE (L2) targets the mean, which is what PSNR rewards; L1 the median.
        adv_warmup_steps: steps of content-only training before the discriminator and the
            adversarial term start.
    """

    lr_g: float = 1e-3
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    l1_weight: float = 1.0
    mse_weight: float = 0.0
    ssim_weight: float = 0.1
    kl_weight: float = 1e-6
    adv_weight: float = 0.0
    adv_warmup_steps: int = 0

    def __post_init__(self) -> None:
        check_paired_options(self, "PairedConfig")


@dataclass
class Pix2PixConfig(PairedConfig):
    """Options of a pix2pix translator (Isola et al. 2017): the paired objective's losses plus
    its networks.

    Attributes:
        spatial_dims: 2 or 3.
        channels: generator (residual U-Net, starting at the identity) widths per level.
        num_res_units: residual units per generator level.
        discriminator_channels: width of the conditional PatchGAN's first layer.
        num_layers_d: discriminator depth (receptive field).
        patch_size: training patch edge (pixels/voxels), divisible by ``2**(len(channels)-1)``.
        detail_weight: detail-weighted L1 (lesion preservation): the L1 term weights each pixel
            by :func:`detail_weight_map` of the target, ``1 + detail_weight * c(target)``, with
            ``c`` the target's local contrast normalised by its batch mean. Small structures
            (lesions of a few pixels, tissue edges) then count as much as the large flat
            background that otherwise dominates the mean. Uses only the images, no masks, so
            it works on real pairs. 0 (the default) is plain L1, bitwise the same training.
        detail_sigma: the Gaussian scale (pixels/voxels) of that local contrast.
        lesion_weight: mask-weighted L1: pixels inside the training pair's lesion mask weigh
            ``1 + lesion_weight`` (added to the detail weight). Needs masks: the
            :class:`~medgen.generative.Translator` reads them from the *training* rows'
            ``mask_path`` column (source row and its counterfactual target), never from test
            rows; batches then carry a ``"mask"`` tensor. 0 (the default): no masks read.
        lesion_adv_weight: an adversarial term on the lesions: the generator's LSGAN loss
            averaged over only the PatchGAN cells whose window holds lesion pixels (the
            training pair's mask max-pooled onto the discriminator's output grid), weighted
            ``lesion_adv_weight``, and the discriminator's real/fake loss on the same cells
            added to its own. Why: the L1 regresses a lesion it is unsure of towards the
            background (T1 -> T2 rendered lesions at 0.66-0.71 of their contrast,
            docs/translation.md), and in the plain adversarial term a lesion is a few of the
            36 cells of a 32-pixel training patch (196 at 64). Needs masks (read like
            ``lesion_weight``'s) and ``adv_weight > 0`` (the discriminator); 0 (the default):
            the same training bitwise.
        lesion_contrast_weight: a lesion-contrast term: per training patch with lesion
            pixels, ``|C(output) - C(target)|`` with ``C`` the mean inside the pair's lesion
            mask minus the mean outside the mask dilated by 2 pixels
            (:func:`~medgen.generative.objectives._common.lesion_contrast_loss`), weighted
            ``lesion_contrast_weight``. Why: with ``lesion_weight`` the per-pixel L1 still left
            T1 -> T2 lesions at 0.66-0.71 of the truth's contrast (docs/translation.md), a
            shortfall shared by the lesion's pixels; this term measures that shortfall itself.
            Measured (three seeds, with ``lesion_weight=30, adv_weight=0.1``): 5 lifts the T2
            visible-lesion ratio to 0.75-0.91 and keeps site A -> B lesions within 15 % on
            every seed, for 1.2-4.5 dB of PSNR; 10 breaks the translation. Needs masks (read
            like ``lesion_weight``'s); 0 (the default): the same training bitwise.
        lesion_contrast_warmup_steps: the lesion-contrast term is off before this step (the
            L1 fits the anatomy first); 0 (the default): on from the first step.

    The loss options are :class:`PairedConfig`'s, with pix2pix's balance by default: L1 plus
    ``adv_weight = 0.01`` LSGAN (the paper's lambda = 100 for L1 against 1 for the GAN), Adam
    betas (0.5, 0.999), no SSIM or KL term.
    """

    spatial_dims: int = 2
    channels: tuple[int, ...] = (16, 32, 64)
    num_res_units: int = 1
    discriminator_channels: int = 16
    num_layers_d: int = 2
    patch_size: int = 64
    betas: tuple[float, float] = (0.5, 0.999)
    ssim_weight: float = 0.0
    kl_weight: float = 0.0
    adv_weight: float = 0.01
    detail_weight: float = 0.0
    detail_sigma: float = 1.0
    lesion_weight: float = 0.0
    lesion_adv_weight: float = 0.0
    lesion_contrast_weight: float = 0.0
    lesion_contrast_warmup_steps: int = 0

    def __post_init__(self) -> None:
        owner = "Pix2PixConfig"
        check_paired_options(self, owner)
        _checks.check_non_negative(
            self,
            owner,
            ("detail_weight", "lesion_weight", "lesion_adv_weight", "lesion_contrast_weight"),
        )
        if self.lesion_adv_weight > 0 and self.adv_weight <= 0:
            raise ConfigError(
                f"{owner}: lesion_adv_weight={self.lesion_adv_weight} needs the discriminator, "
                f"but adv_weight={self.adv_weight}; give adv_weight > 0 (e.g. 0.1) or "
                "lesion_adv_weight=0."
            )
        _checks.check_positive(self, owner, ("detail_sigma",))
        _checks.check_network(self, owner)
        _checks.check_patch_size(self, owner)
        _checks.check_int(
            self,
            owner,
            ("num_res_units", "num_layers_d", "lesion_contrast_warmup_steps"),
            minimum=0,
        )
        _checks.check_int(self, owner, ("discriminator_channels",), minimum=1)

    @property
    def needs_masks(self) -> bool:
        """Whether training reads the training rows' lesion masks (a lesion term is on)."""
        return any(getattr(self, name) > 0 for name in LESION_TERMS)


def build_pix2pix_networks(config: Pix2PixConfig) -> dict[str, nn.Module]:
    """Untrained ``generator`` (one channel in and out) and ``discriminator`` (conditional:
    ``cat([input, image])``, two channels) of ``config``."""
    from medgen.generative._nets import build_discriminator, build_generator

    c = config
    return {
        "generator": build_generator(
            "unet", spatial_dims=c.spatial_dims, channels=c.channels, num_res_units=c.num_res_units
        ),
        "discriminator": build_discriminator(
            spatial_dims=c.spatial_dims,
            in_channels=2,
            channels=c.discriminator_channels,
            num_layers_d=c.num_layers_d,
        ),
    }


def paired_patches(
    pairs: Sequence[tuple[np.ndarray, ...]],
    n: int,
    patch_size: int,
    rng: np.random.Generator,
) -> dict[str, torch.Tensor]:
    """``n`` random patches of aligned pairs (uniform pair, uniform corner; the same window in
    both images): ``{"input": Bx1x[P]*D, "target": Bx1x[P]*D}`` float32; pairs of three
    (source, target, lesion mask) add ``"mask"``, the same window of the mask."""
    cut: list[list[np.ndarray]] = []
    for _ in range(int(n)):
        images = pairs[int(rng.integers(len(pairs)))]
        starts = [int(rng.integers(s - patch_size + 1)) for s in images[0].shape]
        window = tuple(slice(s, s + patch_size) for s in starts)
        cut.append([im[window] for im in images])
    names = ("input", "target", "mask")
    return {
        names[k]: torch.from_numpy(np.stack([c[k] for c in cut])[:, None].astype(np.float32))
        for k in range(len(cut[0]))
    }


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x`` (``BxCx[SPATIAL]``) smoothed by a separable Gaussian of standard deviation ``sigma``
    pixels (kernel radius ``ceil(3 sigma)``, edges replicated)."""
    import torch.nn.functional as F

    radius = max(1, math.ceil(3.0 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    dims = x.ndim - 2
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    b, ch = x.shape[:2]
    out = x.reshape(b * ch, 1, *x.shape[2:])
    for axis in range(dims):
        shape = [1, 1] + [1] * dims
        shape[2 + axis] = kernel.numel()
        pad = [0, 0] * dims
        pad[2 * (dims - 1 - axis)] = pad[2 * (dims - 1 - axis) + 1] = radius
        out = conv(F.pad(out, pad, mode="replicate"), kernel.reshape(shape))
    return out.reshape(x.shape)


def detail_weight_map(
    target: torch.Tensor, detail_weight: float, *, sigma: float = 1.0
) -> torch.Tensor:
    """Per-pixel weights ``1 + detail_weight * c`` of the detail-weighted L1 (pix2pix's
    ``detail_weight``): ``c`` is the target's local contrast, the absolute difference of
    Gaussians ``|G_sigma * target - G_2sigma * target|``, divided by its mean over the whole
    batch (so a patch of flat background in a batch with lesions keeps weights near 1).

    Why this ``c`` (measured on the ``tiny`` preset's 64x64 site_B and T2 renders, 15 images
    each with lesions, ``c`` scaled to mean 1 per image): on site_B (blurred, noisy) the
    difference of Gaussians at sigma 1 gives lesion pixels 2.96x the mean against 2.05x for a
    finer band (0.5..1) and 1.79x for ``|y - G_1 y|`` (which picks up pixel noise) and 1.08x
    for the rest of the foreground; on T2 every variant gave lesions 0.65-0.90x (the CSF
    edges dominate there). The batch mean (not a per-image one) keeps a patch without
    structure from having its noise amplified; the 99th percentile of ``c`` is 4-5x its mean,
    so no clipping is needed.

    Args:
        target: ``BxCx[SPATIAL]`` target images (any range; only ``c``'s shape matters).
        detail_weight: >= 0; 0 gives all ones.
        sigma: the finer Gaussian's standard deviation (pixels/voxels).

    Returns:
        ``BxCx[SPATIAL]`` float32 weights, >= 1 everywhere, exactly 1 on a flat target.

    Example:
        >>> y = torch.zeros(1, 1, 16, 16)
        >>> y[..., 6:10, 6:10] = 1.0
        >>> w = detail_weight_map(y, 2.0)
        >>> bool(w.min() >= 1.0), bool(w[0, 0, 7, 7] > w[0, 0, 0, 0])
        (True, True)
    """
    with torch.no_grad():
        y = target.detach().float()
        if detail_weight <= 0:
            return torch.ones_like(y)
        c = torch.abs(_gaussian_blur(y, sigma) - _gaussian_blur(y, 2.0 * sigma))
        scale = c.mean()
        # a flat batch (its blur differences only rounding): nothing to weight
        if not bool(scale > 1e-6 * (float(y.abs().max()) + 1e-12)):
            return torch.ones_like(y)
        return 1.0 + float(detail_weight) * (c / scale)


class PairedObjective(Objective):
    """Paired restoration / pix2pix (see the module docstring).

    Args:
        generator: maps ``BxCx[SPATIAL]`` to a ``GeneratorOutput`` of the same shape.
        sample_batch: ``step -> {"input", "target"}`` tensors ``BxCx[SPATIAL]``, a pure function
            of the step (it closes over the run's seed and batch size).
        config: loss weights and learning rates.
        discriminator: conditional PatchGAN taking ``cat([input, image], dim=1)``; required when
            ``config.adv_weight > 0``.

    Networks ``"generator"`` (EMA, inference) and ``"discriminator"``; optimisers of the same
    names.
    """

    kind: ClassVar[str] = "paired"
    ema_networks = ("generator",)
    inference_networks = ("generator",)
    log_keys = PAIRED_LOG_KEYS

    def __init__(
        self,
        generator: nn.Module,
        sample_batch: Callable[[int], Mapping[str, torch.Tensor]],
        *,
        config: PairedConfig | None = None,
        discriminator: nn.Module | None = None,
    ) -> None:
        self.config = config if config is not None else PairedConfig()
        if self.config.adv_weight > 0 and discriminator is None:
            raise ConfigError("train: adv_weight > 0 needs a discriminator; pass discriminator=.")
        self.generator, self.discriminator = generator, discriminator
        self._sample = sample_batch
        self._ssim: SSIMLoss | None = None

    def build_networks(self) -> dict[str, nn.Module]:
        nets = {"generator": self.generator}
        if self.discriminator is not None:
            nets["discriminator"] = self.discriminator
        return nets

    def build_optimizers(
        self, networks: Mapping[str, nn.Module]
    ) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        return generator_optimizers(networks, "generator", lr_g=c.lr_g, lr_d=c.lr_d, betas=c.betas)

    def sample_batch(self, step: int) -> Mapping[str, torch.Tensor]:
        return self._sample(step)

    def upgrade_checkpoint(self, ckpt: Mapping[str, Any]) -> dict[str, Any] | None:
        """Checkpoints of the restoration trainer before the engine (flat ``generator``,
        ``opt_g``, ``ema``, ``discriminator``, ``opt_d``, ``scaler`` entries) resume too."""
        if "generator" not in ckpt or "opt_g" not in ckpt:
            return None
        out: dict[str, Any] = {
            "networks": {"generator": ckpt["generator"]},
            "optimizers": {"generator": ckpt["opt_g"]},
            "ema": {"generator": ckpt["ema"]} if "ema" in ckpt else {},
            "scaler": ckpt["scaler"],
            "objective": {},
        }
        if "discriminator" in ckpt and "opt_d" in ckpt:
            out["networks"]["discriminator"] = ckpt["discriminator"]
            out["optimizers"]["discriminator"] = ckpt["opt_d"]
        return out

    def train_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, Any]:
        from monai.losses import PatchAdversarialLoss, SSIMLoss

        c = self.config
        x, y = batch["input"], batch["target"]
        if self._ssim is None and c.ssim_weight > 0:
            win = min(7, *x.shape[2:])
            win -= 1 - win % 2
            self._ssim = SSIMLoss(spatial_dims=x.ndim - 2, data_range=1.0, win_size=win)
        generator = ctx.networks["generator"]
        discriminator = ctx.networks.get("discriminator")
        adv_loss = PatchAdversarialLoss(criterion="least_squares")
        adv_on = discriminator is not None and c.adv_weight > 0 and ctx.step >= c.adv_warmup_steps
        generator.train()
        with ctx.autocast():
            out: GeneratorOutput = generator(x)
            pred = out.image
            terms: dict[str, torch.Tensor] = {}
            detail = float(getattr(c, "detail_weight", 0.0))
            lesion = float(getattr(c, "lesion_weight", 0.0))
            base = None  # Pix2PixConfig's detail-weighted L1, plus its lesion term
            if detail > 0:
                base = detail_weight_map(y, detail, sigma=float(getattr(c, "detail_sigma", 1.0)))
            terms["l1"] = lesion_weighted_l1(pred, y, batch.get("mask"), lesion, base=base)
            lesion_contrast = float(getattr(c, "lesion_contrast_weight", 0.0))
            warm = ctx.step >= int(getattr(c, "lesion_contrast_warmup_steps", 0))
            if lesion_contrast > 0 and warm and batch.get("mask") is not None:
                terms["contrast_lesion"] = lesion_contrast_loss(pred, y, batch["mask"])
            if c.mse_weight > 0:
                terms["mse"] = torch.mean((pred.float() - y.float()) ** 2)
            if self._ssim is not None:
                terms["ssim"] = self._ssim(pred.float(), y.float())
            if out.z_mu is not None and out.z_sigma is not None and c.kl_weight > 0:
                terms["kl"] = kl_divergence(out.z_mu.float(), out.z_sigma.float())
            cells = None  # the PatchGAN cells that see a lesion (lesion_adv_weight)
            if adv_on and discriminator is not None:
                logits = discriminator(torch.cat([x, pred], dim=1))[-1]
                terms["adv"] = adv_loss(logits, target_is_real=True, for_discriminator=False)
                lesion_adv = float(getattr(c, "lesion_adv_weight", 0.0))
                if lesion_adv > 0 and batch.get("mask") is not None:
                    cells = lesion_cells(batch["mask"], logits.shape[2:])
                    terms["adv_lesion"] = masked_lsgan(logits, cells, real=True)
            weights = {
                "l1": c.l1_weight,
                "mse": c.mse_weight,
                "ssim": c.ssim_weight,
                "kl": c.kl_weight,
                "adv": c.adv_weight,
                "adv_lesion": float(getattr(c, "lesion_adv_weight", 0.0)),
                "contrast_lesion": float(getattr(c, "lesion_contrast_weight", 0.0)),
            }
            loss_g = sum(
                (weights[k] * v for k, v in terms.items()), torch.zeros((), device=ctx.device)
            )
        ctx.backward(loss_g, "generator")
        logs: dict[str, Any] = {
            "loss_g": loss_g.detach(),
            **{k: v.detach() for k, v in terms.items()},
        }
        if adv_on and discriminator is not None:
            logs["loss_d"] = conditional_discriminator_step(
                ctx, discriminator, adv_loss, x, y, pred, cells=cells
            )
        return logs


def lesion_cells(mask: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Which cells of a PatchGAN output grid (``grid``: its spatial shape) hold lesion pixels:
    ``mask`` (``Bx1x[SPATIAL]``, 0..1) max-pooled onto that grid, 1 where any pixel of the
    cell's share of the image is inside the mask."""
    pool = (
        nn.functional.adaptive_max_pool2d if len(grid) == 2 else nn.functional.adaptive_max_pool3d
    )
    return (pool(mask.float(), tuple(int(g) for g in grid)) > 0.5).float()  # type: ignore[operator]
