"""Generative restoration: learned denoising and super-resolution, and the classical baselines.

- :class:`Denoiser` and :class:`SuperResolver`: generator (+ optional PatchGAN) trained on pairs
  made by :func:`medgen.simulate.degrade`; ``fit``, ``apply``, ``save``, ``load``.
- :func:`train` / :class:`TrainConfig`: the shared training loop (checkpoints, identical resume,
  EMA, AMP on GPU) that synthesis and translation reuse.
- :mod:`~medgen.generative.baselines`: NL-means, TV, wavelet, BM3D (optional), bicubic/trilinear.
- :func:`evaluate` / :func:`summarize`: PSNR/SSIM per image, method and subgroup.

Names are imported lazily so ``import medgen.generative`` does not import torch. See
docs/restoration.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medgen._internal.lazy import lazy_attributes

if TYPE_CHECKING:
    from medgen.generative._restorer import RestorationOutput, RestorerConfig
    from medgen.generative._trainer import TrainConfig, TrainResult, train
    from medgen.generative.denoise import Denoiser
    from medgen.generative.quality import evaluate, image_metrics, summarize
    from medgen.generative.superres import SuperResolver

__all__ = [
    "Denoiser",
    "RestorationOutput",
    "RestorerConfig",
    "SuperResolver",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "image_metrics",
    "summarize",
    "train",
]

_LAZY = {
    "Denoiser": "medgen.generative.denoise",
    "SuperResolver": "medgen.generative.superres",
    "RestorationOutput": "medgen.generative._restorer",
    "RestorerConfig": "medgen.generative._restorer",
    "TrainConfig": "medgen.generative._trainer",
    "TrainResult": "medgen.generative._trainer",
    "train": "medgen.generative._trainer",
    "evaluate": "medgen.generative.quality",
    "image_metrics": "medgen.generative.quality",
    "summarize": "medgen.generative.quality",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
