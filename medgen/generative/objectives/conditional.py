"""Conditional objectives: a conditional VAE-GAN and a conditional latent diffusion model.

Both train on whole images (``Bx1x[SPATIAL]``, already resized and scaled to 0..1 by the caller,
e.g. :class:`~medgen.generative.synthesis.Synthesizer`) with one integer index per condition
(``BxK`` for ``K`` conditions: ``label``, ``sex``, ...). Everything is made of MONAI building
blocks (``AutoencoderKL``, ``PatchDiscriminator``, ``PatchAdversarialLoss``,
``DiffusionModelUNet``, ``DDPMScheduler``/``DDIMScheduler``); the only new module is
:class:`ConditionalAutoencoder`, which adds learned condition embeddings to the latent.

- ``"conditional-vae-gan"`` (:class:`ConditionalVAEGANObjective`, extends
  :class:`~medgen.generative.objectives.latent.AutoencoderObjective`): ``x -> q(z | x)`` (the
  encoder sees the image only), ``x' = decoder(z + sum_k E_k[c_k])`` with one learned spatial
  embedding ``E_k`` per condition (a conditional VAE, Sohn et al. 2015; the embeddings are the
  latent-space analogue of class-conditional batch statistics), loss ``l1_weight * L1 +
  kl_weight * KL`` and, after ``adv_warmup_steps``, ``adv_weight * LSGAN`` against a
  *conditional* PatchGAN that sees the image and one-hot condition maps (Isola et al. 2017;
  Larsen et al. 2016 for the VAE-GAN). Samples: ``z ~ N(0, I)`` decoded with the wanted
  conditions.
- ``"conditional-ldm"`` (:class:`ConditionalLDMObjective`, extends
  :class:`~medgen.generative.objectives.diffusion.DiffusionObjective`): latent diffusion
  (Rombach et al. 2022) in **one** engine run of two stages, so that one run folder, one
  checkpoint and bitwise resume cover both: steps ``[0, autoencoder_steps)`` train the
  ``"autoencoder"`` objective's step (an unconditional ``AutoencoderKL``); from then on the
  autoencoder is frozen, its latents are scaled by ``1 / std(z)`` (computed once, at the switch,
  from the training images; checkpointed state) and a ``DiffusionModelUNet`` with
  ``num_class_embeds = n_combinations + 1`` learns the noise of the combined condition index;
  the index is replaced by the null class with probability ``cond_dropout`` (classifier-free
  guidance, Ho & Salimans 2022). :func:`sample_ddim` draws with DDIM (Song et al. 2021) in few
  steps and the guidance scale.

All randomness of a step (posterior samples, noise, timesteps, condition dropout) uses torch's
RNG, which the engine seeds per step; batches are a pure function of ``(seed, step)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, cast

import numpy as np
import torch
from torch import nn

from medgen.errors import ConfigError, MedgenValueError
from medgen.generative import _checks
from medgen.generative.engine import StepContext
from medgen.generative.objectives.diffusion import (
    DiffusionConfig,
    DiffusionObjective,
    build_scheduler,
    build_unet,
)
from medgen.generative.objectives.latent import (
    AutoencoderConfig,
    AutoencoderObjective,
    build_autoencoder,
)

__all__ = [
    "ConditionalAutoencoder",
    "ConditionalDiffusionConfig",
    "ConditionalLDMObjective",
    "ConditionalVAEGANConfig",
    "ConditionalVAEGANObjective",
    "build_conditional_autoencoder",
    "build_conditional_unet",
    "condition_maps",
    "latent_shape",
    "sample_ddim",
]


def latent_shape(
    image_size: Sequence[int], channels: Sequence[int], latent_channels: int
) -> tuple[int, ...]:
    """``(latent_channels, *spatial)`` of an ``AutoencoderKL`` with ``channels`` on images of
    ``image_size`` (each level but the last halves the size)."""
    k = 2 ** (len(channels) - 1)
    return (int(latent_channels), *(int(s) // k for s in image_size))


def check_image_size(
    image_size: Sequence[int], channels: Sequence[int], owner: str
) -> tuple[int, ...]:
    """``image_size`` as ints, each divisible by the autoencoder's down-sampling."""
    k = 2 ** (len(channels) - 1)
    size = tuple(int(s) for s in image_size)
    if not size or any(s < k or s % k for s in size):
        raise ConfigError(
            f"{owner}.image_size must be sizes divisible by 2**(len(channels)-1) = {k}, not "
            f"{tuple(image_size)!r}; choose e.g. {tuple(max(k, (s // k) * k) for s in size)}."
        )
    return size


def condition_maps(weights: Sequence[torch.Tensor], spatial: Sequence[int]) -> torch.Tensor:
    """One-hot (or soft) condition vectors ``[BxV_k]`` as constant maps ``Bx(sum V_k)x[SPATIAL]``
    (the extra input channels of the conditional discriminator)."""
    w = torch.cat([t.float() for t in weights], dim=1)
    return w.view(*w.shape, *([1] * len(spatial))).expand(*w.shape, *spatial)


def one_hots(index: torch.Tensor, num_classes: Sequence[int]) -> list[torch.Tensor]:
    """``BxK`` integer indices as ``K`` one-hot matrices ``BxV_k``."""
    return [
        nn.functional.one_hot(index[:, k].long(), int(v)).float() for k, v in enumerate(num_classes)
    ]


class ConditionalAutoencoder(nn.Module):
    """MONAI ``AutoencoderKL`` whose decoder input is ``z + sum_k E_k[c_k]`` (``+ M(mask)``).

    ``E_k`` (``nn.Embedding(V_k, prod(latent_shape))``) is a learned latent-shaped map per value
    of condition ``k``. Conditions are given as ``K`` weight matrices ``BxV_k``: one-hot for a
    known value, the training frequencies for "unconditioned", a mix of two for interpolation.

    With ``mask_condition`` the decoder also sees where the lesions are: ``M`` is a 3x3 MONAI
    ``Convolution`` of the lesion mask's occupancy (area-average) and presence (max) pooled to
    the latent grid, added to the latent like the embeddings. Why: a condition embedding is one
    fixed map per value, so it cannot say "a lesion *here*" when lesions sit anywhere, and
    lesions of a label-1 sample then come only from its latent, which a fitted prior does not
    place (docs/synthesis.md, "mask-conditioned decoding").

    Args:
        autoencoder: the ``AutoencoderKL``.
        num_classes: ``V_k``, the number of values of each condition.
        latent_shape: ``(latent_channels, *spatial)`` of the latent.
        mask_condition: add the mask path ``M``.
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        num_classes: Sequence[int],
        latent_shape: Sequence[int],
        *,
        mask_condition: bool = False,
    ) -> None:
        super().__init__()
        from monai.networks.blocks import Convolution

        self.autoencoder = autoencoder
        self.num_classes = tuple(int(v) for v in num_classes)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        size = math.prod(self.latent_shape)
        self.embeddings = nn.ModuleList(nn.Embedding(v, size) for v in self.num_classes)
        for emb in self.embeddings:
            nn.init.normal_(cast(nn.Embedding, emb).weight, std=0.1)
        self.mask_embedding: nn.Module | None = None
        if mask_condition:
            self.mask_embedding = Convolution(
                spatial_dims=len(self.latent_shape) - 1,
                in_channels=2,
                out_channels=self.latent_shape[0],
                kernel_size=3,
                conv_only=True,
            )

    @property
    def mask_condition(self) -> bool:
        """Whether the decoder sees a lesion mask."""
        return self.mask_embedding is not None

    def mask_offset(self, mask: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """``M(mask)`` (``Bx[latent_shape]``) of masks ``Bx1x[SPATIAL]`` (0..1); ``None``
        masks: no lesion anywhere. ``None`` without ``mask_condition``."""
        if self.mask_embedding is None:
            return None
        spatial = self.latent_shape[1:]
        w = next(self.mask_embedding.parameters())
        if mask is None:  # both poolings of an empty mask
            pooled = w.new_zeros((batch, 2, *spatial))
        else:
            m = mask.to(w)
            f: Any = nn.functional
            nd = len(spatial)
            avg = f.adaptive_avg_pool2d if nd == 2 else f.adaptive_avg_pool3d
            mx = f.adaptive_max_pool2d if nd == 2 else f.adaptive_max_pool3d
            pooled = torch.cat([avg(m, spatial), mx(m, spatial)], dim=1)
        return cast(torch.Tensor, self.mask_embedding(pooled))

    def offset(self, weights: Sequence[torch.Tensor]) -> torch.Tensor:
        """``sum_k weights_k @ E_k``: the latent offset ``Bx[latent_shape]`` of the conditions."""
        out = None
        for w, emb in zip(weights, self.embeddings, strict=True):
            term = w.to(cast(nn.Embedding, emb).weight) @ cast(nn.Embedding, emb).weight
            out = term if out is None else out + term
        assert out is not None  # at least one condition (checked by the configs)
        return out.view(-1, *self.latent_shape)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior moments ``(z_mu, z_sigma)`` of images ``Bx1x[SPATIAL]``."""
        mu, sigma = cast(Any, self.autoencoder).encode(x)
        return mu, sigma

    def decode(
        self,
        z: torch.Tensor,
        weights: Sequence[torch.Tensor],
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Images ``Bx1x[SPATIAL]`` of latents ``z`` under the conditions ``weights`` (and, with
        ``mask_condition``, the lesion masks ``mask`` ``Bx1x[SPATIAL]``; ``None``: none)."""
        off = self.offset(weights).to(dtype=z.dtype)
        moff = self.mask_offset(mask, z.shape[0])
        if moff is not None:
            off = off + moff.to(dtype=z.dtype)
        return cast(torch.Tensor, cast(Any, self.autoencoder).decode(z + off))

    def forward(
        self, x: torch.Tensor, index: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(reconstruction, z_mu, z_sigma)`` of images ``x`` with condition indices ``BxK``
        (and lesion masks ``mask``, see :meth:`decode`)."""
        mu, sigma = self.encode(x)
        z = cast(Any, self.autoencoder).sampling(mu, sigma)
        return self.decode(z, one_hots(index, self.num_classes), mask), mu, sigma


@dataclass
class ConditionalVAEGANConfig(AutoencoderConfig):
    """Options of the conditional VAE-GAN (:class:`AutoencoderConfig`'s, with other defaults).

    Attributes:
        image_size: the training image size (each axis divisible by ``2**(len(channels)-1)``).
        num_classes: the number of values of each condition.
        guide_weight: weight of the classifier guidance (0: off). A guide classifier (the small
            MONAI ``DenseNet`` of :func:`build_guide`, one logit group per condition) learns the
            conditions from the real training images during the run; after
            ``guide_warmup_steps`` the autoencoder also minimises ``guide_weight`` times its
            cross-entropy on the reconstructions (their own conditions) and on *counterfactual*
            decodes ``decoder(z + E[c'])`` of the same latents under the conditions ``c'`` of
            another image of the batch, which the discriminator also sees as fakes under
            ``c'``. Why: without it the decoder draws what ``z`` says and ignores the condition
            embeddings, so samples conditioned on ``label = 1`` carry no lesions
            (docs/synthesis.md).
        guide_warmup_steps: steps of the guide's own training before the guidance starts.
        guide_conditions: the indices of the conditions the guide learns and guides (``()``:
            all). A condition the images barely show (the demo cohort's ``sex``: AUC 0.58 on
            real images) gives the guide nothing real to learn, and guiding it only teaches the
            decoder patterns that fool the guide.
        lr_guide: Adam learning rate of the guide classifier.
        mask_condition: the decoder also sees the lesion mask (:class:`ConditionalAutoencoder`;
            the objective then needs ``masks``) and so does the discriminator (one more input
            channel), which is what makes the decoder draw a lesion where the mask says.
        guide_noise: standard deviation of the Gaussian noise added to every image the guide
            sees (real and generated, in the 0..1 units): a classifier trained and applied on
            noisy images has smoother gradients, which the decoder cannot satisfy with
            imperceptible, adversarial patterns as easily (Dhariwal & Nichol 2021 train their
            guidance classifiers on noisy inputs for the same reason).
        (the rest: see :class:`~medgen.generative.objectives.latent.AutoencoderConfig`;
        ``patch_size`` is set to the smallest image edge: whole images are used).
    """

    channels: tuple[int, ...] = (16, 32, 64)
    image_size: tuple[int, ...] = (64, 64)
    num_classes: tuple[int, ...] = (2,)
    kl_weight: float = 1e-4
    adv_weight: float = 0.05
    adv_warmup_steps: int = 100
    lr_g: float = 5e-4
    discriminator_channels: int = 16
    num_layers_d: int = 2
    guide_weight: float = 0.0
    guide_warmup_steps: int = 200
    lr_guide: float = 1e-3
    guide_noise: float = 0.1
    guide_conditions: tuple[int, ...] = ()
    mask_condition: bool = False

    def __post_init__(self) -> None:
        owner = "ConditionalVAEGANConfig"
        if self.mask_condition and self.guide_weight > 0:
            raise ConfigError(
                f"{owner}: mask_condition and guide_weight > 0 do not combine (the guide's "
                "counterfactual decodes would need counterfactual masks); use one of them."
            )
        _checks.check_non_negative(self, owner, ("guide_weight", "guide_noise"))
        _checks.check_int(self, owner, ("guide_warmup_steps",), minimum=0)
        _checks.check_positive(self, owner, ("lr_guide",))
        self.guide_conditions = tuple(int(k) for k in self.guide_conditions)
        self.channels = tuple(int(c) for c in self.channels)
        self.image_size = check_image_size(self.image_size, self.channels, owner)
        if len(self.image_size) != self.spatial_dims:
            raise ConfigError(
                f"{owner}.image_size {self.image_size} must have spatial_dims={self.spatial_dims} "
                "sizes."
            )
        self.patch_size = min(self.image_size)
        self.num_classes = tuple(int(v) for v in self.num_classes)
        if not self.num_classes or min(self.num_classes) < 1:
            raise ConfigError(
                f"{owner}.num_classes must list one positive count per condition, not "
                f"{self.num_classes!r}."
            )
        super().__post_init__()
        k = len(self.num_classes)
        if any(not 0 <= g < k for g in self.guide_conditions) or len(
            set(self.guide_conditions)
        ) != len(self.guide_conditions):
            raise ConfigError(
                f"{owner}.guide_conditions must be distinct condition indices in [0, {k}), not "
                f"{self.guide_conditions!r}."
            )

    @property
    def guided(self) -> tuple[int, ...]:
        """The indices of the guided conditions (all when ``guide_conditions`` is empty)."""
        return self.guide_conditions or tuple(range(len(self.num_classes)))


def build_guide(spatial_dims: int, num_classes: Sequence[int]) -> nn.Module:
    """The guide classifier of the conditional VAE-GAN: the small MONAI ``DenseNet`` of
    :meth:`Synthesizer.evaluate`'s classifier (``CLASSIFIER_DENSENET``: 16 initial features,
    growth 8, blocks (2, 2, 2)) with ``sum(num_classes)`` logits, one group of ``V_k`` per
    condition (:func:`guide_loss`)."""
    from monai.networks.nets import DenseNet

    from medgen.generative._synth_eval import CLASSIFIER_DENSENET

    init_features, growth_rate, blocks = CLASSIFIER_DENSENET
    return DenseNet(
        spatial_dims=spatial_dims,
        in_channels=1,
        out_channels=sum(int(v) for v in num_classes),
        init_features=init_features,
        growth_rate=growth_rate,
        block_config=blocks,
    )


def guide_loss(
    logits: torch.Tensor, index: torch.Tensor, num_classes: Sequence[int]
) -> torch.Tensor:
    """The mean over conditions of the cross-entropy of each logit group ``BxV_k`` against the
    condition indices ``index[:, k]``."""
    parts = torch.split(logits.float(), [int(v) for v in num_classes], dim=1)
    losses = [nn.functional.cross_entropy(part, index[:, k].long()) for k, part in enumerate(parts)]
    return torch.stack(losses).mean()


def build_conditional_autoencoder(config: ConditionalVAEGANConfig) -> ConditionalAutoencoder:
    """The :class:`ConditionalAutoencoder` of ``config`` (one input channel)."""
    shape = latent_shape(config.image_size, config.channels, config.latent_channels)
    return ConditionalAutoencoder(
        build_autoencoder(config),
        config.num_classes,
        shape,
        mask_condition=bool(config.mask_condition),
    )


def _whole_images(
    images: Any, conditions: Any, *, spatial_dims: int, owner: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(images N x [SPATIAL] float32, conditions N x K int64)``, checked."""
    arr = np.ascontiguousarray(np.asarray(images, dtype=np.float32))
    idx = np.ascontiguousarray(np.asarray(conditions, dtype=np.int64))
    if arr.ndim != spatial_dims + 1 or len(arr) == 0:
        raise MedgenValueError(
            f"{owner}: images must be a non-empty N x [SPATIAL] array of {spatial_dims}D images "
            f"of one size, got shape {arr.shape}."
        )
    if idx.ndim != 2 or len(idx) != len(arr):
        raise MedgenValueError(
            f"{owner}: conditions must be an N x K integer array with one row per image "
            f"(N = {len(arr)}), got shape {idx.shape}."
        )
    return arr, idx


def _masks(masks: Any, images: np.ndarray, owner: str) -> np.ndarray | None:
    """``masks`` as float32 ``N x [SPATIAL]`` (0..1) of the images' shape, or ``None``."""
    if masks is None:
        return None
    m = np.ascontiguousarray(np.asarray(masks, dtype=np.float32))
    if m.shape != images.shape:
        raise MedgenValueError(
            f"{owner}: masks must have the images' shape {images.shape}, got {m.shape}."
        )
    return np.clip(m, 0.0, 1.0)


def _batch(
    images: np.ndarray, masks: np.ndarray | None, idx: np.ndarray, **extra: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``{"image": Bx1x[SPATIAL]}`` of rows ``idx`` (and ``"mask"``, the same shape), + extra."""
    out = {"image": torch.from_numpy(images[idx][:, None].copy())}
    if masks is not None:
        out["mask"] = torch.from_numpy(masks[idx][:, None].copy())
    return {**out, **extra}


class ConditionalVAEGANObjective(AutoencoderObjective):
    """Conditional VAE-GAN on whole images (see the module docstring).

    Args:
        images: ``N x [SPATIAL]`` float array (0..1), one size (``config.image_size``).
        conditions: ``N x K`` integer indices (``0 <= c_k < config.num_classes[k]``).
        config: options.
        masks: ``N x [SPATIAL]`` lesion masks (0..1) for ``config.lesion_weight``, or ``None``.

    Batches: ``{"image": Bx1x[SPATIAL], "condition": BxK}`` (and ``"mask"`` with masks).
    Networks: ``"autoencoder"`` (a :class:`ConditionalAutoencoder`; EMA, inference), with
    ``adv_weight > 0`` ``"discriminator"`` (a PatchGAN on the image and ``sum V_k`` condition
    maps), and with ``guide_weight > 0`` ``"guide"`` (:func:`build_guide`; trained, not part of
    the model).
    """

    log_keys = ("loss_g", "l1", "kl", "adv", "loss_d", "guide", "guide_recon", "guide_cf")  # type: ignore[assignment]

    kind: ClassVar[str] = "conditional-vae-gan"

    def __init__(
        self,
        images: Any,
        conditions: Any,
        *,
        config: ConditionalVAEGANConfig | None = None,
        masks: Any = None,
    ) -> None:
        self.config: ConditionalVAEGANConfig = (
            config if config is not None else ConditionalVAEGANConfig()
        )
        c = self.config
        self.images, self.conditions = _whole_images(
            images, conditions, spatial_dims=c.spatial_dims, owner=type(self).__name__
        )
        if tuple(self.images.shape[1:]) != c.image_size:
            raise MedgenValueError(
                f"{type(self).__name__}: images have size {self.images.shape[1:]}, the config "
                f"says image_size={c.image_size}; resize the images first."
            )
        bad = [k for k, v in enumerate(c.num_classes) if self.conditions[:, k].max() >= v]
        if self.conditions.shape[1] != len(c.num_classes) or bad or self.conditions.min() < 0:
            raise MedgenValueError(
                f"{type(self).__name__}: conditions must hold {len(c.num_classes)} indices per "
                f"image in [0, num_classes) = {c.num_classes}."
            )
        self.masks = _masks(masks, self.images, type(self).__name__)
        if c.mask_condition and self.masks is None:
            raise MedgenValueError(
                f"{type(self).__name__}: config.mask_condition decodes under lesion masks; pass "
                "masks= (one per image, zeros where there is no lesion)."
            )

    def build_networks(self) -> dict[str, nn.Module]:
        from medgen.generative._nets import build_discriminator

        c = self.config
        nets: dict[str, nn.Module] = {"autoencoder": build_conditional_autoencoder(c)}
        if c.adv_weight > 0:  # it sees the image and one-hot maps of the conditions
            nets["discriminator"] = build_discriminator(
                spatial_dims=c.spatial_dims,
                in_channels=1 + sum(c.num_classes) + int(c.mask_condition),
                channels=c.discriminator_channels,
                num_layers_d=c.num_layers_d,
            )
        if c.guide_weight > 0:
            nets["guide"] = build_guide(c.spatial_dims, [c.num_classes[k] for k in c.guided])
        return nets

    def build_optimizers(
        self, networks: Mapping[str, nn.Module]
    ) -> dict[str, torch.optim.Optimizer]:
        opts = super().build_optimizers(networks)
        if "guide" in networks:
            c = self.config
            opts["guide"] = torch.optim.Adam(
                networks["guide"].parameters(), lr=c.lr_guide, betas=c.betas
            )
        return opts

    def sample_batch(self, step: int) -> Mapping[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        idx = rng.integers(len(self.images), size=self.batch_size)
        cond = torch.from_numpy(self.conditions[idx].copy())
        return _batch(self.images, self.masks, idx, condition=cond)

    def _guide_loss(self, guide: nn.Module, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """:func:`guide_loss` of the guide on ``x`` plus ``guide_noise`` Gaussian noise against
        the guided columns of ``cond``."""
        c = self.config
        k = list(c.guided)
        logits = guide(self._noisy(x))
        return guide_loss(logits, cond[:, k], [c.num_classes[i] for i in k])

    def _noisy(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` plus ``guide_noise`` Gaussian noise (the guide's inputs)."""
        s = float(self.config.guide_noise)
        return x + s * torch.randn_like(x) if s > 0 else x

    def train_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, Any]:
        from monai.losses import PatchAdversarialLoss

        from medgen.generative.objectives._common import kl_divergence, lesion_weighted_l1

        c = self.config
        x, cond = batch["image"], batch["condition"]
        ae = cast(ConditionalAutoencoder, ctx.networks["autoencoder"])
        disc = ctx.networks.get("discriminator")
        adv = PatchAdversarialLoss(criterion="least_squares")
        adv_on = disc is not None and ctx.step >= c.adv_warmup_steps
        maps = condition_maps(one_hots(cond, c.num_classes), x.shape[2:]).to(x)
        mask = batch.get("mask") if c.mask_condition else None
        if mask is not None:  # the discriminator judges the image under its mask too
            maps = torch.cat([maps, mask.to(maps)], dim=1)
        guide = ctx.networks.get("guide")
        guide_on = guide is not None and ctx.step >= c.guide_warmup_steps
        cf: torch.Tensor | None = None  # the counterfactual decodes and their conditions
        cf_maps: torch.Tensor | None = None
        ae.train()
        with ctx.autocast():
            mu, sigma = ae.encode(x)
            z = cast(Any, ae.autoencoder).sampling(mu, sigma)
            recon = ae.decode(z, one_hots(cond, c.num_classes), mask)
            logs: dict[str, torch.Tensor] = {
                "l1": lesion_weighted_l1(recon, x, batch.get("mask"), c.lesion_weight),
                "kl": kl_divergence(mu.float(), sigma.float()),
            }
            loss_g = c.l1_weight * logs["l1"] + c.kl_weight * logs["kl"]
            if guide_on and guide is not None:
                # the conditions of another image of the batch (a random permutation keeps the
                # joint distribution of the conditions)
                cf_cond = cond[torch.randperm(len(cond)).to(cond.device)]
                cf = ae.decode(z, one_hots(cf_cond, c.num_classes))
                cf_maps = condition_maps(one_hots(cf_cond, c.num_classes), x.shape[2:]).to(x)
                guide.eval()  # its batch statistics stay those of real images
                logs["guide_recon"] = self._guide_loss(guide, recon, cond)
                logs["guide_cf"] = self._guide_loss(guide, cf, cf_cond)
                loss_g = loss_g + c.guide_weight * (logs["guide_recon"] + logs["guide_cf"])
            if adv_on and disc is not None:
                fake = torch.cat([recon, maps.to(recon.dtype)], dim=1)
                logs["adv"] = adv(disc(fake)[-1], target_is_real=True, for_discriminator=False)
                if cf is not None and cf_maps is not None:
                    fake_cf = torch.cat([cf, cf_maps.to(cf.dtype)], dim=1)
                    logs["adv"] = 0.5 * (
                        logs["adv"]
                        + adv(disc(fake_cf)[-1], target_is_real=True, for_discriminator=False)
                    )
                loss_g = loss_g + c.adv_weight * logs["adv"]
        ctx.backward(loss_g, "autoencoder")
        logs["loss_g"] = loss_g
        if adv_on and disc is not None:
            with ctx.autocast():
                real = torch.cat([x, maps], dim=1)
                fake = torch.cat([recon.detach(), maps.to(recon.dtype)], dim=1)
                loss_fake = adv(disc(fake)[-1], target_is_real=False, for_discriminator=True)
                if cf is not None and cf_maps is not None:
                    fake_cf = torch.cat([cf.detach(), cf_maps.to(cf.dtype)], dim=1)
                    loss_fake = 0.5 * (
                        loss_fake
                        + adv(disc(fake_cf)[-1], target_is_real=False, for_discriminator=True)
                    )
                logs["loss_d"] = 0.5 * (
                    adv(disc(real)[-1], target_is_real=True, for_discriminator=True) + loss_fake
                )
            ctx.backward(logs["loss_d"], "discriminator")
        if guide is not None:
            # the guide learns the conditions from real images only (left-right flips: the
            # anatomy, lesions and conditions do not change with them)
            flip = (torch.rand(len(x)) < 0.5).to(x.device).view(-1, *([1] * (x.ndim - 1)))
            guide.train()
            with ctx.autocast():
                logs["guide"] = self._guide_loss(guide, torch.where(flip, x.flip(-1), x), cond)
            ctx.backward(logs["guide"], "guide")
        return {k: v.detach() for k, v in logs.items()}


@dataclass
class ConditionalDiffusionConfig(DiffusionConfig):
    """Options of the conditional diffusion stage (:class:`DiffusionConfig`'s, and:).

    Attributes:
        lr: Adam learning rate of the U-Net (higher than :class:`DiffusionConfig`'s: the
            default U-Net is small).
        num_class_embeds: the number of condition combinations (the null class is one more).
        cond_dropout: probability of replacing a step's condition by the null class (CFG).
        autoencoder_steps: steps of stage 1 (the autoencoder) before the diffusion stage.
        scale_latents: scale the latents by ``1 / std(z)`` (Rombach et al.); else ``scale_factor``.
    """

    channels: tuple[int, ...] = (32, 64)
    lr: float = 1e-3
    num_class_embeds: int = 2
    cond_dropout: float = 0.1
    autoencoder_steps: int = 200
    scale_latents: bool = True

    def __post_init__(self) -> None:
        owner = "ConditionalDiffusionConfig"
        super().__post_init__()
        _checks.check_int(self, owner, ("num_class_embeds",), minimum=1)
        _checks.check_int(self, owner, ("autoencoder_steps",), minimum=0)
        if not 0.0 <= float(self.cond_dropout) < 1.0:
            raise ConfigError(f"{owner}.cond_dropout must be in [0, 1), not {self.cond_dropout!r}.")

    @property
    def null_class(self) -> int:
        """The class index of "no condition" (classifier-free guidance)."""
        return int(self.num_class_embeds)


def build_conditional_unet(config: ConditionalDiffusionConfig, in_channels: int) -> nn.Module:
    """MONAI ``DiffusionModelUNet`` with ``num_class_embeds + 1`` class embeddings (the last:
    the null class): ``(BxCx[SPATIAL], timesteps B, class_labels B) -> BxCx[SPATIAL]``."""
    return build_unet(config, in_channels, num_class_embeds=config.num_class_embeds + 1)


class ConditionalLDMObjective(DiffusionObjective):
    """Two-stage conditional latent diffusion in one run (see the module docstring).

    Args:
        images: ``N x [SPATIAL]`` float array (0..1), one size.
        labels: ``N`` combined condition indices in ``[0, config.num_class_embeds)``.
        config: the diffusion stage's options.
        autoencoder_config: stage 1's (the ``"autoencoder"`` objective's; its ``patch_size``
            must be the smallest image edge, its ``spatial_dims`` the same).
        masks: ``N x [SPATIAL]`` lesion masks (0..1) for stage 1's ``lesion_weight``, or
            ``None``.

    Batches: ``{"image": Bx1x[SPATIAL], "label": B}`` (and ``"mask"`` with masks). Networks:
    ``"autoencoder"`` (trained in stage 1, frozen after; inference), ``"discriminator"``
    (stage 1, with ``adv_weight > 0``), ``"unet"`` (EMA; inference). State: the latent ``scale_factor`` (``None`` until stage 2).
    """

    kind: ClassVar[str] = "conditional-ldm"
    ema_networks = ("unet",)
    inference_networks = ("autoencoder", "unet")
    log_keys = ("loss_g", "l1", "kl", "adv", "loss_d", "loss")  # type: ignore[assignment]

    def __init__(
        self,
        images: Any,
        labels: Any,
        *,
        config: ConditionalDiffusionConfig | None = None,
        autoencoder_config: AutoencoderConfig | None = None,
        masks: Any = None,
    ) -> None:
        self.config: ConditionalDiffusionConfig = (
            config if config is not None else ConditionalDiffusionConfig()
        )
        c = self.config
        lab = np.asarray(labels, dtype=np.int64).reshape(-1, 1)
        self.images, idx = _whole_images(
            images, lab, spatial_dims=c.spatial_dims, owner=type(self).__name__
        )
        self.labels = idx[:, 0]
        self.masks = _masks(masks, self.images, type(self).__name__)
        if self.labels.min() < 0 or self.labels.max() >= c.num_class_embeds:
            raise MedgenValueError(
                f"{type(self).__name__}: labels must be in [0, num_class_embeds = "
                f"{c.num_class_embeds})."
            )
        ae_cfg = autoencoder_config or AutoencoderConfig(
            spatial_dims=c.spatial_dims, patch_size=min(self.images.shape[1:])
        )
        # stage 1 is the "autoencoder" objective itself (its pool: the same whole images)
        self.stage1 = AutoencoderObjective(list(self.images), config=ae_cfg)
        self.autoencoder = None
        self.scheduler = build_scheduler(c)
        self.scale_factor: float | None = None

    def setup(self, config: Any) -> None:
        super().setup(config)
        self.stage1.setup(config)

    def config_dict(self) -> dict[str, Any]:
        import json

        return {
            "diffusion": json.loads(json.dumps(asdict(self.config), default=list)),
            "autoencoder": self.stage1.config_dict(),
        }

    def build_networks(self) -> dict[str, nn.Module]:
        nets = dict(self.stage1.build_networks())
        latent = int(self.stage1.config.latent_channels)
        nets["unet"] = build_conditional_unet(self.config, latent)
        return nets

    def build_optimizers(
        self, networks: Mapping[str, nn.Module]
    ) -> dict[str, torch.optim.Optimizer]:
        opts = dict(self.stage1.build_optimizers(networks))
        opts.update(super().build_optimizers(networks))
        return opts

    def sample_batch(self, step: int) -> Mapping[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        idx = rng.integers(len(self.images), size=self.batch_size)
        return _batch(self.images, self.masks, idx, label=torch.from_numpy(self.labels[idx].copy()))

    def state_dict(self) -> dict[str, Any]:
        return {"scale_factor": self.scale_factor}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        sf = state.get("scale_factor")
        self.scale_factor = None if sf is None else float(sf)

    def _latent_scale(self, ae: nn.Module, device: torch.device) -> float:
        """``1 / std`` of the posterior means of (up to 64 of) the training images."""
        if not self.config.scale_latents:
            return float(self.config.scale_factor)
        x = torch.from_numpy(self.images[:64][:, None].copy()).to(device)
        with torch.no_grad():
            mu, _ = cast(Any, ae).encode(x)
        std = float(mu.float().std())
        return 1.0 / std if std > 1e-6 else 1.0

    def train_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> dict[str, Any]:
        c = self.config
        if ctx.step < c.autoencoder_steps:
            return self.stage1.train_step(
                {k: v for k, v in batch.items() if k in ("image", "mask")}, ctx
            )
        ae = ctx.networks["autoencoder"]
        ae.eval()
        for p in ae.parameters():
            p.requires_grad_(False)
        if self.scale_factor is None:
            self.scale_factor = self._latent_scale(ae, ctx.device)
        unet = ctx.networks["unet"]
        x, label = batch["image"], batch["label"].long()
        with torch.no_grad():
            z = cast(Any, ae).encode_stage_2_inputs(x) * self.scale_factor
        noise = torch.randn_like(z)
        t = torch.randint(0, c.num_train_timesteps, (z.shape[0],), device=z.device).long()
        drop = torch.rand(z.shape[0], device=z.device) < c.cond_dropout
        label = torch.where(drop, torch.full_like(label, c.null_class), label)
        noisy = self.scheduler.add_noise(original_samples=z, noise=noise, timesteps=t)
        unet.train()
        with ctx.autocast():
            pred = unet(noisy, timesteps=t, class_labels=label)
            loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        ctx.backward(loss, "unet")
        return {"loss": loss.detach()}


def ddim_scheduler(config: DiffusionConfig, num_inference_steps: int, device: Any) -> Any:
    """MONAI ``DDIMScheduler`` on ``config``'s noise schedule, without clipping (latents are
    not in [-1, 1]), set to ``num_inference_steps``."""
    from monai.networks.schedulers import DDIMScheduler

    if not 1 <= num_inference_steps <= config.num_train_timesteps:
        raise ConfigError(
            f"num_inference_steps must be in [1, {config.num_train_timesteps}] "
            f"(num_train_timesteps), not {num_inference_steps!r}."
        )
    sched = DDIMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        schedule=config.schedule,
        clip_sample=False,
    )
    sched.set_timesteps(num_inference_steps, device=device)
    return sched


def sample_ddim(
    unet: nn.Module,
    *,
    config: ConditionalDiffusionConfig,
    labels: torch.Tensor,
    noise: torch.Tensor,
    num_inference_steps: int = 20,
    guidance_scale: float = 1.0,
    start: float = 1.0,
    latents: torch.Tensor | None = None,
    batch_guidance: bool = True,
) -> torch.Tensor:
    """Denoise with DDIM (eta = 0: deterministic given ``noise``) and classifier-free guidance.

    With guidance (``guidance_scale != 1``) each step needs the conditional and the
    unconditional noise estimates; by default they come from **one** U-Net pass over the batch
    stacked with itself (``2B``: ``labels``, then the null class): one call per step instead of
    two, which pays where calls are costly (GPU kernel launches). On CPU it is no faster:
    ``benchmarks/synthesis.py --only-sampling`` measured the same images/s as two passes within
    noise at 64x64 on 2 shared cores (a 128-batch pass ~10 % slower than two of 64 in a
    micro-benchmark); fewer DDIM steps are what speed CPU sampling up (docs/synthesis.md).

    Args:
        unet: the trained (EMA) U-Net.
        config: its options.
        labels: ``B`` condition indices (``config.null_class``: unconditioned).
        noise: ``BxCx[SPATIAL]`` standard normal noise (on the unet's device).
        num_inference_steps: DDIM steps over the whole schedule.
        guidance_scale: ``w`` in ``eps_u + w * (eps_c - eps_u)``; 1: the conditional model only.
        start: fraction of the schedule to run (SDEdit, Meng et al. 2022): with ``latents``, they
            are noised to ``t = start * T`` and denoised from there; 1: from pure noise.
        latents: the clean latents of the ``start < 1`` case.
        batch_guidance: ``False``: two U-Net passes per step (conditional, then unconditional):
            the reference path, equal to the batched one within float round-off (tested).

    Returns:
        Latents ``BxCx[SPATIAL]`` (scaled like the training latents).
    """
    dev = noise.device
    sched = ddim_scheduler(config, num_inference_steps, dev)
    steps = [int(t) for t in sched.timesteps]
    if latents is not None and start < 1.0:
        t0 = start * config.num_train_timesteps
        steps = [t for t in steps if t < t0] or steps[-1:]
        ts0 = torch.full((noise.shape[0],), steps[0], device=dev, dtype=torch.long)
        x = sched.add_noise(original_samples=latents, noise=noise, timesteps=ts0)
    else:
        x = noise
    null = torch.full_like(labels, config.null_class)
    unet.eval()
    with torch.no_grad():
        for t in steps:
            ts = torch.full((x.shape[0],), t, device=dev, dtype=torch.long)
            if guidance_scale == 1.0:
                eps = unet(x, timesteps=ts, class_labels=labels)
            elif not batch_guidance:
                eps_c = unet(x, timesteps=ts, class_labels=labels)
                eps_u = unet(x, timesteps=ts, class_labels=null)
                eps = eps_u + guidance_scale * (eps_c - eps_u)
            else:
                both = unet(
                    torch.cat([x, x]),
                    timesteps=torch.cat([ts, ts]),
                    class_labels=torch.cat([labels, null]),
                )
                eps_c, eps_u = both.chunk(2)
                eps = eps_u + guidance_scale * (eps_c - eps_u)
            x, _ = sched.step(eps, t, x)
    return x
