"""The ``"autoencoder"`` objective: a KL-regularised autoencoder, optionally adversarial.

The first stage of latent diffusion (Rombach et al. 2022): MONAI's ``AutoencoderKL`` trained on
``l1_weight * L1(recon, x) + kl_weight * KL(q(z | x) || N(0, I))`` and, after
``adv_warmup_steps``, ``adv_weight * LSGAN`` against an (unconditional) MONAI
``PatchDiscriminator`` with ``PatchAdversarialLoss`` (least squares): a VAE-GAN. The posterior
sample ``z ~ q(z | x)`` uses torch's RNG, which the engine seeds per step.

Batches: ``{"image": Bx1x[P]*D}``, random patches of a pool of images. Networks:
``"autoencoder"`` (EMA; the inference network) and, with ``adv_weight > 0``,
``"discriminator"``; optimisers of the same names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from medgen.generative import _checks
from medgen.generative.engine import Objective, StepContext
from medgen.generative.objectives._common import (
    as_pool,
    generator_optimizers,
    kl_divergence,
    lesion_weighted_l1,
    random_patches,
)

__all__ = ["AutoencoderConfig", "AutoencoderObjective", "build_autoencoder"]


@dataclass
class AutoencoderConfig:
    """Options of the autoencoder objective.

    Attributes:
        spatial_dims: 2 or 3.
        channels: encoder/decoder widths per level (each down-samples by 2 but the last).
        latent_channels: channels of the latent ``z``.
        num_res_blocks: residual blocks per level.
        norm_num_groups: group-norm groups (must divide every width); ``None``: the smallest
            width.
        patch_size: training patch edge, divisible by ``2**(len(channels)-1)``.
        discriminator_channels, num_layers_d: the PatchGAN's first width and depth.
        lr_g, lr_d: Adam learning rates of the autoencoder and the discriminator.
        betas: Adam betas.
        l1_weight, kl_weight, adv_weight: loss weights (``adv_weight=0``: no discriminator).
        adv_warmup_steps: steps before the discriminator and the adversarial term start.
        lesion_weight: the L1 weighs pixels inside a batch's lesion masks (a batch ``"mask"``,
            0..1) ``1 + lesion_weight`` (``_common.lesion_weighted_l1``); batches without
            masks, or 0: the plain L1.
    """

    spatial_dims: int = 2
    channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 3
    num_res_blocks: int = 1
    norm_num_groups: int | None = None
    patch_size: int = 64
    discriminator_channels: int = 32
    num_layers_d: int = 3
    lr_g: float = 1e-4
    lr_d: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    l1_weight: float = 1.0
    kl_weight: float = 1e-6
    adv_weight: float = 0.0
    adv_warmup_steps: int = 0
    lesion_weight: float = 0.0

    def __post_init__(self) -> None:
        owner = "AutoencoderConfig"
        _checks.check_network(self, owner, norm_groups=True)
        _checks.check_patch_size(self, owner)
        _checks.check_positive(self, owner, ("lr_g", "lr_d"))
        _checks.check_non_negative(
            self, owner, ("l1_weight", "kl_weight", "adv_weight", "lesion_weight")
        )
        _checks.normalise_betas(self)


def build_autoencoder(config: AutoencoderConfig, in_channels: int = 1) -> nn.Module:
    """MONAI ``AutoencoderKL`` of ``config`` (no attention: small and fast); maps
    ``BxCx[SPATIAL]`` to ``(reconstruction, z_mu, z_sigma)``."""
    from monai.networks.nets import AutoencoderKL

    c = config
    return AutoencoderKL(
        spatial_dims=c.spatial_dims,
        in_channels=in_channels,
        out_channels=in_channels,
        channels=c.channels,
        latent_channels=c.latent_channels,
        num_res_blocks=c.num_res_blocks,
        attention_levels=(False,) * len(c.channels),
        norm_num_groups=c.norm_num_groups or min(c.channels),
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
    )


class AutoencoderObjective(Objective):
    """KL autoencoder (+ optional PatchGAN) on patches of ``images`` (see the module docstring).

    Args:
        images: a pool of images ``[SPATIAL]`` (one channel, no channel axis, e.g. 0..1).
        config: options.
    """

    kind: ClassVar[str] = "autoencoder"
    ema_networks = ("autoencoder",)
    inference_networks = ("autoencoder",)
    log_keys = ("loss_g", "l1", "kl", "adv", "loss_d")

    def __init__(self, images: Sequence[Any], *, config: AutoencoderConfig | None = None) -> None:
        self.config = config if config is not None else AutoencoderConfig()
        c = self.config
        self.pool = as_pool(
            images, name="images", spatial_dims=c.spatial_dims, patch_size=c.patch_size
        )

    def build_networks(self) -> dict[str, nn.Module]:
        from medgen.generative._nets import build_discriminator

        c = self.config
        nets: dict[str, nn.Module] = {"autoencoder": build_autoencoder(c)}
        if c.adv_weight > 0:
            nets["discriminator"] = build_discriminator(
                spatial_dims=c.spatial_dims,
                in_channels=1,
                channels=c.discriminator_channels,
                num_layers_d=c.num_layers_d,
            )
        return nets

    def build_optimizers(
        self, networks: Mapping[str, nn.Module]
    ) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        return generator_optimizers(
            networks, "autoencoder", lr_g=c.lr_g, lr_d=c.lr_d, betas=c.betas
        )

    def sample_batch(self, step: int) -> Mapping[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        return {"image": random_patches(self.pool, self.batch_size, self.config.patch_size, rng)}

    def train_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, Any]:
        from monai.losses import PatchAdversarialLoss

        c = self.config
        x = batch["image"]
        ae = ctx.networks["autoencoder"]
        disc = ctx.networks.get("discriminator")
        adv = PatchAdversarialLoss(criterion="least_squares")
        adv_on = disc is not None and ctx.step >= c.adv_warmup_steps
        ae.train()
        with ctx.autocast():
            recon, z_mu, z_sigma = ae(x)
            logs: dict[str, torch.Tensor] = {
                "l1": lesion_weighted_l1(recon, x, batch.get("mask"), c.lesion_weight),
                "kl": kl_divergence(z_mu.float(), z_sigma.float()),
            }
            loss_g = c.l1_weight * logs["l1"] + c.kl_weight * logs["kl"]
            if adv_on and disc is not None:
                logs["adv"] = adv(disc(recon)[-1], target_is_real=True, for_discriminator=False)
                loss_g = loss_g + c.adv_weight * logs["adv"]
        ctx.backward(loss_g, "autoencoder")
        logs["loss_g"] = loss_g
        if adv_on and disc is not None:
            with ctx.autocast():
                logs["loss_d"] = 0.5 * (
                    adv(disc(x)[-1], target_is_real=True, for_discriminator=True)
                    + adv(disc(recon.detach())[-1], target_is_real=False, for_discriminator=True)
                )
            ctx.backward(logs["loss_d"], "discriminator")
        return {k: v.detach() for k, v in logs.items()}
