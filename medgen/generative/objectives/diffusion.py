"""The ``"diffusion"`` objective: DDPM noise prediction, in a frozen autoencoder's latent space.

Latent diffusion (Rombach et al. 2022) in two stages: an autoencoder trained first (the
``"autoencoder"`` objective, :mod:`medgen.generative.objectives.latent`), then a denoising
diffusion model (Ho et al. 2020) on its latents ``z = scale_factor * sample(q(z | x))``: per step
``t ~ U{0, T-1}``, ``eps ~ N(0, I)``, ``z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps`` (MONAI's
``DDPMScheduler``), loss ``MSE(unet(z_t, t), eps)`` for MONAI's ``DiffusionModelUNet``. The
autoencoder is **frozen** here (evaluation mode, no gradients, not optimised; saved with the
model); without one the model diffuses in image space. Noise, timesteps and the latent samples use
torch's RNG, which the engine seeds per step.

Batches: ``{"image": Bx1x[P]*D}``. Networks: ``"unet"`` (EMA; inference) and ``"autoencoder"``
(frozen; inference); optimiser ``"unet"``. :func:`sample` draws new images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import numpy as np
import torch
from torch import nn

from medgen.errors import ConfigError
from medgen.generative import _checks
from medgen.generative.engine import Objective, StepContext
from medgen.generative.objectives._common import as_pool, random_patches

__all__ = [
    "SCHEDULES",
    "DiffusionConfig",
    "DiffusionObjective",
    "build_scheduler",
    "build_unet",
    "sample",
]

#: noise schedules of MONAI's ``DDPMScheduler``
SCHEDULES = ("linear_beta", "scaled_linear_beta", "sigmoid_beta", "cosine")


@dataclass
class DiffusionConfig:
    """Options of the diffusion objective.

    Attributes:
        spatial_dims: 2 or 3.
        channels: U-Net widths per level.
        num_res_blocks: residual blocks per level.
        norm_num_groups: group-norm groups (must divide every width); ``None``: the smallest.
        attention: self-attention at the deepest level (slower; off for tiny models).
        num_head_channels: channels per attention head.
        patch_size: training patch edge in image pixels.
        num_train_timesteps: diffusion steps ``T``.
        schedule: noise schedule (``SCHEDULES``).
        scale_factor: latents are multiplied by it (Rombach et al.: about ``1 / std(z)``).
        lr: Adam learning rate of the U-Net.
        betas: Adam betas.
    """

    spatial_dims: int = 2
    channels: tuple[int, ...] = (32, 64, 64)
    num_res_blocks: int = 1
    norm_num_groups: int | None = None
    attention: bool = False
    num_head_channels: int = 8
    patch_size: int = 64
    num_train_timesteps: int = 1000
    schedule: str = "linear_beta"
    scale_factor: float = 1.0
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        owner = "DiffusionConfig"
        _checks.check_network(self, owner, norm_groups=True)
        if self.schedule not in SCHEDULES:
            from medgen._internal.suggest import did_you_mean

            raise ConfigError(
                f"{owner}.schedule must be one of {SCHEDULES}, not {self.schedule!r}."
                f"{did_you_mean(self.schedule, SCHEDULES)}"
            )
        _checks.check_int(self, owner, ("num_train_timesteps",), minimum=2)
        _checks.check_positive(self, owner, ("lr", "scale_factor"))
        _checks.normalise_betas(self)


def build_unet(
    config: DiffusionConfig, in_channels: int, *, num_class_embeds: int | None = None
) -> nn.Module:
    """MONAI ``DiffusionModelUNet`` of ``config``: ``(BxCx[SPATIAL], timesteps B) -> BxCx[SPATIAL]``;
    with ``num_class_embeds`` it also takes ``class_labels`` (B) in ``[0, num_class_embeds)``."""
    from monai.networks.nets import DiffusionModelUNet

    c = config
    levels = len(c.channels)
    return DiffusionModelUNet(
        spatial_dims=c.spatial_dims,
        in_channels=in_channels,
        out_channels=in_channels,
        channels=c.channels,
        num_res_blocks=c.num_res_blocks,
        attention_levels=(False,) * (levels - 1) + (bool(c.attention),),
        norm_num_groups=c.norm_num_groups or min(c.channels),
        num_head_channels=c.num_head_channels,
        num_class_embeds=num_class_embeds,
    )


def build_scheduler(config: DiffusionConfig) -> Any:
    """MONAI ``DDPMScheduler`` of ``config`` (epsilon prediction)."""
    from monai.networks.schedulers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps, schedule=config.schedule)


class DiffusionObjective(Objective):
    """DDPM on patches of ``images``, in the latent space of ``autoencoder`` when given.

    Args:
        images: a pool of images ``[SPATIAL]`` (one channel, no channel axis, e.g. 0..1).
        config: options.
        autoencoder: a trained MONAI ``AutoencoderKL`` (e.g. the ``"autoencoder"`` of an
            :class:`~medgen.generative.objectives.latent.AutoencoderObjective` run), kept frozen;
            ``None``: diffusion in image space.
    """

    kind: ClassVar[str] = "diffusion"
    ema_networks = ("unet",)
    log_keys = ("loss",)

    def __init__(
        self,
        images: Sequence[Any],
        *,
        config: DiffusionConfig | None = None,
        autoencoder: nn.Module | None = None,
    ) -> None:
        self.config = config if config is not None else DiffusionConfig()
        c = self.config
        self.pool = as_pool(
            images, name="images", spatial_dims=c.spatial_dims, patch_size=c.patch_size
        )
        self.autoencoder = autoencoder
        self.inference_networks = ("unet",) if autoencoder is None else ("unet", "autoencoder")
        self.scheduler = build_scheduler(c)

    def build_networks(self) -> dict[str, nn.Module]:
        ae = self.autoencoder
        latent = int(getattr(ae, "latent_channels", 1)) if ae is not None else 1
        nets: dict[str, nn.Module] = {"unet": build_unet(self.config, latent)}
        if ae is not None:
            ae.eval()
            for p in ae.parameters():
                p.requires_grad_(False)
            nets["autoencoder"] = ae
        return nets

    def build_optimizers(
        self, networks: Mapping[str, nn.Module]
    ) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        return {"unet": torch.optim.Adam(networks["unet"].parameters(), lr=c.lr, betas=c.betas)}

    def sample_batch(self, step: int) -> Mapping[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        return {"image": random_patches(self.pool, self.batch_size, self.config.patch_size, rng)}

    def train_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, Any]:
        c = self.config
        unet = ctx.networks["unet"]
        ae = ctx.networks.get("autoencoder")
        x = batch["image"]
        with torch.no_grad():
            if ae is not None:
                ae.eval()
                z = cast(Any, ae).encode_stage_2_inputs(x) * c.scale_factor
            else:
                z = x
        noise = torch.randn_like(z)
        t = torch.randint(0, c.num_train_timesteps, (z.shape[0],), device=z.device).long()
        noisy = self.scheduler.add_noise(original_samples=z, noise=noise, timesteps=t)
        unet.train()
        with ctx.autocast():
            pred = unet(noisy, timesteps=t)
            loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        ctx.backward(loss, "unet")
        return {"loss": loss.detach()}


def sample(
    unet: nn.Module,
    *,
    config: DiffusionConfig,
    shape: Sequence[int],
    autoencoder: nn.Module | None = None,
    num_inference_steps: int = 50,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw images by DDPM ancestral sampling (Ho et al. 2020) and decode them.

    Args:
        unet: the trained (EMA) U-Net.
        config: the options it was trained with.
        shape: latent (or, without an autoencoder, image) shape ``BxCx[SPATIAL]``.
        autoencoder: the frozen autoencoder it was trained beside, or ``None``.
        num_inference_steps: denoising steps (``<= num_train_timesteps``).
        generator: the source of all randomness (``torch.Generator`` on the unet's device).

    Returns:
        Images ``BxCx[SPATIAL]`` (decoded when there is an autoencoder), on the unet's device.
    """
    if not 1 <= num_inference_steps <= config.num_train_timesteps:
        raise ConfigError(
            f"sample: num_inference_steps must be in [1, {config.num_train_timesteps}] "
            f"(num_train_timesteps), not {num_inference_steps!r}."
        )
    dev = next(unet.parameters()).device
    scheduler = build_scheduler(config)
    scheduler.set_timesteps(num_inference_steps, device=dev)
    x = torch.randn(tuple(shape), generator=generator, device=dev)
    unet.eval()
    with torch.no_grad():
        for t in scheduler.timesteps:
            ts = torch.full((x.shape[0],), int(t), device=dev, dtype=torch.long)
            x, _ = scheduler.step(unet(x, timesteps=ts), int(t), x, generator=generator)
        if autoencoder is not None:
            autoencoder.eval()
            x = cast(Any, autoencoder).decode_stage_2_outputs(x / config.scale_factor)
    return x
