"""The generative engine: one training loop that runs any :class:`Objective`.

The engine owns everything every generative job shares (STYLE.md item 13, after MONAI's engines,
whose trainers override one iteration, and lucidrains' ``Trainer``, which takes any diffusion
process):

- **determinism**: the batch of step ``k`` is ``objective.sample_batch(k)``, a pure function of
  ``(seed, k)``; every step runs inside :func:`torch.random.fork_rng` under
  ``torch.manual_seed(step_seed(seed, k))``, so all randomness of step ``k`` (noise, timesteps,
  latent samples, image-pool draws) is a pure function of ``(seed, k)`` too;
- **checkpoints and resume**: every network, optimiser, the shared ``GradScaler``, every EMA copy
  and the objective's own state (:meth:`Objective.state_dict`, e.g. an image pool) go into
  ``checkpoint.pt`` (loaded with ``weights_only=True``); a resumed run continues bitwise like an
  uninterrupted one; resuming with other options or ``run_info`` is refused, naming what differs;
- **EMA** of the networks the objective names in :attr:`Objective.ema_networks`;
- **AMP** on CUDA (float16 autocast, one shared ``GradScaler``; objectives call
  :meth:`StepContext.backward` and never touch scaling), **channels-last** convolutions;
- the **LR schedule** (constant or cosine), applied to every optimiser from its base rate;
- a **time budget**, **Ctrl-C** (both checkpoint), background **batch workers** (a
  ``DataLoader`` over step numbers with ``fork`` workers), a tqdm bar, and ``metrics.csv`` with
  one row per epoch whose columns are whatever scalars the steps returned.

An objective owns its networks, its optimisers, how a batch is drawn and what one step computes;
see :class:`Objective` and docs/engine.md (with the smallest complete objective).

Files in ``run_dir``: ``checkpoint.pt``, ``train_state.json`` (step, seed, options, run_info,
history), ``metrics.csv``; each written to a temporary name and renamed. ``run_dir`` is a run
folder with a lifecycle (docs/privacy.md, :mod:`medgen.generative._run`): one writer at a time
(a lock), a finished folder is reused only with ``overwrite=True`` or ``resume=True``, an
interrupted one only with ``resume=True`` or ``overwrite=True``, and ``run_complete.json`` is
written when training ends.

Example (a one-parameter objective, CPU, milliseconds):
    >>> import torch
    >>> from torch import nn
    >>> from medgen.generative.engine import EngineConfig, Objective, fit_objective
    >>> class MeanOf3(Objective):
    ...     kind = "mean-of-3"
    ...     def build_networks(self):
    ...         return {"net": nn.Linear(1, 1, bias=False)}
    ...     def build_optimizers(self, networks):
    ...         return {"opt": torch.optim.SGD(networks["net"].parameters(), lr=0.1)}
    ...     def sample_batch(self, step):
    ...         return {"x": torch.ones(self.batch_size, 1), "y": torch.full((self.batch_size, 1), 3.0)}
    ...     def train_step(self, batch, ctx):
    ...         loss = torch.mean((ctx.networks["net"](batch["x"]) - batch["y"]) ** 2)
    ...         ctx.backward(loss, "opt")
    ...         return {"loss": loss}
    >>> res = fit_objective(MeanOf3(), config=EngineConfig(epochs=2, steps_per_epoch=20,
    ...                     batch_size=2, ema_decay=None, device="cpu"), progress=False)
    >>> round(res.networks["net"].weight.item(), 3), [r["epoch"] for r in res.history]
    (3.0, [1.0, 2.0])
"""

from __future__ import annotations

import abc
import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from torch import nn

from medgen._internal.device import resolve_device
from medgen._internal.files import atomic_path, write_text_atomic
from medgen._internal.runs import mark_complete, run_lock
from medgen.errors import ConfigError, MedgenFileNotFoundError, MedgenValueError
from medgen.generative._checks import check_int
from medgen.generative._run import (
    CHECKPOINT,
    ENGINE_KIND,
    METRICS,
    OWNED,
    TRAIN_STATE,
    TRAIN_STATE_FORMAT,
    check_training,
    prepare_training,
)

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT",
    "LR_SCHEDULES",
    "METRICS",
    "TRAIN_STATE",
    "EngineConfig",
    "EngineResult",
    "Objective",
    "StepContext",
    "fit_objective",
    "lr_factor",
    "run_objective",
    "step_seed",
]

LR_SCHEDULES = ("constant", "cosine")
#: engine options a resumed run may change (``epochs`` too while the LR schedule is constant)
RESUME_FREE = ("time_budget_s", "device", "amp", "num_workers")


def check_engine_options(obj: Any, owner: str) -> None:
    """Validate the engine options held by ``obj`` (an :class:`EngineConfig` or a recipe that
    includes them, such as :class:`~medgen.generative.TrainConfig`); ``owner`` names it."""
    check_int(obj, owner, ("epochs", "steps_per_epoch", "batch_size"), minimum=1)
    check_int(obj, owner, ("num_workers",), minimum=0)
    if obj.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(
            f"{owner}.lr_schedule must be one of {LR_SCHEDULES}, not {obj.lr_schedule!r}."
        )
    if obj.ema_decay is not None and not 0.0 < obj.ema_decay < 1.0:
        raise ConfigError(f"{owner}.ema_decay must be in (0, 1) or None, not {obj.ema_decay!r}.")
    tb = obj.time_budget_s
    if tb is not None and (isinstance(tb, bool) or not isinstance(tb, int | float)):
        raise ConfigError(f"{owner}.time_budget_s must be a number of seconds or None, not {tb!r}.")


@dataclass
class EngineConfig:
    """Options of the loop itself, shared by every objective (saved in ``train_state.json``).

    Attributes:
        epochs: number of epochs; one epoch is ``steps_per_epoch`` optimiser steps.
        steps_per_epoch: steps per epoch (batches are drawn on the fly, so there is no data-set
            length to define an epoch).
        batch_size: samples per step (the objective's :meth:`Objective.sample_batch` reads it).
        lr_schedule: ``"constant"`` or ``"cosine"``: every optimiser's learning rates follow a
            half cosine from their base value to 0 over ``epochs * steps_per_epoch`` steps (a
            pure function of the step, so resumed runs follow the same schedule).
        ema_decay: decay of the EMA copies of :attr:`Objective.ema_networks`; ``None``: no EMA.
        amp: mixed precision (float16 autocast + grad scaling); only used on CUDA.
        time_budget_s: stop (with a checkpoint) after this many seconds of training.
        num_workers: background processes drawing the next batches (0: in the training
            process). Batches are a pure function of the step, so results do not depend on it.
        seed: seeds weight initialisation, batches and all randomness inside the steps.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:n]"``.
    """

    epochs: int = 10
    steps_per_epoch: int = 50
    batch_size: int = 16
    lr_schedule: str = "constant"
    ema_decay: float | None = 0.99
    amp: bool = True
    time_budget_s: float | None = None
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        check_engine_options(self, "EngineConfig")

    @property
    def total_steps(self) -> int:
        """``epochs * steps_per_epoch``."""
        return self.epochs * self.steps_per_epoch

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        """Build from a dict (e.g. a saved ``config.json`` entry), naming unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown option(s) {unknown}; known: {sorted(known)}."
            )
        return cls(**dict(d))


def step_seed(seed: int, step: int) -> int:
    """The torch seed of step ``step`` of a run seeded with ``seed``."""
    return (int(seed) * 1_000_003 + int(step) * 7919 + 17) % (2**63 - 1)


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base learning rates at ``step`` of ``total``.

    Example:
        >>> lr_factor("cosine", 2, 4), lr_factor("constant", 3, 4)
        (0.5, 1.0)
    """
    if schedule == "cosine" and total > 0:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    return 1.0


class Objective(abc.ABC):
    """What one generative job trains: networks, optimisers, batches and one step.

    The engine calls, in this order: :meth:`setup` (gives the objective the engine options:
    ``self.seed``, ``self.batch_size``), :meth:`build_networks` (under
    ``torch.manual_seed(seed)``), :meth:`build_optimizers` (after the networks are on the
    device), then per step ``k``: :meth:`sample_batch` ``(k)`` (maybe in a forked worker
    process), and :meth:`train_step` inside the step's seeded RNG. At a checkpoint it saves
    :meth:`state_dict`; on resume it calls :meth:`load_state_dict` (and
    :meth:`upgrade_checkpoint` for a checkpoint of an older layout).

    Class (or instance) attributes:
        kind: the objective's name, stored in ``train_state.json``; a resume must match it.
        ema_networks: names of the networks that get an EMA copy (when ``ema_decay`` is set).
        inference_networks: names of the networks a trained model is made of
            (:meth:`EngineResult.inference_networks` gives their EMA copies where there are any).
        log_keys: scalars that always get a ``metrics.csv`` column (NaN in epochs where a step
            did not return them, e.g. before an adversarial warm-up ends); any other scalar a
            step returns gets a column too.
    """

    kind: ClassVar[str] = ""
    ema_networks: tuple[str, ...] = ()
    inference_networks: tuple[str, ...] = ()
    log_keys: tuple[str, ...] = ()

    _engine_config: EngineConfig | None = None

    # ------------------------------------------------------------------ given by the engine
    def setup(self, config: EngineConfig) -> None:
        """Receive the engine options before anything else is called (override to add checks;
        call ``super().setup(config)``)."""
        self._engine_config = config

    @property
    def engine_config(self) -> EngineConfig:
        """The engine options of the run (after :meth:`setup`)."""
        if self._engine_config is None:
            raise MedgenValueError(
                f"{type(self).__name__}: the engine options are not set yet; run the objective "
                "with fit_objective(objective, config=EngineConfig(...))."
            )
        return self._engine_config

    @property
    def seed(self) -> int:
        """The run's seed (``EngineConfig.seed``)."""
        return int(self.engine_config.seed)

    @property
    def batch_size(self) -> int:
        """Samples per step (``EngineConfig.batch_size``)."""
        return int(self.engine_config.batch_size)

    # ------------------------------------------------------------------ the contract
    @abc.abstractmethod
    def build_networks(self) -> dict[str, nn.Module]:
        """The networks, by name (names without dots); built untrained under the run's seed.

        Networks the objective keeps frozen are listed too (they are saved with the others);
        the objective keeps them out of its optimisers and sets their mode itself.
        """

    @abc.abstractmethod
    def build_optimizers(
        self, networks: Mapping[str, nn.Module]
    ) -> dict[str, torch.optim.Optimizer]:
        """The optimisers, by name, over ``networks`` (already on the device). Their learning
        rates at construction are the base rates the LR schedule scales."""

    @abc.abstractmethod
    def sample_batch(self, step: int) -> Mapping[str, torch.Tensor]:
        """The batch of ``step``: a pure function of ``(self.seed, step)``, tensors
        ``BxCx[SPATIAL]`` (or any shape) on the CPU. Runs in forked worker processes when
        ``num_workers > 0``, so it must not depend on state that changes during training."""

    @abc.abstractmethod
    def train_step(self, batch: Mapping[str, torch.Tensor], ctx: StepContext) -> Mapping[str, Any]:
        """One optimisation step on ``batch`` (on the device): compute losses under
        ``ctx.autocast()``, update with ``ctx.backward(loss, "optimizer_name")``; return scalars
        (floats or 0-d tensors) to log."""

    def config_dict(self) -> dict[str, Any]:
        """The objective's options as JSON-able values, stored in ``train_state.json`` beside
        the engine options (same names space: they must not collide) and compared on resume.
        Default: the fields of a dataclass ``self.config``, else nothing."""
        cfg = getattr(self, "config", None)
        if cfg is None or not is_dataclass(cfg) or isinstance(cfg, type):
            return {}
        out: dict[str, Any] = json.loads(json.dumps(asdict(cfg), default=list))
        return out

    def state_dict(self) -> dict[str, Any]:
        """Extra state saved in checkpoints (tensors, numbers, strings, lists, dicts)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        return None

    def upgrade_checkpoint(self, ckpt: Mapping[str, Any]) -> dict[str, Any] | None:
        """Map a checkpoint of an older layout (one without ``"networks"``) onto the engine's
        (``networks``, ``optimizers``, ``ema``, ``scaler``, ``objective``), or ``None`` when
        the objective knows no such layout (the resume is then refused)."""
        return None


class StepContext:
    """What a :meth:`Objective.train_step` gets besides the batch.

    Attributes:
        step: index of this step (0-based).
        total_steps: ``epochs * steps_per_epoch``.
        device: the training device.
        networks: the networks by name (training copies, not the EMA ones).
        optimizers: the optimisers by name.
        memory_format: the channels-last format of the networks' convolutions, or ``None``.
    """

    def __init__(
        self,
        *,
        networks: Mapping[str, nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        scaler: torch.amp.GradScaler,
        device: torch.device,
        use_amp: bool,
        memory_format: torch.memory_format | None,
        total_steps: int,
    ) -> None:
        self.networks = dict(networks)
        self.optimizers = dict(optimizers)
        self.scaler = scaler
        self.device = device
        self.use_amp = use_amp
        self.memory_format = memory_format
        self.total_steps = total_steps
        self.step = 0

    def autocast(self) -> AbstractContextManager[Any]:
        """Mixed precision for the forward passes (a no-op unless ``amp`` on CUDA)."""
        return torch.autocast(device_type=self.device.type, enabled=self.use_amp)

    def backward(self, loss: torch.Tensor, optimizer: str) -> None:
        """Zero ``optimizer``'s gradients, back-propagate ``loss`` (scaled under AMP) and step
        that optimiser. The engine updates the shared scaler once after the step."""
        opt = self.optimizers.get(optimizer)
        if opt is None:
            raise ConfigError(
                f"ctx.backward(loss, {optimizer!r}): no such optimiser; the objective built "
                f"{sorted(self.optimizers)}."
            )
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(opt)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the device, channels-last where its rank matches the networks' format."""
        return _to_device(x, self.device, self.memory_format)


@dataclass
class EngineResult:
    """What :func:`fit_objective` returns.

    Attributes:
        objective: the objective that was trained.
        networks: the trained networks by name (evaluation mode, default memory layout).
        ema: the EMA copies by network name (empty without EMA).
        history: one dict per finished epoch (``epoch``, ``step``, the step's scalars averaged,
            ``seconds``, ``images_per_s``).
        step: steps trained in all (including those before a resume).
        stopped_early: the time budget ended training before ``epochs``.
    """

    objective: Objective
    networks: dict[str, nn.Module]
    ema: dict[str, nn.Module] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    step: int = 0
    stopped_early: bool = False

    def inference_networks(self) -> dict[str, nn.Module]:
        """The objective's inference networks, each its EMA copy when there is one."""
        names = self.objective.inference_networks or tuple(self.networks)
        return {n: self.ema.get(n, self.networks[n]) for n in names}


class _StepBatches(torch.utils.data.Dataset[Mapping[str, torch.Tensor]]):
    """The batches of steps ``start .. total - 1``, for a DataLoader with worker processes."""

    def __init__(
        self, sample_batch: Callable[[int], Mapping[str, torch.Tensor]], start: int, total: int
    ) -> None:
        self.sample_batch, self.start, self.total = sample_batch, start, total

    def __len__(self) -> int:
        return max(self.total - self.start, 0)

    def __getitem__(self, i: int) -> Mapping[str, torch.Tensor]:
        return self.sample_batch(self.start + i)


def _batches(
    sample_batch: Callable[[int], Mapping[str, torch.Tensor]], start: int, total: int, workers: int
) -> Iterator[Mapping[str, torch.Tensor]]:
    import multiprocessing

    if workers > 0 and "fork" not in multiprocessing.get_all_start_methods():
        log.warning(
            "num_workers=%d needs the 'fork' start method, which this platform lacks; making "
            "the training batches in the training process instead",
            workers,
        )
        workers = 0
    if workers == 0:
        return (sample_batch(k) for k in range(start, total))
    loader = torch.utils.data.DataLoader(
        _StepBatches(sample_batch, start, total),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        prefetch_factor=4,
        # fork: the workers inherit the objective (and the images it holds) instead of pickling
        # it, also where spawn is the default (macOS)
        multiprocessing_context="fork",
    )
    return iter(loader)


def memory_format_of(net: nn.Module) -> torch.memory_format | None:
    """Channels-last format matching the network's convolutions (None: no convolutions)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            return torch.channels_last
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d):
            return torch.channels_last_3d
    return None


def _to_device(
    x: torch.Tensor, device: torch.device, fmt: torch.memory_format | None
) -> torch.Tensor:
    x = x.to(device)
    if fmt is not None and x.ndim == (4 if fmt == torch.channels_last else 5):
        x = x.to(memory_format=fmt)
    return x


def _write_metrics(run_dir: Path, history: list[dict[str, float]]) -> None:
    if not history:
        return
    cols: list[str] = []
    for row in history:
        cols.extend(c for c in row if c not in cols)
    lines = [",".join(cols)]
    for row in history:
        lines.append(",".join(f"{row.get(c, float('nan')):.6g}" for c in cols))
    write_text_atomic(run_dir / METRICS, "\n".join(lines) + "\n")


def _check_names(what: str, names: Mapping[str, Any], objective: Objective) -> None:
    bad = [n for n in names if not isinstance(n, str) or not n or "." in n]
    if bad:
        raise ConfigError(
            f"{type(objective).__name__}.{what}: names must be non-empty strings without dots "
            f"(they prefix the saved tensors), not {bad!r}."
        )


def _load_checkpoint(path: Path, device: torch.device, objective: Objective) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises many types; its advice (weights_only=False) is unsafe
        raise MedgenValueError(
            f"{path}: cannot read the checkpoint ({type(err).__name__}); it is corrupt, "
            "truncated or not a medgen checkpoint. Delete it and train without resume."
        ) from None
    if isinstance(ckpt, dict) and "networks" not in ckpt:
        ckpt = objective.upgrade_checkpoint(ckpt)
    if not isinstance(ckpt, dict) or "networks" not in ckpt:
        raise ConfigError(
            f"{path}: not a checkpoint of the generative engine (written by an older medgen "
            "trainer?); it cannot be resumed. Start a new run folder."
        )
    return ckpt


def fit_objective(
    objective: Objective,
    *,
    config: EngineConfig,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    run_info: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> EngineResult:
    """Train ``objective`` with the engine options ``config``.

    Args:
        objective: the job (see :class:`Objective`).
        config: engine options.
        run_dir: run folder for ``checkpoint.pt``, ``train_state.json`` and ``metrics.csv``
            (new or empty, unless ``resume`` or ``overwrite``); ``None`` keeps everything in
            memory. Training holds the folder's lock and writes ``run_complete.json`` when it
            ends (also at the end of a ``time_budget_s``; not on Ctrl-C or an error).
        resume: continue from ``run_dir/checkpoint.pt`` (an interrupted run, or a finished one
            trained longer): same options (engine and objective) and ``run_info`` required;
            continues bitwise like an uninterrupted run.
        overwrite: replace the run in ``run_dir`` (its files only; anything else there is
            refused, never deleted).
        run_info: extra JSON-able facts stored in ``train_state.json`` (model config, data
            hash); on resume they must equal the stored ones.
        progress: show a tqdm bar.

    Returns:
        :class:`EngineResult`.

    Raises:
        MedgenFileNotFoundError: ``resume=True`` but there is no checkpoint in ``run_dir``.
        ConfigError: the checkpoint was written with other options, another objective or
            other ``run_info``; the objective's option names collide with the engine's.
        MedgenValueError: the checkpoint cannot be read.
        RunFolderError: ``run_dir`` holds a finished run (without ``overwrite``/``resume``), an
            interrupted one (without ``resume``/``overwrite``) or files that are not a run's.
        RunLockedError: another process is training into ``run_dir``.
    """
    if run_dir is None:
        return run_objective(
            objective,
            config=config,
            run_dir=None,
            resume=resume,
            run_info=run_info,
            progress=progress,
        )
    rd = Path(run_dir).expanduser()
    what = f"{objective.kind or type(objective).__name__} training run"
    with run_lock(rd, what=what, owned=OWNED):

        def prepare() -> None:
            prepare_training(rd, resume=resume, overwrite=overwrite, what=what)

        if not resume or overwrite:  # nothing to check first: refuse (or clear) the folder now
            prepare()
        else:  # the clear refusals now; the marker goes once the resume is checked
            check_training(rd, resume=resume, overwrite=overwrite, what=what)
        result = run_objective(
            objective,
            config=config,
            run_dir=rd,
            resume=resume,
            run_info=run_info,
            progress=progress,
            prepare=prepare if resume and not overwrite else None,
        )
        mark_complete(
            rd,
            [n for n in (CHECKPOINT, TRAIN_STATE) if (rd / n).is_file()],
            kind=ENGINE_KIND,
            info={"objective": objective.kind, "step": result.step},
        )
    return result


def run_objective(
    objective: Objective,
    *,
    config: EngineConfig,
    run_dir: str | os.PathLike[str] | None,
    resume: bool,
    run_info: Mapping[str, Any] | None,
    progress: bool,
    prepare: Callable[[], object] | None = None,
) -> EngineResult:
    """The loop of :func:`fit_objective` without the run folder's lifecycle, for callers that
    write more into ``run_dir`` (a trained model) and so hold its lock themselves, have
    prepared it (:func:`medgen.generative._run.prepare_training`) or pass that step as
    ``prepare``: called once a resume has been checked and loaded, before anything is written.
    They write the completion marker when their last file is written."""
    from tqdm.auto import tqdm

    objective.setup(config)
    device = resolve_device(config.device)
    use_amp = bool(config.amp and device.type == "cuda")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(config.seed))
        networks = dict(objective.build_networks())
    _check_names("build_networks()", networks, objective)
    if not networks:
        raise ConfigError(f"{type(objective).__name__}.build_networks() returned no networks.")
    # channels-last convolutions: ~1.3x faster training steps on CPU (oneDNN), also on CUDA;
    # the batch follows the format of the first network with convolutions
    fmt: torch.memory_format | None = None
    for net in networks.values():
        net_fmt = memory_format_of(net)
        fmt = fmt or net_fmt
        net.to(device)
        if net_fmt is not None:
            net.to(memory_format=net_fmt)  # type: ignore[call-overload]  # not in the stubs
    unknown_ema = [n for n in objective.ema_networks if n not in networks]
    unknown_inf = [n for n in objective.inference_networks if n not in networks]
    if unknown_ema or unknown_inf:
        raise ConfigError(
            f"{type(objective).__name__}: ema_networks/inference_networks name networks it did "
            f"not build ({unknown_ema + unknown_inf}); it built {sorted(networks)}."
        )
    ema: dict[str, nn.Module] = {}
    if config.ema_decay is not None:
        for name in objective.ema_networks:
            ema[name] = copy.deepcopy(networks[name]).eval()
            for p in ema[name].parameters():
                p.requires_grad_(False)
    optimizers = dict(objective.build_optimizers(networks))
    _check_names("build_optimizers()", optimizers, objective)
    base_lrs = {n: [float(g["lr"]) for g in o.param_groups] for n, o in optimizers.items()}
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)

    engine_dict = asdict(config)
    obj_dict = objective.config_dict()
    clash = sorted(set(engine_dict) & set(obj_dict))
    if clash:
        raise ConfigError(
            f"{type(objective).__name__}.config_dict(): option(s) {clash} collide with engine "
            "options; rename them in the objective's config."
        )
    cfg_dict = {**engine_dict, **obj_dict}
    # options a resumed run may change; not the epochs when the learning rate is scheduled on them
    free = set(RESUME_FREE) | ({"epochs"} if config.lr_schedule == "constant" else set())
    comparable = {k: v for k, v in cfg_dict.items() if k not in free}
    info = json.loads(json.dumps(dict(run_info or {}), default=str))
    rd = Path(run_dir).expanduser() if run_dir is not None else None
    step = 0
    history: list[dict[str, float]] = []
    if rd is not None:
        rd.mkdir(parents=True, exist_ok=True)
    if resume:
        if rd is None or not (rd / CHECKPOINT).is_file() or not (rd / TRAIN_STATE).is_file():
            raise MedgenFileNotFoundError(
                f"fit(resume=True): no {CHECKPOINT} and {TRAIN_STATE} in {rd}; train without "
                "resume first, or point run_dir at the folder of an interrupted run."
            )
        try:
            state = json.loads((rd / TRAIN_STATE).read_text())
        except (OSError, ValueError) as err:
            raise MedgenValueError(
                f"{rd / TRAIN_STATE}: not valid JSON ({err}); the run folder is damaged. Start "
                "a new run folder."
            ) from err
        old_kind = state.get("objective", objective.kind)
        if old_kind != objective.kind:
            raise ConfigError(
                f"fit(resume=True): the checkpoint in {rd} was written by the {old_kind!r} "
                f"objective, not {objective.kind!r}; start a new run folder."
            )
        old = {k: v for k, v in state.get("config", {}).items() if k in comparable}
        old_info = state.get("run_info", {})
        if old != comparable or old_info != info:
            diff = sorted(
                {k for k in comparable if old.get(k) != comparable[k]}
                | {
                    f"run_info.{k}"
                    for k in set(info) | set(old_info)
                    if info.get(k) != old_info.get(k)
                }
            )
            raise ConfigError(
                f"fit(resume=True): the checkpoint in {rd} was written with a different "
                f"configuration or model (differs in {diff}); resume with the same options or "
                "start a new run folder."
            )
        ckpt = _load_checkpoint(rd / CHECKPOINT, device, objective)
        missing = sorted(
            {n for n in networks if n not in ckpt["networks"]}
            | {n for n in optimizers if n not in ckpt.get("optimizers", {})}
            | {n for n in ema if n not in ckpt.get("ema", {})}
        )
        if missing:
            raise ConfigError(
                f"{rd / CHECKPOINT}: holds no state for {missing}; it was written by another "
                "objective or EMA setting. Start a new run folder."
            )
        for n, net in networks.items():
            net.load_state_dict(ckpt["networks"][n])
        for n, opt in optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][n])
        for n, net in ema.items():
            net.load_state_dict(ckpt["ema"][n])
        scaler.load_state_dict(ckpt["scaler"])
        objective.load_state_dict(ckpt.get("objective", {}))
        step = int(state["step"])
        history = list(state["history"])
        log.info("resumed %s at step %d", rd, step)
    if prepare is not None:
        prepare()

    def save_checkpoint() -> None:
        if rd is None:
            return
        ckpt = {
            "networks": {n: net.state_dict() for n, net in networks.items()},
            "optimizers": {n: opt.state_dict() for n, opt in optimizers.items()},
            "ema": {n: net.state_dict() for n, net in ema.items()},
            "scaler": scaler.state_dict(),
            "objective": objective.state_dict(),
        }
        with atomic_path(rd / CHECKPOINT) as tmp:
            torch.save(ckpt, tmp)
        state = {
            "format": TRAIN_STATE_FORMAT,
            "step": step,
            "objective": objective.kind,
            "config": cfg_dict,
            "run_info": info,
            "history": history,
        }
        write_text_atomic(rd / TRAIN_STATE, json.dumps(state, indent=1))
        _write_metrics(rd, history)

    total = config.total_steps
    ctx = StepContext(
        networks=networks,
        optimizers=optimizers,
        scaler=scaler,
        device=device,
        use_amp=use_amp,
        memory_format=fmt,
        total_steps=total,
    )
    fork_devices = [device] if device.type == "cuda" else []
    t_start = time.perf_counter()
    stopped = False
    bar = tqdm(total=total, initial=step, disable=not progress, desc="train", leave=False)
    sums: dict[str, float] = {}
    n_in_epoch = 0
    t_epoch = time.perf_counter()
    batches = _batches(objective.sample_batch, step, total, config.num_workers)
    try:
        while step < total:
            cpu_batch = next(batches)
            batch = {k: _to_device(v, device, fmt) for k, v in cpu_batch.items()}
            f = lr_factor(config.lr_schedule, step, total)
            for n, opt in optimizers.items():
                for group, base in zip(opt.param_groups, base_lrs[n], strict=True):
                    group["lr"] = base * f
            ctx.step = step
            with torch.random.fork_rng(devices=fork_devices):
                torch.manual_seed(step_seed(config.seed, step))
                out = objective.train_step(batch, ctx)
                scaler.update()
            if ema and config.ema_decay is not None:
                with torch.no_grad():
                    w = 1.0 - config.ema_decay
                    for n, net_e in ema.items():
                        net = networks[n]
                        for pe, p in zip(net_e.parameters(), net.parameters(), strict=True):
                            pe.lerp_(p.detach(), w)
                        for be, b in zip(net_e.buffers(), net.buffers(), strict=True):
                            be.copy_(b)
            step += 1
            n_in_epoch += 1
            vals = {
                k: float(v.detach() if isinstance(v, torch.Tensor) else v) for k, v in out.items()
            }
            for k, v in vals.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update(1)
            if vals:
                first = next(iter(vals))
                bar.set_postfix({first: f"{vals[first]:.4f}"})
            if step % config.steps_per_epoch == 0:
                secs = time.perf_counter() - t_epoch
                row: dict[str, float] = {
                    "epoch": float(step // config.steps_per_epoch),
                    "step": float(step),
                }
                keys = list(objective.log_keys) + [k for k in sums if k not in objective.log_keys]
                for k in keys:
                    row[k] = sums[k] / n_in_epoch if k in sums else float("nan")
                row["seconds"] = secs
                row["images_per_s"] = n_in_epoch * config.batch_size / max(secs, 1e-9)
                history.append(row)
                log.info("epoch %d done (%.1f s)", int(row["epoch"]), secs)
                sums, n_in_epoch, t_epoch = {}, 0, time.perf_counter()
                save_checkpoint()
            if (
                config.time_budget_s is not None
                and time.perf_counter() - t_start > config.time_budget_s
                and step < total
            ):
                log.warning(
                    "time budget of %.0f s reached at step %d of %d; checkpoint saved, resume "
                    "with resume=True",
                    config.time_budget_s,
                    step,
                    total,
                )
                stopped = True
                save_checkpoint()
                break
    except KeyboardInterrupt:
        save_checkpoint()
        raise
    finally:
        bar.close()
        del batches  # stops the worker processes
    # back to eval mode and the default layout, so a saved and reloaded model computes alike
    for net in (*networks.values(), *ema.values()):
        net.eval()
        if fmt is not None:
            net.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    return EngineResult(
        objective=objective,
        networks=networks,
        ema=ema,
        history=history,
        step=step,
        stopped_early=stopped,
    )
