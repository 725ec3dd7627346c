"""Objectives of the generative engine, one module each (:mod:`medgen.generative.engine`).

- :mod:`~medgen.generative.objectives.paired`: paired restoration / pix2pix (``"paired"``):
  L1 / MSE / SSIM / KL content terms + an optional conditional PatchGAN; what
  :class:`~medgen.generative.Denoiser` and :class:`~medgen.generative.SuperResolver` train with.
- :mod:`~medgen.generative.objectives.unpaired`: CycleGAN (``"cyclegan"``) between two pools of
  images (e.g. site A and site B of a cohort), with an image pool.
- :mod:`~medgen.generative.objectives.latent`: a KL autoencoder, optionally adversarial
  (``"autoencoder"``; the first stage of latent diffusion).
- :mod:`~medgen.generative.objectives.diffusion`: DDPM noise prediction (``"diffusion"``) in the
  latent space of a frozen autoencoder, or in image space.
- :mod:`~medgen.generative.objectives.conditional`: the conditional VAE-GAN
  (``"conditional-vae-gan"``) and conditional latent diffusion with classifier-free guidance
  (``"conditional-ldm"``) behind :class:`~medgen.generative.Synthesizer`.
- :mod:`~medgen.generative.objectives.reference`: translation conditioned on a reference image
  (``"reference-style"``, AdaIN-style) behind :class:`~medgen.generative.StyleTransfer`.

Adding an objective needs no change to the engine: subclass
:class:`~medgen.generative.engine.Objective` (docs/engine.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medgen._internal.lazy import lazy_attributes

if TYPE_CHECKING:
    from medgen.generative.objectives.conditional import (
        ConditionalDiffusionConfig,
        ConditionalLDMObjective,
        ConditionalVAEGANConfig,
        ConditionalVAEGANObjective,
    )
    from medgen.generative.objectives.diffusion import DiffusionConfig, DiffusionObjective
    from medgen.generative.objectives.latent import AutoencoderConfig, AutoencoderObjective
    from medgen.generative.objectives.paired import PairedConfig, PairedObjective
    from medgen.generative.objectives.reference import (
        ReferenceStyleObjective,
        StyleTransferConfig,
    )
    from medgen.generative.objectives.unpaired import CycleGANConfig, CycleGANObjective

__all__ = [
    "AutoencoderConfig",
    "AutoencoderObjective",
    "ConditionalDiffusionConfig",
    "ConditionalLDMObjective",
    "ConditionalVAEGANConfig",
    "ConditionalVAEGANObjective",
    "CycleGANConfig",
    "CycleGANObjective",
    "DiffusionConfig",
    "DiffusionObjective",
    "PairedConfig",
    "PairedObjective",
    "ReferenceStyleObjective",
    "StyleTransferConfig",
]

_LAZY = {
    "ConditionalDiffusionConfig": "medgen.generative.objectives.conditional",
    "ConditionalLDMObjective": "medgen.generative.objectives.conditional",
    "ConditionalVAEGANConfig": "medgen.generative.objectives.conditional",
    "ConditionalVAEGANObjective": "medgen.generative.objectives.conditional",
    "AutoencoderConfig": "medgen.generative.objectives.latent",
    "AutoencoderObjective": "medgen.generative.objectives.latent",
    "CycleGANConfig": "medgen.generative.objectives.unpaired",
    "CycleGANObjective": "medgen.generative.objectives.unpaired",
    "DiffusionConfig": "medgen.generative.objectives.diffusion",
    "DiffusionObjective": "medgen.generative.objectives.diffusion",
    "PairedConfig": "medgen.generative.objectives.paired",
    "PairedObjective": "medgen.generative.objectives.paired",
    "ReferenceStyleObjective": "medgen.generative.objectives.reference",
    "StyleTransferConfig": "medgen.generative.objectives.reference",
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
