"""The ``"reference-style"`` objective: image-to-image translation conditioned on a reference
image (style transfer by a reference, learned; issue 14).

Batches are ``{"input", "input_mask", "reference", "reference_mask", "target", "target_mask"}``
tensors ``Bx1x[SPATIAL]`` made by a ``sample_batch(step)`` function: a content image, a
reference image of another subject in another group (e.g. another site), and the target, the
content's subject rendered in the reference's group (the simulator's counterfactual truth);
each with its foreground mask. One step optimises the generator on

``l1_weight * L1_fg + mse_weight * MSE_fg + adv_weight * LSGAN``

where ``_fg`` terms weigh the target's foreground 1 and the background ``background_weight``,
then, when ``adv_weight`` > 0 and ``adv_warmup_steps`` have passed, a conditional PatchGAN on
``cat([input, target])`` (real) vs ``cat([input, prediction])`` (fake), as pix2pix
(:mod:`~medgen.generative.objectives.paired`).

The network (:class:`StyleTransferNet`, :func:`build_style_networks`) is AdaIN-style (Huang &
Belongie 2017, "Arbitrary style transfer in real-time with adaptive instance normalization"):
a content encoder and a decoder with skips (MONAI ``ResidualUnit`` / ``Convolution`` blocks,
no normalisation in the encoder); a style encoder (the same blocks) whose features at every
level are pooled over the reference's foreground into per-channel means and standard
deviations, joined with ``n_quantiles`` quantiles of the reference's and of the content's
foreground intensities and mapped by a MONAI ``FullyConnectedNet`` to a per-channel scale and
shift of every :class:`AdaIN` layer (the bottleneck and each decoder level): content features
normalised per channel and instance, then ``(1 + gamma) * h + beta``. The output is
``x + gain * decoder(...)`` with ``gain`` starting at ``gain_init`` (0: the identity).

:class:`~medgen.generative.style.StyleTransfer` trains with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from medgen.errors import ConfigError
from medgen.generative import _checks
from medgen.generative.engine import Objective, StepContext
from medgen.generative.objectives._common import (
    conditional_discriminator_step,
    generator_optimizers,
)

__all__ = [
    "REFERENCE_LOG_KEYS",
    "AdaIN",
    "ReferenceStyleObjective",
    "StyleTransferConfig",
    "StyleTransferNet",
    "build_style_networks",
    "masked_l1",
]

#: the columns of ``metrics.csv`` a reference-style run always has
REFERENCE_LOG_KEYS = ("loss_g", "l1", "mse", "adv", "loss_d")


@dataclass
class StyleTransferConfig:
    """Options of a reference-conditioned style transfer network and its objective.

    Attributes:
        spatial_dims: 2 (3 is refused: the model is 2D).
        channels: content encoder / decoder widths per level (the last is the bottleneck).
        num_res_units: subunits of each MONAI ``ResidualUnit``.
        style_channels: style encoder widths per level (each level's features are pooled).
        n_quantiles: foreground intensity quantiles of the reference and of the content given
            to the style MLP (0: none).
        style_hidden: width of the style MLP's hidden layer.
        patch_size: training patch edge (pixels), divisible by ``2**(len(channels)-1)``; the
            reference is cut at the same size (global statistics: any size at apply time).
        gain_init: starting gain of the residual (0: the network starts as the identity).
        lr_g, lr_d: Adam learning rates of the generator and the discriminator.
        betas: Adam betas.
        l1_weight, mse_weight: weights of the foreground-weighted L1 and MSE to the target.
        background_weight: weight of the target's background pixels in those terms (the
            foreground weighs 1).
        adv_weight: weight of the conditional PatchGAN (0: no discriminator is trained).
        adv_warmup_steps: steps before the adversarial term starts.
        discriminator_channels, num_layers_d: the PatchGAN's first width and depth.
    """

    spatial_dims: int = 2
    channels: tuple[int, ...] = (16, 32, 64)
    num_res_units: int = 1
    style_channels: tuple[int, ...] = (8, 16, 32)
    n_quantiles: int = 16
    style_hidden: int = 64
    patch_size: int = 64
    gain_init: float = 0.0
    lr_g: float = 1e-3
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    l1_weight: float = 1.0
    mse_weight: float = 0.0
    background_weight: float = 0.1
    adv_weight: float = 0.0
    adv_warmup_steps: int = 0
    discriminator_channels: int = 16
    num_layers_d: int = 2

    def __post_init__(self) -> None:
        owner = "StyleTransferConfig"
        if self.spatial_dims != 2:
            raise ConfigError(
                f"{owner}.spatial_dims must be 2, not {self.spatial_dims!r}: the reference-"
                "conditioned style transfer is a 2D model (apply it to the slices of a volume)."
            )
        _checks.check_network(self, owner)
        self.style_channels = tuple(int(c) for c in self.style_channels)
        if not self.style_channels or any(c < 1 for c in self.style_channels):
            raise ConfigError(
                f"{owner}.style_channels must list positive widths, e.g. (16, 32, 64), not "
                f"{self.style_channels!r}."
            )
        if len(self.channels) < 2 or any(c < 1 for c in self.channels):
            raise ConfigError(
                f"{owner}.channels must list at least two positive widths, e.g. (16, 32, 64), "
                f"not {self.channels!r}."
            )
        _checks.check_patch_size(self, owner)
        _checks.check_int(self, owner, ("num_res_units", "n_quantiles"), minimum=0)
        _checks.check_int(self, owner, ("style_hidden", "discriminator_channels"), minimum=1)
        _checks.check_int(self, owner, ("num_layers_d",), minimum=0)
        _checks.check_int(self, owner, ("adv_warmup_steps",))
        _checks.check_positive(self, owner, ("lr_g", "lr_d"))
        _checks.check_non_negative(
            self, owner, ("l1_weight", "mse_weight", "background_weight", "adv_weight")
        )
        if isinstance(self.gain_init, bool) or not isinstance(self.gain_init, int | float):
            raise ConfigError(f"{owner}.gain_init must be a number, not {self.gain_init!r}.")
        if self.l1_weight + self.mse_weight <= 0:
            raise ConfigError(
                f"{owner}: l1_weight and mse_weight are both 0, so nothing ties the output to "
                "the target; set l1_weight (e.g. 1.0)."
            )
        _checks.normalise_betas(self)


class AdaIN(nn.Module):
    """Adaptive instance normalisation (Huang & Belongie 2017): each channel of ``h``
    (``BxCx[SPATIAL]``) normalised over its spatial axes, then ``(1 + gamma) * h + beta`` with
    ``gamma``, ``beta`` ``BxC`` from the style (zeros: plain instance normalisation)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = int(num_features)
        self.eps = float(eps)

    def forward(self, h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        shape = (h.shape[0], h.shape[1]) + (1,) * (h.ndim - 2)
        dims = tuple(range(2, h.ndim))
        mean = h.mean(dim=dims, keepdim=True)
        std = torch.sqrt(h.var(dim=dims, keepdim=True, unbiased=False) + self.eps)
        return (h - mean) / std * (1.0 + gamma.reshape(shape)) + beta.reshape(shape)


def _masked_moments(feat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-channel mean and standard deviation of ``feat`` (``BxCx[S]``) over ``mask``
    (``Bx1x[S']``, resized by area to ``feat``'s grid; the whole image where it is empty):
    ``Bx2C``."""
    w = F.interpolate(mask.float(), size=tuple(feat.shape[2:]), mode="area")
    dims = tuple(range(2, feat.ndim))
    n = w.sum(dim=dims, keepdim=True)
    w = torch.where(n > 1e-3, w, torch.ones_like(w))
    n = w.sum(dim=dims, keepdim=True)
    mean = (feat * w).sum(dim=dims, keepdim=True) / n
    var = (((feat - mean) ** 2) * w).sum(dim=dims, keepdim=True) / n
    return torch.cat([mean.flatten(1), torch.sqrt(var + 1e-6).flatten(1)], dim=1)


def _masked_quantiles(x: torch.Tensor, mask: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Quantiles ``q`` of each image of ``x`` (``Bx1x[S]``) over its mask (all pixels where the
    mask is empty): ``BxQ``."""
    out = []
    for b in range(x.shape[0]):
        sel = mask[b].reshape(-1) > 0.5
        vals = x[b].reshape(-1)
        vals = vals[sel] if bool(sel.any()) else vals
        out.append(torch.quantile(vals.float(), q))
    return torch.stack(out)


class StyleTransferNet(nn.Module):
    """``x + gain * decoder(content(x), AdaIN codes of style(reference))`` (see the module
    docstring): ``forward(x, x_mask, reference, reference_mask) -> BxCx[SPATIAL]`` with ``x``
    ``Bx1x[SPATIAL]`` (each spatial size divisible by ``2**(len(channels)-1)``), the reference
    ``Bx1x[ANY]``, the masks ``Bx1x`` of the same sizes (1 = foreground)."""

    def __init__(self, config: StyleTransferConfig) -> None:
        super().__init__()
        from monai.networks.blocks import Convolution, ResidualUnit
        from monai.networks.nets import FullyConnectedNet

        c = config
        sd, ch, units = c.spatial_dims, c.channels, max(1, c.num_res_units)
        self.enc = nn.ModuleList(
            ResidualUnit(sd, 1 if i == 0 else ch[i - 1], ch[i], strides=1 if i == 0 else 2,
                         subunits=units, norm=None)
            for i in range(len(ch))
        )  # fmt: skip
        self.up = nn.ModuleList(
            Convolution(sd, ch[i], ch[i - 1], strides=2, is_transposed=True, norm=None)
            for i in range(len(ch) - 1, 0, -1)
        )
        self.fuse = nn.ModuleList(
            ResidualUnit(sd, 2 * ch[i - 1], ch[i - 1], subunits=units, norm=None)
            for i in range(len(ch) - 1, 0, -1)
        )
        widths = [ch[-1]] + [ch[i - 1] for i in range(len(ch) - 1, 0, -1)]
        self.adain = nn.ModuleList(AdaIN(w) for w in widths)
        self.act = nn.PReLU()
        self.head = Convolution(sd, ch[0], 1, kernel_size=1, conv_only=True)
        sc = c.style_channels
        self.style = nn.ModuleList(
            ResidualUnit(sd, 1 if i == 0 else sc[i - 1], sc[i], strides=1 if i == 0 else 2,
                         subunits=units, norm=None)
            for i in range(len(sc))
        )  # fmt: skip
        self.register_buffer(
            "q", torch.linspace(0.0, 1.0, c.n_quantiles) if c.n_quantiles else torch.zeros(0)
        )
        style_in = 2 * sum(sc) + 2 * c.n_quantiles
        self.widths = widths
        self.mlp = FullyConnectedNet(style_in, 2 * sum(widths), [c.style_hidden])
        out_layer = self.mlp.output
        assert isinstance(out_layer, nn.Linear)
        nn.init.zeros_(out_layer.weight)  # starts as plain instance normalisation
        if out_layer.bias is not None:
            nn.init.zeros_(out_layer.bias)
        self.gain = nn.Parameter(torch.full((), float(c.gain_init)))

    def style_code(
        self,
        x: torch.Tensor,
        x_mask: torch.Tensor,
        reference: torch.Tensor,
        reference_mask: torch.Tensor,
    ) -> torch.Tensor:
        """The style vector ``Bx(2*sum(widths))``: every AdaIN layer's ``gamma`` and ``beta``."""
        h, parts = reference, []
        for block in self.style:
            h = block(h)
            parts.append(_masked_moments(h, reference_mask))
        q = self.get_buffer("q")
        if q.numel():
            parts.append(_masked_quantiles(reference, reference_mask, q))
            parts.append(_masked_quantiles(x, x_mask, q))
        out: torch.Tensor = self.mlp(torch.cat(parts, dim=1))
        return out

    def forward(
        self,
        x: torch.Tensor,
        x_mask: torch.Tensor,
        reference: torch.Tensor,
        reference_mask: torch.Tensor,
    ) -> torch.Tensor:
        code = self.style_code(x, x_mask, reference, reference_mask)
        params, k = [], 0
        for w in self.widths:
            params.append((code[:, k : k + w], code[:, k + w : k + 2 * w]))
            k += 2 * w
        skips, h = [], x
        for block in self.enc:
            h = block(h)
            skips.append(h)
        h = self.act(self.adain[0](h, *params[0]))
        for j, (up, fuse) in enumerate(zip(self.up, self.fuse, strict=True)):
            skip = skips[-2 - j]
            h = fuse(torch.cat([up(h), skip], dim=1))
            h = self.act(self.adain[j + 1](h, *params[j + 1]))
        return x + self.gain * self.head(h)


def build_style_networks(config: StyleTransferConfig) -> dict[str, nn.Module]:
    """Untrained ``generator`` (:class:`StyleTransferNet`) and, when ``adv_weight`` > 0, the
    conditional PatchGAN ``discriminator`` (``cat([input, image])``, two channels)."""
    from medgen.generative._nets import build_discriminator

    nets: dict[str, nn.Module] = {"generator": StyleTransferNet(config)}
    if config.adv_weight > 0:
        nets["discriminator"] = build_discriminator(
            spatial_dims=config.spatial_dims,
            in_channels=2,
            channels=config.discriminator_channels,
            num_layers_d=config.num_layers_d,
        )
    return nets


def masked_l1(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, background_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L1, MSE)`` of ``pred`` to ``target``, each pixel weighted 1 inside ``mask`` and
    ``background_weight`` outside, normalised by the weights' sum."""
    w = mask.float() + float(background_weight) * (1.0 - mask.float())
    total = w.sum().clamp_min(1e-6)
    d = pred.float() - target.float()
    return (w * d.abs()).sum() / total, (w * d * d).sum() / total


class ReferenceStyleObjective(Objective):
    """Reference-conditioned style transfer (see the module docstring).

    Args:
        generator: a :class:`StyleTransferNet`.
        sample_batch: ``step -> batch`` (the six tensors of the module docstring), a pure
            function of the step.
        config: loss weights and learning rates.
        discriminator: conditional PatchGAN; required when ``config.adv_weight > 0``.
    """

    kind: ClassVar[str] = "reference-style"
    ema_networks = ("generator",)
    inference_networks = ("generator",)
    log_keys = REFERENCE_LOG_KEYS

    def __init__(
        self,
        generator: nn.Module,
        sample_batch: Callable[[int], Mapping[str, torch.Tensor]],
        *,
        config: StyleTransferConfig,
        discriminator: nn.Module | None = None,
    ) -> None:
        if config.adv_weight > 0 and discriminator is None:
            raise ConfigError(
                "ReferenceStyleObjective: adv_weight > 0 needs a discriminator; build the "
                "networks with build_style_networks(config)."
            )
        self.config = config
        self.generator, self.discriminator = generator, discriminator
        self._sample = sample_batch

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

    def train_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, Any]:
        from monai.losses import PatchAdversarialLoss

        c = self.config
        x, y = batch["input"], batch["target"]
        generator = ctx.networks["generator"]
        discriminator = ctx.networks.get("discriminator")
        adv_on = discriminator is not None and c.adv_weight > 0 and ctx.step >= c.adv_warmup_steps
        adv_loss = PatchAdversarialLoss(criterion="least_squares")
        generator.train()
        with ctx.autocast():
            pred = generator(x, batch["input_mask"], batch["reference"], batch["reference_mask"])
            l1, mse = masked_l1(pred, y, batch["target_mask"], c.background_weight)
            terms: dict[str, torch.Tensor] = {"l1": l1, "mse": mse}
            if adv_on and discriminator is not None:
                logits = discriminator(torch.cat([x, pred], dim=1))[-1]
                terms["adv"] = adv_loss(logits, target_is_real=True, for_discriminator=False)
            weights = {"l1": c.l1_weight, "mse": c.mse_weight, "adv": c.adv_weight}
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
                ctx, discriminator, adv_loss, x, y, pred
            )
        return logs
