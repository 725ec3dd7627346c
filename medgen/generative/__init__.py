"""Generative models: the engine, its objectives, restoration, baselines and evaluation.

- :mod:`~medgen.generative.engine`: :func:`fit_objective` runs any :class:`Objective`
  (determinism, checkpoints, identical resume, EMA, AMP, LR schedule, time budget) with an
  :class:`EngineConfig`; see docs/engine.md.
- :mod:`~medgen.generative.objectives`: ``paired`` (restoration, pix2pix), ``unpaired``
  (CycleGAN), ``latent`` (KL autoencoder, optionally adversarial), ``diffusion`` (latent DDPM).
- :class:`GenerativeModel`, :func:`load`, :func:`register_model_kind`: one persistence
  (``config.json`` + ``model.safetensors``) and one registry of model kinds for every trained
  model; ``load(run_dir)`` returns the right class.
- :func:`available_pretrained`, :func:`load_pretrained` (``Denoiser.pretrained("mri")``,
  ``load("pretrained:NAME")``), :func:`pretrained_dir`, :func:`export_pretrained`: restoration
  models trained by medgen and shipped in the package, checked by SHA-256 on load.
- :class:`Denoiser` and :class:`SuperResolver`: generator (+ optional PatchGAN) trained on pairs
  made by :func:`medgen.simulate.degrade`; ``fit``, ``apply``, ``save``, ``load``.
- :func:`train` / :class:`TrainConfig`: the paired restoration recipe (engine + paired options).
- :mod:`~medgen.generative.baselines`: NL-means, TV, wavelet, BM3D (optional), bicubic/trilinear.
- :func:`evaluate` / :func:`summarize`: PSNR/SSIM per image, method and subgroup.
- :class:`Synthesizer`: conditional synthesis (VAE-GAN or latent diffusion with
  classifier-free guidance) for chosen label and subgroup values; ``fit``, ``sample``,
  ``encode``/``decode``, ``interpolate``, ``variations``, ``write`` (docs/synthesis.md).
- :mod:`~medgen.generative.synthesis_metrics`: FID, KID, precision/recall/density/coverage,
  memorisation (near-copy gate), conditioning fidelity and per-subgroup quality tables read
  against the real-vs-real floor (docs/synthesis_metrics.md).
- :class:`Translator` / :func:`evaluate_translation`: image-to-image translation between groups
  (site harmonisation, contrast transfer, disease progression: histogram matching, Nyul
  standardisation, CycleGAN, pix2pix) scored against the simulator's counterfactual truth;
  :func:`transfer_style` (to one reference image), :func:`counterfactual_score_test` (does a
  classifier's score follow the translated disease?) and :func:`train_target_classifier`
  (docs/translation.md); :class:`StyleTransfer` / :func:`evaluate_style_transfer`: a learned
  (AdaIN-style) style transfer conditioned on one reference image (docs/style_transfer.md).

Names are imported lazily so ``import medgen.generative`` does not import torch. See
docs/restoration.md and docs/engine.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medgen._internal.lazy import lazy_attributes

if TYPE_CHECKING:
    from medgen.generative._model import (
        GenerativeModel,
        get_model_kind,
        load,
        model_kinds,
        register_model_kind,
    )
    from medgen.generative._nets import available_generators, register_generator
    from medgen.generative._pretrained import (
        available_pretrained,
        export_pretrained,
        load_pretrained,
        pretrained_dir,
    )
    from medgen.generative._restorer import RestorationOutput, RestorerConfig
    from medgen.generative._synth_eval import MemorisationGate, SynthesisEvaluation
    from medgen.generative._trainer import TrainConfig, TrainResult, train
    from medgen.generative.denoise import Denoiser
    from medgen.generative.engine import (
        EngineConfig,
        EngineResult,
        Objective,
        StepContext,
        fit_objective,
    )
    from medgen.generative.quality import evaluate, image_metrics, summarize
    from medgen.generative.style import StyleTransfer, evaluate_style_transfer
    from medgen.generative.superres import SuperResolver
    from medgen.generative.synthesis import SynthesisResult, Synthesizer
    from medgen.generative.synthesis_metrics import (
        PRDC,
        KIDResult,
        conditioning_fidelity,
        count_near_copies,
        frechet_distance,
        kernel_inception_distance,
        memorisation,
        prdc,
        quality_table,
        real_vs_real_floor,
    )
    from medgen.generative.translation import (
        TargetClassifier,
        Translator,
        counterfactual_score_test,
        evaluate_translation,
        train_target_classifier,
        transfer_style,
    )

__all__ = [
    "PRDC",
    "Denoiser",
    "EngineConfig",
    "EngineResult",
    "GenerativeModel",
    "KIDResult",
    "MemorisationGate",
    "Objective",
    "RestorationOutput",
    "RestorerConfig",
    "StepContext",
    "StyleTransfer",
    "SuperResolver",
    "SynthesisEvaluation",
    "SynthesisResult",
    "Synthesizer",
    "TargetClassifier",
    "TrainConfig",
    "TrainResult",
    "Translator",
    "available_generators",
    "available_pretrained",
    "conditioning_fidelity",
    "count_near_copies",
    "counterfactual_score_test",
    "evaluate",
    "evaluate_style_transfer",
    "evaluate_translation",
    "export_pretrained",
    "fit_objective",
    "frechet_distance",
    "get_model_kind",
    "image_metrics",
    "kernel_inception_distance",
    "load",
    "load_pretrained",
    "memorisation",
    "model_kinds",
    "prdc",
    "pretrained_dir",
    "quality_table",
    "real_vs_real_floor",
    "register_generator",
    "register_model_kind",
    "summarize",
    "train",
    "train_target_classifier",
    "transfer_style",
]

_LAZY = {
    "Denoiser": "medgen.generative.denoise",
    "SuperResolver": "medgen.generative.superres",
    "RestorationOutput": "medgen.generative._restorer",
    "RestorerConfig": "medgen.generative._restorer",
    "TrainConfig": "medgen.generative._trainer",
    "TrainResult": "medgen.generative._trainer",
    "train": "medgen.generative._trainer",
    "EngineConfig": "medgen.generative.engine",
    "EngineResult": "medgen.generative.engine",
    "Objective": "medgen.generative.engine",
    "StepContext": "medgen.generative.engine",
    "fit_objective": "medgen.generative.engine",
    "GenerativeModel": "medgen.generative._model",
    "get_model_kind": "medgen.generative._model",
    "load": "medgen.generative._model",
    "model_kinds": "medgen.generative._model",
    "register_model_kind": "medgen.generative._model",
    "available_generators": "medgen.generative._nets",
    "register_generator": "medgen.generative._nets",
    **{
        name: "medgen.generative._pretrained"
        for name in (
            "available_pretrained",
            "export_pretrained",
            "load_pretrained",
            "pretrained_dir",
        )
    },
    "evaluate": "medgen.generative.quality",
    "image_metrics": "medgen.generative.quality",
    "summarize": "medgen.generative.quality",
    "Synthesizer": "medgen.generative.synthesis",
    "SynthesisResult": "medgen.generative.synthesis",
    "SynthesisEvaluation": "medgen.generative._synth_eval",
    "MemorisationGate": "medgen.generative._synth_eval",
    "StyleTransfer": "medgen.generative.style",
    "evaluate_style_transfer": "medgen.generative.style",
    **{
        name: "medgen.generative.translation"
        for name in (
            "TargetClassifier",
            "Translator",
            "counterfactual_score_test",
            "evaluate_translation",
            "train_target_classifier",
            "transfer_style",
        )
    },
    **{
        name: "medgen.generative.synthesis_metrics"
        for name in (
            "KIDResult",
            "PRDC",
            "conditioning_fidelity",
            "count_near_copies",
            "frechet_distance",
            "kernel_inception_distance",
            "memorisation",
            "prdc",
            "quality_table",
            "real_vs_real_floor",
        )
    },
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, __all__)
