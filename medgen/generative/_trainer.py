"""The shared generative training loop (generator + optional PatchGAN discriminator).

The loop knows nothing about denoising or super-resolution: it receives a generator network, an
optional discriminator and a ``sample_batch(step) -> {"input": BxCx[S], "target": BxCx[S]}``
function (the *process*: how pairs are made), and optimises

``l1_weight * L1 + mse_weight * MSE + ssim_weight * (1 - SSIM) + kl_weight * KL
+ adv_weight * LSGAN``

with the adversarial term switched on after ``adv_warmup_steps`` (pix2pix, Isola et al. 2017;
least-squares GAN loss from MONAI's ``PatchAdversarialLoss``). Generator and discriminator have
their own Adam optimisers and learning rates; an exponential moving average (EMA) of the
generator's weights is kept for inference.

Identical continuation: the batch of step ``k`` is a pure function of ``(seed, k)``, and every
step runs under ``torch.manual_seed(f(seed, k))`` inside a forked RNG, so a run resumed from a
checkpoint (weights, EMA, optimiser and scaler states, step, history; loaded with
``weights_only=True``) produces bitwise the same weights as one that was never interrupted.

Files in ``run_dir``: ``checkpoint.pt`` (state dicts), ``train_state.json`` (step, seed, config),
``metrics.csv`` (one row per epoch). All are written to a temporary name and renamed.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medgen._internal.device import resolve_device
from medgen._internal.files import atomic_path, write_text_atomic
from medgen.errors import ConfigError, MedgenFileNotFoundError
from medgen.generative._nets import GeneratorOutput

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "TrainResult", "resolve_device", "train"]

CHECKPOINT = "checkpoint.pt"
TRAIN_STATE = "train_state.json"
METRICS = "metrics.csv"
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    """Options of the training loop (saved in ``train_state.json``).

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
    """

    epochs: int = 10
    steps_per_epoch: int = 50
    batch_size: int = 16
    lr_g: float = 1e-3
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    lr_schedule: str = "constant"
    l1_weight: float = 1.0
    mse_weight: float = 0.0
    ssim_weight: float = 0.1
    kl_weight: float = 1e-6
    adv_weight: float = 0.0
    adv_warmup_steps: int = 0
    ema_decay: float | None = 0.99
    amp: bool = True
    time_budget_s: float | None = None
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("epochs", "steps_per_epoch", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"TrainConfig.{name} must be a positive integer, not {v!r}.")
        nw = self.num_workers
        if isinstance(nw, bool) or not isinstance(nw, int) or nw < 0:
            raise ConfigError(f"TrainConfig.num_workers must be an integer >= 0, not {nw!r}.")
        for name in ("lr_g", "lr_d"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and v > 0 and math.isfinite(v)):
                raise ConfigError(f"TrainConfig.{name} must be a positive number, not {v!r}.")
        for name in ("l1_weight", "mse_weight", "ssim_weight", "kl_weight", "adv_weight"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and v >= 0):
                raise ConfigError(f"TrainConfig.{name} must be >= 0, not {v!r}.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"TrainConfig.lr_schedule must be one of {LR_SCHEDULES}, not {self.lr_schedule!r}."
            )
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(
                f"TrainConfig.ema_decay must be in (0, 1) or None, not {self.ema_decay!r}."
            )
        self.betas = (float(self.betas[0]), float(self.betas[1]))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from a dict, naming unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"TrainConfig: unknown option(s) {unknown}; known: {sorted(known)}.")
        kw: dict[str, Any] = {k: (tuple(v) if k == "betas" else v) for k, v in d.items()}
        return cls(**kw)


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


def _step_seed(seed: int, step: int) -> int:
    return (int(seed) * 1_000_003 + int(step) * 7919 + 17) % (2**63 - 1)


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base learning rates at ``step`` of ``total``."""
    if schedule == "cosine" and total > 0:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    return 1.0


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
            "the training pairs in the training process instead",
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
        # fork: the workers inherit the pair function (a closure over the training images)
        # instead of pickling it, also where spawn is the default (macOS)
        multiprocessing_context="fork",
    )
    return iter(loader)


def _memory_format(net: nn.Module) -> torch.memory_format | None:
    """Channels-last format matching the network's convolutions (None: no convolutions)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            return torch.channels_last
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d):
            return torch.channels_last_3d
    return None


def _kl(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, 1)), summed over latent dims, averaged over the batch."""
    dims = list(range(1, mu.ndim))
    kl = 0.5 * torch.sum(mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1, dim=dims)
    return kl.mean()


def _write_metrics(run_dir: Path, history: list[dict[str, float]]) -> None:
    if not history:
        return
    cols = list(history[0])
    lines = [",".join(cols)]
    for row in history:
        lines.append(",".join(f"{row.get(c, float('nan')):.6g}" for c in cols))
    write_text_atomic(run_dir / METRICS, "\n".join(lines) + "\n")


def train(
    generator: nn.Module,
    sample_batch: Callable[[int], Mapping[str, torch.Tensor]],
    *,
    config: TrainConfig,
    discriminator: nn.Module | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    run_info: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``generator`` (and ``discriminator``) on batches from ``sample_batch``.

    Args:
        generator: maps ``BxCx[SPATIAL]`` to a :class:`GeneratorOutput` of the same shape.
        sample_batch: ``step -> {"input", "target"}`` tensors ``BxCx[SPATIAL]``, a pure
            function of the step (so resumed runs see the same batches).
        config: loop options.
        discriminator: conditional PatchGAN taking ``cat([input, image], dim=1)``; required when
            ``config.adv_weight > 0``.
        run_dir: folder for checkpoints and ``metrics.csv``; ``None`` keeps everything in memory.
        resume: continue from ``run_dir/checkpoint.pt`` (same config required).
        run_info: extra JSON-able facts stored in ``train_state.json`` (model config, seeds of
            the data process); on resume they must equal the stored ones.
        progress: show a tqdm bar.

    Returns:
        :class:`TrainResult`.

    Raises:
        MedgenFileNotFoundError: ``resume=True`` but there is no checkpoint in ``run_dir``.
        ConfigError: the checkpoint was written by a different configuration or model.
    """
    from monai.losses import PatchAdversarialLoss, SSIMLoss
    from tqdm.auto import tqdm

    if config.adv_weight > 0 and discriminator is None:
        raise ConfigError("train: adv_weight > 0 needs a discriminator; pass discriminator=.")
    device = resolve_device(config.device)
    use_amp = bool(config.amp and device.type == "cuda")
    # channels-last convolutions: ~1.3x faster training steps on CPU (oneDNN), also on CUDA
    fmt = _memory_format(generator)
    for net in (generator, discriminator):
        if net is not None:
            net.to(device)
            if fmt is not None:
                net.to(memory_format=fmt)  # type: ignore[call-overload]  # not in the stubs
    ema = copy.deepcopy(generator).eval() if config.ema_decay is not None else None
    if ema is not None:
        for p in ema.parameters():
            p.requires_grad_(False)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr_g, betas=config.betas)
    opt_d = (
        torch.optim.Adam(discriminator.parameters(), lr=config.lr_d, betas=config.betas)
        if discriminator is not None
        else None
    )
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    adv_loss = PatchAdversarialLoss(criterion="least_squares")
    ssim_loss: SSIMLoss | None = None

    cfg_dict = asdict(config)
    cfg_dict["betas"] = list(config.betas)
    # options a resumed run may change; not the epochs when the learning rate is scheduled on them
    free = {"time_budget_s", "device", "amp", "num_workers"} | (
        {"epochs"} if config.lr_schedule == "constant" else set()
    )
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
                f"train(resume=True): no {CHECKPOINT} and {TRAIN_STATE} in {rd}; train without "
                "resume first, or point run_dir at the folder of an interrupted run."
            )
        state = json.loads((rd / TRAIN_STATE).read_text())
        old = {k: v for k, v in state["config"].items() if k in comparable}
        if old != comparable or state.get("run_info", {}) != info:
            diff = sorted(
                {k for k in comparable if old.get(k) != comparable[k]}
                | {
                    f"run_info.{k}"
                    for k in set(info) | set(state.get("run_info", {}))
                    if info.get(k) != state.get("run_info", {}).get(k)
                }
            )
            raise ConfigError(
                f"train(resume=True): the checkpoint in {rd} was written with a different "
                f"configuration or model (differs in {diff}); resume with the same options or "
                "start a new run folder."
            )
        ckpt = torch.load(rd / CHECKPOINT, map_location=device, weights_only=True)
        generator.load_state_dict(ckpt["generator"])
        opt_g.load_state_dict(ckpt["opt_g"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        if discriminator is not None and opt_d is not None:
            discriminator.load_state_dict(ckpt["discriminator"])
            opt_d.load_state_dict(ckpt["opt_d"])
        scaler.load_state_dict(ckpt["scaler"])
        step = int(state["step"])
        history = list(state["history"])
        log.info("resumed %s at step %d", rd, step)

    def save_checkpoint() -> None:
        if rd is None:
            return
        ckpt = {
            "generator": generator.state_dict(),
            "opt_g": opt_g.state_dict(),
            "scaler": scaler.state_dict(),
        }
        if ema is not None:
            ckpt["ema"] = ema.state_dict()
        if discriminator is not None and opt_d is not None:
            ckpt["discriminator"] = discriminator.state_dict()
            ckpt["opt_d"] = opt_d.state_dict()
        with atomic_path(rd / CHECKPOINT) as tmp:
            torch.save(ckpt, tmp)
        state = {"step": step, "config": cfg_dict, "run_info": info, "history": history}
        write_text_atomic(rd / TRAIN_STATE, json.dumps(state, indent=1))
        _write_metrics(rd, history)

    total = config.epochs * config.steps_per_epoch
    fork_devices = [device] if device.type == "cuda" else []
    t_start = time.perf_counter()
    stopped = False
    bar = tqdm(total=total, initial=step, disable=not progress, desc="train", leave=False)
    sums: dict[str, float] = {}
    n_in_epoch = 0
    t_epoch = time.perf_counter()
    batches = _batches(sample_batch, step, total, config.num_workers)
    try:
        while step < total:
            batch = next(batches)
            x = batch["input"].to(device)
            y = batch["target"].to(device)
            if fmt is not None:
                x, y = x.to(memory_format=fmt), y.to(memory_format=fmt)
            if ssim_loss is None and config.ssim_weight > 0:
                win = min(7, *x.shape[2:])
                win -= 1 - win % 2
                ssim_loss = SSIMLoss(spatial_dims=x.ndim - 2, data_range=1.0, win_size=win)
            adv_on = discriminator is not None and config.adv_weight > 0
            adv_on = adv_on and step >= config.adv_warmup_steps
            f = lr_factor(config.lr_schedule, step, total)
            for opt, base in ((opt_g, config.lr_g), (opt_d, config.lr_d)):
                if opt is not None:
                    for group in opt.param_groups:
                        group["lr"] = base * f
            generator.train()
            with torch.random.fork_rng(devices=fork_devices):
                torch.manual_seed(_step_seed(config.seed, step))
                with torch.autocast(device_type=device.type, enabled=use_amp):
                    out: GeneratorOutput = generator(x)
                    pred = out.image
                    terms: dict[str, torch.Tensor] = {}
                    terms["l1"] = torch.mean(torch.abs(pred.float() - y.float()))
                    if config.mse_weight > 0:
                        terms["mse"] = torch.mean((pred.float() - y.float()) ** 2)
                    if ssim_loss is not None:
                        terms["ssim"] = ssim_loss(pred.float(), y.float())
                    if out.z_mu is not None and out.z_sigma is not None and config.kl_weight > 0:
                        terms["kl"] = _kl(out.z_mu.float(), out.z_sigma.float())
                    if adv_on:
                        assert discriminator is not None  # for mypy; checked above
                        logits = discriminator(torch.cat([x, pred], dim=1))[-1]
                        terms["adv"] = adv_loss(
                            logits, target_is_real=True, for_discriminator=False
                        )
                    weights = {
                        "l1": config.l1_weight,
                        "mse": config.mse_weight,
                        "ssim": config.ssim_weight,
                        "kl": config.kl_weight,
                        "adv": config.adv_weight,
                    }
                    loss_g = sum(
                        (weights[k] * v for k, v in terms.items()), torch.zeros((), device=device)
                    )
                opt_g.zero_grad(set_to_none=True)
                scaler.scale(loss_g).backward()
                scaler.step(opt_g)
                loss_d_val = float("nan")
                if adv_on and discriminator is not None and opt_d is not None:
                    with torch.autocast(device_type=device.type, enabled=use_amp):
                        real = discriminator(torch.cat([x, y], dim=1))[-1]
                        fake = discriminator(torch.cat([x, pred.detach()], dim=1))[-1]
                        loss_d = 0.5 * (
                            adv_loss(real, target_is_real=True, for_discriminator=True)
                            + adv_loss(fake, target_is_real=False, for_discriminator=True)
                        )
                    opt_d.zero_grad(set_to_none=True)
                    scaler.scale(loss_d).backward()
                    scaler.step(opt_d)
                    loss_d_val = float(loss_d.detach())
                scaler.update()
            if ema is not None and config.ema_decay is not None:
                with torch.no_grad():
                    w = 1.0 - config.ema_decay
                    for pe, p in zip(ema.parameters(), generator.parameters(), strict=True):
                        pe.lerp_(p.detach(), w)
                    for be, b in zip(ema.buffers(), generator.buffers(), strict=True):
                        be.copy_(b)
            step += 1
            n_in_epoch += 1
            vals = {
                "loss_g": float(loss_g.detach()),
                **{k: float(v.detach()) for k, v in terms.items()},
            }
            if not math.isnan(loss_d_val):
                vals["loss_d"] = loss_d_val
            for k, v in vals.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update(1)
            bar.set_postfix(loss=f"{vals['loss_g']:.4f}")
            if step % config.steps_per_epoch == 0:
                secs = time.perf_counter() - t_epoch
                row: dict[str, float] = {
                    "epoch": float(step // config.steps_per_epoch),
                    "step": float(step),
                }
                for k in ("loss_g", "l1", "mse", "ssim", "kl", "adv", "loss_d"):
                    row[k] = sums[k] / n_in_epoch if k in sums else float("nan")
                row["seconds"] = secs
                row["images_per_s"] = n_in_epoch * x.shape[0] / max(secs, 1e-9)
                history.append(row)
                log.info("epoch %d: loss_g %.5f (%.1f s)", int(row["epoch"]), row["loss_g"], secs)
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
    generator.eval()
    if fmt is not None:  # back to the default layout, so a saved and reloaded model computes alike
        for net in (generator, ema, discriminator):
            if net is not None:
                net.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    return TrainResult(
        generator=generator, ema=ema, history=history, step=step, stopped_early=stopped
    )
