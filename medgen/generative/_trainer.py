"""The paired restoration recipe: :class:`TrainConfig` and :func:`train`.

:class:`TrainConfig` is one flat set of options, as saved in the ``config.json`` and
``train_state.json`` of every restoration run: the engine's options
(:class:`~medgen.generative.engine.EngineConfig`) plus the paired objective's
(:class:`~medgen.generative.objectives.paired.PairedConfig`). :func:`train` runs the
``"paired"`` objective (:class:`~medgen.generative.objectives.paired.PairedObjective`) on the
generative engine (:func:`~medgen.generative.engine.fit_objective`): L1 / MSE / SSIM / KL +
optional LSGAN, pix2pix-style, with identical continuation on resume (docs/restoration.md,
docs/engine.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from medgen._internal.device import resolve_device
from medgen.generative.engine import (
    EngineConfig,
    EngineResult,
    check_engine_options,
    fit_objective,
    lr_factor,
    run_objective,
    step_seed,
)
from medgen.generative.objectives.paired import (
    PairedConfig,
    PairedObjective,
    check_paired_options,
)

__all__ = ["TrainConfig", "TrainResult", "lr_factor", "resolve_device", "train"]

_step_seed = step_seed  # the name of earlier versions


@dataclass
class TrainConfig(PairedConfig, EngineConfig):
    """Options of restoration training (saved in ``config.json`` and ``train_state.json``).

    Engine options (:class:`~medgen.generative.engine.EngineConfig`): ``epochs``,
    ``steps_per_epoch``, ``batch_size``, ``lr_schedule``, ``ema_decay``, ``amp``,
    ``time_budget_s``, ``num_workers``, ``seed``, ``device``. Paired-objective options
    (:class:`~medgen.generative.objectives.paired.PairedConfig`): ``lr_g``, ``lr_d``, ``betas``,
    ``l1_weight``, ``mse_weight``, ``ssim_weight``, ``kl_weight``, ``adv_weight``,
    ``adv_warmup_steps``. It has the fields of both (engine options first) and their defaults.

    Attributes:
        epochs: number of epochs; one epoch is ``steps_per_epoch`` optimiser steps.
        steps_per_epoch: steps per epoch (batches are drawn on the fly, so there is no data-set
            length to define an epoch).
        batch_size: patches per step.
        lr_g, lr_d: Adam learning rates of the generator and the discriminator.
        lr_schedule: ``"constant"`` or ``"cosine"``: both learning rates follow a half cosine
            from their value to 0 over ``epochs * steps_per_epoch`` steps (a pure function of
            the step, so resumed runs follow the same schedule). With a ``time_budget_s`` that
            stops training early the rate never reaches 0, so size ``epochs`` to the budget.
        betas: Adam betas (both optimisers).
        l1_weight, mse_weight, ssim_weight, kl_weight, adv_weight: loss weights (0 switches a
            term off). MSE (L2) targets the mean, which is what PSNR rewards; L1 the median.
        adv_warmup_steps: steps of content-only training before the discriminator and the
            adversarial term start.
        ema_decay: decay of the EMA of the generator's weights; ``None`` disables EMA.
        amp: mixed precision (float16 autocast + grad scaling); only used on CUDA.
        time_budget_s: stop (with a checkpoint) after this many seconds of training.
        num_workers: background processes preparing the next batches (0: in the training
            process). Batches stay a pure function of the step, so results do not depend on it;
            on a CPU, one worker lets batch preparation run beside the network on another core.
        seed: seeds weight initialisation, batches and any sampling inside the networks.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:n]"``.

    Example:
        >>> tc = TrainConfig(epochs=2, lr_g=3e-3)
        >>> tc.engine_config().epochs, tc.objective_config().lr_g
        (2, 0.003)
    """

    def __post_init__(self) -> None:
        check_engine_options(self, "TrainConfig")
        check_paired_options(self, "TrainConfig")

    def engine_config(self) -> EngineConfig:
        """The engine's share of the options."""
        return EngineConfig(**{f.name: getattr(self, f.name) for f in fields(EngineConfig)})

    def objective_config(self) -> PairedConfig:
        """The paired objective's share of the options."""
        return PairedConfig(**{f.name: getattr(self, f.name) for f in fields(PairedConfig)})


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained generator, its EMA copy and the history."""

    generator: nn.Module
    ema: nn.Module | None
    history: list[dict[str, float]] = field(default_factory=list)
    step: int = 0
    stopped_early: bool = False

    @property
    def inference_model(self) -> nn.Module:
        """The EMA generator when there is one, else the generator."""
        return self.ema if self.ema is not None else self.generator


def train(
    generator: nn.Module,
    sample_batch: Callable[[int], Mapping[str, torch.Tensor]],
    *,
    config: TrainConfig,
    discriminator: nn.Module | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    run_info: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``generator`` (and ``discriminator``) on paired batches from ``sample_batch``.

    Args:
        generator: maps ``BxCx[SPATIAL]`` to a ``GeneratorOutput`` of the same shape.
        sample_batch: ``step -> {"input", "target"}`` tensors ``BxCx[SPATIAL]``, a pure
            function of the step (so resumed runs see the same batches).
        config: the recipe (engine + paired-objective options).
        discriminator: conditional PatchGAN taking ``cat([input, image], dim=1)``; required when
            ``config.adv_weight > 0``.
        run_dir: run folder for checkpoints and ``metrics.csv`` (new or empty unless ``resume``
            or ``overwrite``; see :func:`~medgen.generative.fit_objective`); ``None`` keeps
            everything in memory.
        resume: continue from ``run_dir/checkpoint.pt`` (same config required).
        overwrite: replace the run in ``run_dir``.
        run_info: extra JSON-able facts stored in ``train_state.json`` (model config, seeds of
            the data process); on resume they must equal the stored ones.
        progress: show a tqdm bar.

    Returns:
        :class:`TrainResult`.

    Raises:
        MedgenFileNotFoundError: ``resume=True`` but there is no checkpoint in ``run_dir``.
        ConfigError: the checkpoint was written by a different configuration or model.
        RunFolderError: ``run_dir`` holds a finished or interrupted run (without ``overwrite``
            or ``resume``) or files that are not a run's.
        RunLockedError: another process is training into ``run_dir``.
    """
    res = fit_paired(
        generator,
        sample_batch,
        config=config,
        discriminator=discriminator,
        run_dir=run_dir,
        resume=resume,
        overwrite=overwrite,
        run_info=run_info,
        progress=progress,
    )
    return TrainResult(
        generator=res.networks["generator"],
        ema=res.ema.get("generator"),
        history=res.history,
        step=res.step,
        stopped_early=res.stopped_early,
    )


def fit_paired(
    generator: nn.Module,
    sample_batch: Callable[[int], Mapping[str, torch.Tensor]],
    *,
    config: TrainConfig,
    discriminator: nn.Module | None,
    run_dir: str | os.PathLike[str] | None,
    resume: bool,
    run_info: Mapping[str, Any] | None,
    progress: bool,
    overwrite: bool = False,
    held: bool = False,
    prepare: Callable[[], object] | None = None,
) -> EngineResult:
    """The ``"paired"`` objective of ``config`` run on the engine; the engine's result (what
    :func:`train` and :meth:`Restorer.fit <medgen.generative.Denoiser.fit>` build on).

    ``held``: the caller holds ``run_dir``'s lock and writes its completion marker (it saves a
    model there after training); ``prepare`` is then called once a resume has been checked
    (:func:`~medgen.generative.engine.run_objective`)."""
    objective = PairedObjective(
        generator, sample_batch, config=config.objective_config(), discriminator=discriminator
    )
    if held:
        return run_objective(
            objective,
            config=config.engine_config(),
            run_dir=run_dir,
            resume=resume,
            run_info=run_info,
            progress=progress,
            prepare=prepare,
        )
    return fit_objective(
        objective,
        config=config.engine_config(),
        run_dir=run_dir,
        resume=resume,
        overwrite=overwrite,
        run_info=run_info,
        progress=progress,
    )
