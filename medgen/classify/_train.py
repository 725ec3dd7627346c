"""Training: seeded, balanced / mixed sampling, early stopping on validation AUC, calibration, DDP.

The loop is deliberately plain PyTorch over an in-memory ``NxCx[SPATIAL DIMS]`` tensor (see
``_data.load_images``) so its throughput stays within a few percent of a bare loop. A cohort
larger than memory streams instead (``cache=None`` or ``"disk"``: ``_data.StreamImages``, a
``DataLoader`` over ``Cohort.dataset``): the loop asks either source for the same batches of row
indices, and augmentation stays in this process, so the same seed gives the same model. Under
``torchrun`` (``WORLD_SIZE > 1``) the same call wraps the network in ``DistributedDataParallel`` on
the gloo backend (CPU) or NCCL (CUDA) and shards each epoch with a ``DistributedSampler``.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medgen._internal.device import resolve_device
from medgen._internal.files import atomic_path
from medgen.errors import ConfigError, ManifestError, MedgenValueError, RunFolderError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

    from medgen.classify._data import StreamImages, TensorImages
    from medgen.classify._model import Classifier

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "train"]

_WHAT = "classifier run"


@dataclass
class TrainConfig:
    """The resolved options of one training run (saved as JSON beside the weights)."""

    target: str = "label"
    model: str = "densenet121"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    spatial_dims: int = 2
    image_size: list[int] | None = None
    in_channels: int = 1
    classes: list[Any] = field(default_factory=list)
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    augment: str = "light"
    #: ``"constant"`` or ``"cosine"`` (cosine decay to 0 after ``warmup_fraction`` of linear warm-up)
    lr_schedule: str = "constant"
    warmup_fraction: float = 0.0
    label_smoothing: float = 0.0
    #: clip the gradient's global L2 norm to this before every step (0: off)
    grad_clip: float = 0.0
    balance: list[str] | None = None
    class_weights: bool = False
    focal_gamma: float | None = None
    synthetic_fraction: float | None = None
    patience: int | None = 3
    calibrate: bool = True
    val_fraction: float = 0.2
    steps_per_epoch: int | None = None
    time_budget_s: float | None = None
    channels_last: bool = True
    seed: int = 0
    device: str = "cpu"
    world_size: int = 1
    #: a pretraining run (``medgen.classify.pretrain``) whose encoder initialises the network
    init: str | None = None


#: the values :func:`train` uses for a recipe option the caller did not give and the model's
#: :attr:`~medgen.classify._registry.ModelSpec.train_defaults` do not set
RECIPE_DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "augment": "light",
    "lr_schedule": "constant",
    "warmup_fraction": 0.0,
    "label_smoothing": 0.0,
    "grad_clip": 0.0,
}
LR_SCHEDULES = ("constant", "cosine")


def resolve_recipe(model: str, **given: Any) -> dict[str, Any]:
    """The training recipe of ``model``: each option of :data:`RECIPE_DEFAULTS` is the caller's
    value when not ``None``, else the model's ``train_defaults``, else the global default.

    >>> resolve_recipe("densenet121", lr=None)["lr"]
    0.001
    >>> resolve_recipe("vit_hybrid", lr_schedule=None)["lr_schedule"]
    'cosine'
    """
    from medgen.classify._registry import get_model_spec

    unknown = set(given) - set(RECIPE_DEFAULTS)
    if unknown:
        raise ConfigError(
            f"resolve_recipe got {sorted(unknown)}; recipe options are {sorted(RECIPE_DEFAULTS)}"
        )
    spec = get_model_spec(model)
    out = {**RECIPE_DEFAULTS, **spec.train_defaults}
    out.update({k: v for k, v in given.items() if v is not None})
    return out


def check_recipe(cfg: TrainConfig) -> None:
    """Refuse invalid ``lr``, ``weight_decay``, ``lr_schedule``, ``warmup_fraction``,
    ``label_smoothing`` (and label smoothing with the focal loss) or ``grad_clip``, naming the
    option."""
    from medgen._internal.suggest import did_you_mean

    def number(name: str, value: Any, ok: bool, rule: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not ok:
            raise ConfigError(f"{name} must be {rule}, not {value!r}")

    lr, wd = cfg.lr, cfg.weight_decay
    number("lr", lr, isinstance(lr, int | float) and lr >= 0, "a number >= 0 (e.g. 1e-3)")
    number("weight_decay", wd, isinstance(wd, int | float) and wd >= 0, "a number >= 0 (e.g. 0.05)")
    if cfg.lr_schedule not in LR_SCHEDULES:
        hint = did_you_mean(str(cfg.lr_schedule), LR_SCHEDULES)
        raise ConfigError(
            f"Unknown lr_schedule {cfg.lr_schedule!r}.{hint} Choose one of "
            f"{', '.join(LR_SCHEDULES)}."
        )
    w, ls = cfg.warmup_fraction, cfg.label_smoothing
    number(
        "warmup_fraction",
        w,
        isinstance(w, int | float) and 0 <= w < 1,
        "a number in [0, 1), the share of the steps with a linear warm-up (e.g. 0.1)",
    )
    number(
        "label_smoothing",
        ls,
        isinstance(ls, int | float) and 0 <= ls < 1,
        "a number in [0, 1) (e.g. 0.1; 0 turns it off)",
    )
    gc = cfg.grad_clip
    number(
        "grad_clip",
        gc,
        isinstance(gc, int | float) and gc >= 0 and math.isfinite(gc),
        "a number >= 0, the largest gradient norm of a step (e.g. 1.0; 0 turns it off)",
    )
    if ls > 0 and cfg.focal_gamma is not None:
        raise ConfigError(
            f"label_smoothing={ls} applies to the cross-entropy loss, not to the focal loss "
            f"(focal_gamma={cfg.focal_gamma}); pass label_smoothing=0 or focal_gamma=None"
        )


def lr_factor(progress: float, *, schedule: str, warmup_fraction: float) -> float:
    """The learning-rate multiplier after a share ``progress`` in [0, 1] of the training.

    A linear warm-up ``progress / warmup_fraction`` first, then ``1`` (``"constant"``) or the
    cosine decay ``(1 + cos(pi * q)) / 2`` with ``q`` the share of the post-warm-up part
    (``"cosine"``, Loshchilov & Hutter 2017, without restarts; 0 at the end).

    >>> lr_factor(0.05, schedule="cosine", warmup_fraction=0.1)
    0.5
    >>> round(lr_factor(0.55, schedule="cosine", warmup_fraction=0.1), 6)
    0.5
    """
    import math

    p = min(max(float(progress), 0.0), 1.0)
    if warmup_fraction > 0 and p < warmup_fraction:
        return p / warmup_fraction
    if schedule == "constant":
        return 1.0
    q = (p - warmup_fraction) / (1.0 - warmup_fraction)
    return 0.5 * (1.0 + math.cos(math.pi * q))


# ---------------------------------------------------------------------------------------------
# loss


def _check_gamma(gamma: float | None) -> float | None:
    if gamma is None:
        return None
    if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not gamma >= 0:
        raise ConfigError(f"focal_gamma must be a number >= 0 (e.g. 2.0) or None, not {gamma!r}")
    return float(gamma)


def _loss(focal_gamma: float | None, class_w: Any, label_smoothing: float = 0.0) -> Any:
    """Cross-entropy (with ``label_smoothing``, Szegedy et al. 2016), or MONAI's focal loss on
    the softmax (mean over images of the per-image sum over classes, so ``focal_gamma=0`` equals
    cross-entropy)."""
    import torch

    if focal_gamma is None:
        return torch.nn.CrossEntropyLoss(weight=class_w, label_smoothing=float(label_smoothing))
    from monai.losses import FocalLoss

    focal = FocalLoss(
        gamma=focal_gamma, weight=class_w, use_softmax=True, to_onehot_y=True, reduction="none"
    )

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return focal(logits, y[:, None]).sum(dim=1).mean()

    return loss


# ---------------------------------------------------------------------------------------------
# sampling


def sample_weights(
    df: pd.DataFrame,
    *,
    target: str,
    balance: Sequence[str] | None,
    synthetic_fraction: float | None,
) -> np.ndarray | None:
    """Per-row sampling weights for the training rows, or ``None`` for uniform sampling.

    ``balance`` lists columns (``"label"`` means ``target``): each row gets ``1 / size of its
    group``, groups being the combinations of those columns, so every group is drawn equally often.
    ``synthetic_fraction`` ``f`` then rescales so that rows with ``source == "synthetic"`` carry a
    total weight ``f`` and the others ``1 - f``.
    """
    import numpy as np

    n = len(df)
    w = np.ones(n, dtype=float)
    if balance:
        cols = [target if c == "label" and "label" not in df.columns else c for c in balance]
        for c in cols:
            if c not in df.columns:
                raise ConfigError(
                    f"balance names column {c!r}, which is not in the manifest; columns: "
                    f"{', '.join(map(str, df.columns))}"
                )
        keys = df[cols].astype(str).agg("|".join, axis=1)
        counts = keys.map(keys.value_counts())
        w = 1.0 / counts.to_numpy(dtype=float)
    if synthetic_fraction is not None:
        f = float(synthetic_fraction)
        if not 0.0 <= f <= 1.0:
            raise ConfigError(f"synthetic_fraction must be in [0, 1], not {synthetic_fraction!r}")
        if "source" not in df.columns:
            raise ManifestError("synthetic_fraction needs the manifest column 'source'")
        syn = (df["source"].astype(str) == "synthetic").to_numpy()
        if f > 0 and not syn.any():
            raise ManifestError(
                f"synthetic_fraction={f} but the training split has no rows with "
                "source == 'synthetic'; add a synthetic cohort or pass synthetic_fraction=None"
            )
        if f < 1 and syn.all():
            raise ManifestError(
                f"synthetic_fraction={f} but every training row is synthetic; add real images"
            )
        out = np.zeros(n)
        if syn.any():
            out[syn] = f * w[syn] / w[syn].sum()
        if (~syn).any():
            out[~syn] = (1 - f) * w[~syn] / w[~syn].sum()
        w = out
    elif not balance:
        return None
    return w / w.sum()


def _epoch_indices(
    n: int,
    *,
    weights: np.ndarray | None,
    epoch: int,
    seed: int,
    rank: int,
    world_size: int,
) -> list[int]:
    """Indices of the training rows this process visits in one epoch.

    Uniform sampling uses ``torch.utils.data.DistributedSampler`` (a seeded permutation sharded by
    rank; with one process it is a plain shuffle). Weighted sampling draws ``n`` rows with
    replacement from a generator seeded identically on every rank, then shards the draw by rank.
    """
    import torch
    from torch.utils.data import DistributedSampler, WeightedRandomSampler

    if weights is None:
        rows: Any = range(n)
        sampler: DistributedSampler[int] = DistributedSampler(
            rows, num_replicas=world_size, rank=rank, shuffle=True, seed=seed
        )
        sampler.set_epoch(epoch)
        return list(sampler)
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    draw = list(
        WeightedRandomSampler(weights.tolist(), num_samples=n, replacement=True, generator=g)
    )
    if world_size > 1:
        per = -(-n // world_size)
        draw = (draw * 2)[: per * world_size]
        draw = draw[rank::world_size]
    return draw


# ---------------------------------------------------------------------------------------------
# metrics


def _auc(y: np.ndarray, probs: np.ndarray) -> float:
    """Validation AUC: binary, or the macro average of the one-vs-rest AUCs (``K > 2``).

    With ``K > 2`` classes of which some are absent from ``y`` (a small validation split), the
    macro average runs over the classes present (scikit-learn would raise); NaN with fewer than 2.
    """
    import numpy as np
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    k = probs.shape[1]
    present = [j for j in range(k) if (y == j).any()]
    if len(present) == k:
        return float(roc_auc_score(y, probs, multi_class="ovr", labels=list(range(k))))
    return float(np.mean([roc_auc_score(y == j, probs[:, j]) for j in present]))


def _logits(
    net: torch.nn.Module,
    x: TensorImages | StreamImages,
    *,
    batch_size: int,
    device: Any,
    channels_last: bool,
) -> torch.Tensor:
    import torch

    outs = []
    net.eval()
    with torch.inference_mode():
        for xb in x.sequential(batch_size):
            xb = xb.to(device)
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            outs.append(net(xb).float().cpu())
    return torch.cat(outs)


# ---------------------------------------------------------------------------------------------
# distributed


def _dist_setup(distributed: bool | str, device: str) -> tuple[int, int, bool]:
    """Return ``(rank, world_size, initialised_here)``; initialise the process group if needed."""
    import torch.distributed as dist

    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if distributed == "auto":
        use = env_world > 1
    elif isinstance(distributed, bool):
        use = distributed
    else:
        raise ConfigError(f"distributed must be True, False or 'auto', not {distributed!r}")
    if not use:
        return 0, 1, False
    if env_world <= 1 and not dist.is_initialized():
        raise ConfigError(
            "distributed=True but WORLD_SIZE is not set; launch with "
            "`torchrun --nproc_per_node N ...` or pass distributed='auto'"
        )
    here = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        here = True
    return dist.get_rank(), dist.get_world_size(), here


# ---------------------------------------------------------------------------------------------
# the fit on tensors


@dataclass
class FitResult:
    net: Any
    history: pd.DataFrame
    best_epoch: int
    best_val_auc: float
    temperature: float
    ece_before: float | None
    ece_after: float | None
    seen: list[list[int]]
    wall_s: float


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of epoch ``epoch`` on rank ``rank``: augmentation and torch randomness (dropout)
    of an epoch are a pure function of it, so a resumed run repeats an uninterrupted one."""
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + int(rank) * 104_729 + 17) % (2**31 - 1)


def fit_tensors(
    x_train: torch.Tensor | TensorImages | StreamImages,
    y_train: torch.Tensor,
    x_val: torch.Tensor | TensorImages | StreamImages,
    y_val: torch.Tensor,
    *,
    cfg: TrainConfig,
    weights: np.ndarray | None = None,
    metrics_csv: Path | None = None,
    distributed: bool | str = "auto",
    progress: bool = True,
    run_dir: Path | None = None,
    resume: bool = False,
    run_info: dict[str, Any] | None = None,
) -> FitResult:
    """Train ``cfg.model`` on tensors: ``x_*`` are ``NxCx[SPATIAL DIMS]``, ``y_*`` class indices.

    ``x_*`` may also be image sources of :mod:`medgen.classify._data` (``TensorImages``, or
    ``StreamImages`` to stream a cohort larger than memory): the batches, hence the model, are
    the same for the same seed.

    Returns the best network by validation AUC (ties and NaN AUC fall back to validation loss),
    the per-epoch history and, when ``cfg.calibrate``, the fitted temperature with ECE before/after.

    Epoch ``k`` is a pure function of ``(cfg.seed, k)``: its rows (:func:`_epoch_indices`), its
    augmentation and all torch randomness inside it (seeded by :func:`epoch_seed`). With
    ``run_dir``, rank 0 writes ``checkpoint.pt``, ``train_state.json`` and ``metrics.csv`` there
    after every epoch (see :mod:`medgen.classify._run`; the caller holds the folder's lock);
    ``resume=True`` continues from the checkpoint, bitwise like an uninterrupted run on the same
    device, after checking that the options (except ``epochs``, ``time_budget_s``, ``device``)
    and ``run_info`` equal the stored ones.
    """
    import numpy as np
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from medgen.classify import _run
    from medgen.classify._calibrate import expected_calibration_error, fit_temperature
    from medgen.classify._data import StreamImages, TensorImages
    from medgen.classify._registry import build_model, get_model_spec
    from medgen.transforms import augmentation

    src_tr = x_train if isinstance(x_train, TensorImages | StreamImages) else TensorImages(x_train)
    src_va = x_val if isinstance(x_val, TensorImages | StreamImages) else TensorImages(x_val)
    t0 = time.perf_counter()
    device = torch.device(cfg.device)
    fork_devices = [device] if device.type == "cuda" else []
    rank, world, init_here = _dist_setup(distributed, cfg.device)
    cfg.world_size = world
    # the folder rank 0 writes (other ranks only read a checkpoint to resume from)
    wdir = run_dir if rank == 0 else None
    if run_dir is not None and metrics_csv is None:
        metrics_csv = run_dir / _run.METRICS
    info = dict(run_info or {})
    if resume:
        stored = _run.read_train_state(run_dir) if run_dir is not None else None
        if run_dir is None or stored is None:
            raise RunFolderError(
                f"fit_tensors(resume=True): no {_run.TRAIN_STATE} in {str(run_dir)!r}; nothing "
                "to resume. Train without resume."
            )
        _run.check_resumable(stored, config=asdict(cfg), run_info=info, folder=run_dir)
    spec = get_model_spec(cfg.model)
    check_recipe(cfg)
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(cfg.seed)
        net = build_model(
            cfg.model,
            spatial_dims=cfg.spatial_dims,
            in_channels=cfg.in_channels,
            num_classes=len(cfg.classes),
            image_size=cfg.image_size or list(src_tr.shape[1:]),
            model_kwargs=cfg.model_kwargs,
        )
    if cfg.init is not None:  # the pretrained encoder; the head keeps its seeded initialisation
        from medgen.classify._pretrain import load_init

        load_init(net, cfg)
    net = net.to(device)
    channels_last = bool(cfg.channels_last and spec.channels_last and cfg.spatial_dims == 2)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    rows: list[dict[str, Any]] = []
    seen: list[list[int]] = []
    best_state: dict[str, Any] | None = None
    best_key = (-np.inf, -np.inf)
    best_epoch, best_auc, stale = -1, float("nan"), 0
    start, stopped, prior_s = 0, None, 0.0
    ckpt = _run.load_checkpoint(run_dir) if resume and run_dir is not None else None
    if ckpt is not None:
        done = int(ckpt["epoch"])
        if done > cfg.epochs:
            raise ConfigError(
                f"cannot resume with epochs={cfg.epochs}: the run in {str(run_dir)!r} already "
                f"trained {done} epochs; pass epochs >= {done}."
            )
        net.load_state_dict(ckpt["net"])
        opt.load_state_dict(ckpt["optimizer"])
        rows = [dict(r) for r in ckpt["history"]]
        seen = [[int(i) for i in ep.tolist()] for ep in ckpt["seen"]]
        best_state = ckpt["best_state"] or None
        best_key = (float(ckpt["best_key"][0]), float(ckpt["best_key"][1]))
        best_epoch, best_auc, stale = (
            int(ckpt["best_epoch"]),
            float(ckpt["best_auc"]),
            int(ckpt["stale"]),
        )
        stopped, prior_s = ckpt.get("stopped"), float(ckpt.get("train_seconds", 0.0))
        # early stopping ended the run: resuming finishes it; a time budget: it trains on
        start = cfg.epochs if stopped == "patience" else done
        log.info("resuming %s after epoch %d", run_dir, done)
    if wdir is not None:
        _run.write_train_state(
            wdir, config=asdict(cfg), run_info=info, epoch=len(rows), history=rows
        )
    train_net: torch.nn.Module = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_net = DistributedDataParallel(net)
    class_w = None
    if cfg.class_weights:
        counts = torch.bincount(y_train, minlength=len(cfg.classes)).float().clamp_min(1)
        class_w = (counts.sum() / (len(counts) * counts)).to(device)
    loss_fn = _loss(cfg.focal_gamma, class_w, cfg.label_smoothing)
    # the learning-rate schedule runs over every step of every epoch; with a time budget (one
    # process) over the larger of the step share and the budget share, so it ends at the budget
    n_rank = -(-len(src_tr) // world) if world > 1 else len(src_tr)
    if cfg.steps_per_epoch is not None:
        n_rank = min(n_rank, cfg.steps_per_epoch * cfg.batch_size)
    steps_per_epoch = -(-n_rank // cfg.batch_size)
    total_steps = max(1, cfg.epochs * steps_per_epoch)
    scheduled = cfg.lr_schedule != "constant" or cfg.warmup_fraction > 0
    by_time = scheduled and cfg.time_budget_s is not None and world == 1

    def set_lr(step: int) -> None:
        p = (step + 1) / total_steps
        if by_time and cfg.time_budget_s:
            p = max(p, (prior_s + time.perf_counter() - t0) / cfg.time_budget_s)
        f = lr_factor(p, schedule=cfg.lr_schedule, warmup_fraction=cfg.warmup_fraction)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * f

    y_val_np = y_val.numpy()
    for epoch in range(start, cfg.epochs):
        te = time.perf_counter()
        out_of_time = False
        idx = _epoch_indices(
            len(src_tr), weights=weights, epoch=epoch, seed=cfg.seed, rank=rank, world_size=world
        )
        if cfg.steps_per_epoch is not None:
            idx = idx[: cfg.steps_per_epoch * cfg.batch_size]
        seen.append(list(idx))
        es = epoch_seed(cfg.seed, epoch, rank)
        aug = augmentation(cfg.augment, spatial_dims=cfg.spatial_dims, seed=es)
        losses: list[float] = []
        batches = [idx[i : i + cfg.batch_size] for i in range(0, len(idx), cfg.batch_size)]
        bar = tqdm(
            batches,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not progress or rank != 0,
            leave=False,
        )
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(es)
            train_net.train()
            # the loader seeds its workers from its own generator: the global stream stays as is
            stream = src_tr.batches(batches, generator=torch.Generator().manual_seed(es))
            for step, (b, xb) in enumerate(zip(bar, stream, strict=True)):
                bt = torch.as_tensor(b)
                if cfg.augment != "none":
                    xb = torch.stack([_plain(aug(im)) for im in xb])
                xb = xb.to(device)
                if channels_last:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                yb = y_train[bt].to(device)
                opt.zero_grad(set_to_none=True)
                if scheduled:
                    set_lr(epoch * steps_per_epoch + step)
                loss = loss_fn(train_net(xb), yb)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(train_net.parameters(), cfg.grad_clip)
                opt.step()
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                if cfg.time_budget_s is not None and time.perf_counter() - t0 > cfg.time_budget_s:
                    out_of_time = True
                    break
            stream.close()  # stops the loader's workers when the time budget cut the epoch
            logits = _logits(
                net,
                src_va,
                batch_size=max(cfg.batch_size, 32),
                device=device,
                channels_last=channels_last,
            )
        probs = torch.softmax(logits, dim=1).numpy()
        val_loss = float(torch.nn.functional.cross_entropy(logits, y_val))
        auc = _auc(y_val_np, probs)
        acc = float((probs.argmax(1) == y_val_np).mean())
        rows.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
                "val_loss": val_loss,
                "val_auc": auc,
                "val_acc": acc,
                "lr": float(opt.param_groups[0]["lr"]),
                "n_train_seen": len(idx),
                "seconds": time.perf_counter() - te,
            }
        )
        key = (auc if not np.isnan(auc) else -np.inf, -val_loss)
        if key > best_key:
            best_key, best_epoch, best_auc, stale = key, epoch + 1, auc, 0
            best_state = copy.deepcopy(net.state_dict())
        else:
            stale += 1
        stopped = None
        if cfg.patience is not None and stale >= cfg.patience:
            stopped = "patience"
        elif out_of_time:
            stopped = "time"
        if rank == 0:
            log.info("epoch %d: %s", epoch + 1, rows[-1])
        if wdir is not None:
            _run.save_checkpoint(
                wdir,
                {
                    "format": _run.CHECKPOINT_FORMAT,
                    "epoch": epoch + 1,
                    "net": net.state_dict(),
                    "optimizer": opt.state_dict(),
                    "best_state": best_state or {},
                    "best_key": [float(best_key[0]), float(best_key[1])],
                    "best_epoch": best_epoch,
                    "best_auc": float(best_auc),
                    "stale": stale,
                    "stopped": stopped,
                    "history": rows,
                    "seen": [torch.as_tensor(ep, dtype=torch.int64) for ep in seen],
                    "train_seconds": prior_s + time.perf_counter() - t0,
                },
            )
            _run.write_train_state(
                wdir, config=asdict(cfg), run_info=info, epoch=epoch + 1, history=rows
            )
        if rank == 0 and metrics_csv is not None:
            _write_csv(metrics_csv, rows)
        if stopped == "patience":
            log.info("early stopping after epoch %d (best epoch %d)", epoch + 1, best_epoch)
            break
        if stopped == "time":
            log.info("time budget of %.0f s reached after epoch %d", cfg.time_budget_s, epoch + 1)
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    if channels_last:
        net = net.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    temperature, ece_b, ece_a = 1.0, None, None
    if cfg.calibrate and len(src_va) > 0:
        logits = _logits(net, src_va, batch_size=64, device=device, channels_last=False)
        ece_b = expected_calibration_error(torch.softmax(logits, 1).numpy(), y_val_np)
        temperature = fit_temperature(logits, y_val)
        ece_a = expected_calibration_error(torch.softmax(logits / temperature, 1).numpy(), y_val_np)
    if init_here:
        import torch.distributed as dist

        dist.destroy_process_group()
    return FitResult(
        net=net.cpu().eval(),
        history=pd.DataFrame(rows),
        best_epoch=best_epoch,
        best_val_auc=float(best_auc),
        temperature=temperature,
        ece_before=ece_b,
        ece_after=ece_a,
        seen=seen,
        wall_s=prior_s + time.perf_counter() - t0,
    )


def _plain(t: Any) -> torch.Tensor:
    """A MONAI transform's output as a plain float tensor (MetaTensor ops are slow)."""
    import torch

    return torch.as_tensor(t.as_tensor() if hasattr(t, "as_tensor") else t).float()


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


# ---------------------------------------------------------------------------------------------
# public entry point


def _split_train_val(
    df: pd.DataFrame, *, val_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    import numpy as np

    split = df["split"].fillna("").astype(str).str.lower() if "split" in df.columns else None
    if split is None or not (split == "train").any():
        if split is not None and (split != "").any():
            raise ManifestError(
                "the manifest has no rows with split == 'train'; assign splits "
                "(e.g. Cohort.split(...)) before training"
            )
        pool = df
    else:
        pool = df[split == "train"]
        val = df[split == "val"]
        if len(val):
            return pool, val
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be in (0, 1), not {val_fraction!r}")
    subjects = (
        pool["subject_id"].astype(str).unique()
        if "subject_id" in pool
        else pool.index.astype(str).unique()
    )
    rng = np.random.default_rng(seed)
    n_val = max(1, round(len(subjects) * val_fraction))
    val_subjects = set(rng.choice(subjects, size=n_val, replace=False).tolist())
    key = pool["subject_id"].astype(str) if "subject_id" in pool else pool.index.astype(str)
    is_val = np.asarray(key.isin(val_subjects), dtype=bool)
    log.info("no validation split in the manifest: carved %d subjects out of train", n_val)
    return pool[~is_val], pool[is_val]


def _encode_target(
    df: pd.DataFrame, target: str, classes: list[Any] | None = None
) -> tuple[torch.Tensor, list[Any]]:
    import torch

    if target not in df.columns:
        raise ManifestError(
            f"target column {target!r} is not in the manifest; columns: {', '.join(map(str, df.columns))}. "
            "Pass target=<column> (CLI: --target)."
        )
    col = df[target]
    if col.isna().any():
        bad = df.loc[col.isna(), "image_id"].astype(str).tolist()[:5] if "image_id" in df else []
        raise ManifestError(
            f"target column {target!r} has {int(col.isna().sum())} missing values (e.g. images {bad}); "
            "fill them or drop those rows"
        )
    if classes is None:
        classes = sorted(col.unique().tolist(), key=lambda v: (str(type(v)), v))
        if len(classes) < 2:
            raise MedgenValueError(
                f"target column {target!r} has a single class ({classes[0]!r}) in the training "
                "rows; a classifier needs at least two classes"
            )
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = set(col.unique().tolist()) - set(lookup)
    if unknown:
        raise MedgenValueError(
            f"target column {target!r} has values {sorted(map(str, unknown))} not among the "
            f"training classes {classes}"
        )
    return torch.as_tensor(col.map(lookup).to_numpy(dtype="int64").copy()), [
        c.item() if hasattr(c, "item") else c for c in classes
    ]


def train(
    cohort: Any,
    *,
    target: str = "label",
    model: str = "densenet121",
    spatial_dims: int = 2,
    image_size: Sequence[int] | None = None,
    epochs: int = 10,
    batch_size: int = 16,
    lr: float | None = None,
    weight_decay: float | None = None,
    augment: str | None = None,
    lr_schedule: str | None = None,
    warmup_fraction: float | None = None,
    label_smoothing: float | None = None,
    grad_clip: float | None = None,
    balance: str | Sequence[str] | None = None,
    class_weights: bool = False,
    focal_gamma: float | None = None,
    synthetic_fraction: float | None = None,
    patience: int | None = 3,
    calibrate: bool = True,
    val_fraction: float = 0.2,
    steps_per_epoch: int | None = None,
    time_budget_s: float | None = None,
    model_kwargs: dict[str, Any] | None = None,
    channels_last: bool = True,
    device: str = "auto",
    distributed: bool | str = "auto",
    out_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    seed: int | None = None,
    progress: bool = True,
    init: str | Path | None = None,
    cache: str | None = "memory",
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
) -> Classifier:
    """Train an image classifier on a cohort.

    Args:
        cohort: a :class:`medgen.Cohort` or a manifest path. Rows with ``split == "train"`` train,
            ``split == "val"`` validate (when absent, ``val_fraction`` of the training subjects are
            held out, whole subjects only).
        target: the label column.
        model: a registry name (:func:`medgen.classify.available_models`).
        spatial_dims: 2 or 3.
        image_size: resize every image to this spatial size; ``None`` keeps the native size (then
            all images must share it).
        epochs: maximum number of epochs.
        batch_size: images per optimiser step (per process under DDP).
        lr, weight_decay: AdamW settings (peak learning rate under a schedule).
        augment: augmentation preset (:data:`medgen.transforms.AUGMENT_PRESETS`).
        lr_schedule: ``"constant"`` or ``"cosine"`` (:func:`lr_factor`: linear warm-up over
            ``warmup_fraction`` of the steps, then cosine decay to 0 at the last step of
            ``epochs``; with ``time_budget_s`` and one process, at the budget if that comes
            first).
        warmup_fraction: share of the training in [0, 1) with a linear learning-rate warm-up.
        label_smoothing: cross-entropy label smoothing in [0, 1) (not with ``focal_gamma``).
        grad_clip: clip the gradient's global L2 norm to this before every optimiser step
            (``torch.nn.utils.clip_grad_norm_``); 0 turns it off.

            The seven options above default to ``None``: the model's recipe
            (``ModelSpec.train_defaults``; the ViTs': docs/classify.md), else ``lr=1e-3``,
            ``weight_decay=1e-4``, ``augment="light"``, constant rate, no warm-up, no
            smoothing, no clipping.
            The resolved values are recorded in ``config``.
        balance: re-sample so groups are drawn equally often: ``"label"`` (the target), an attribute
            column (``"sex"``), or a list of columns (``["label", "sex"]``).
        class_weights: weight the loss by inverse class frequency.
        focal_gamma: train with the focal loss (Lin et al. 2017) of this focusing parameter
            (MONAI ``FocalLoss`` on the softmax, per image summed over classes; 2 is usual)
            instead of cross-entropy; ``class_weights`` then act as its ``alpha``.
        synthetic_fraction: expected fraction of each epoch drawn from ``source == "synthetic"`` rows.
        patience: early stopping after this many epochs without a better validation AUC (``None``: off).
        calibrate: fit a temperature on the validation split; ECE before/after goes in ``metrics``.
        val_fraction: share of training subjects held out when the manifest has no ``val`` rows.
        steps_per_epoch: cap on optimiser steps per epoch (``None``: one pass over the training rows).
        time_budget_s: stop once this process has trained this many seconds (the epoch is cut
            there, then validated and checkpointed; the run counts as finished).
        model_kwargs: extra arguments for the MONAI network constructor.
        channels_last: use the channels-last memory format for 2D CNNs (faster on CPU).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        distributed: ``"auto"`` uses DDP when launched by ``torchrun`` (``WORLD_SIZE > 1``).
        out_dir: the run folder (see :mod:`medgen.classify._run` and docs/classify.md). The whole
            run holds its lock (a second writer fails at once with :class:`RunLockedError`
            naming the holder); after every epoch ``checkpoint.pt``, ``train_state.json`` and
            ``metrics.csv`` are written; ``model.safetensors``, ``config.json`` and last
            ``run_complete.json`` when training ends. It must be new or empty unless ``resume``
            or ``overwrite``; files that are not a run's are never deleted.
        resume: continue the interrupted (or finished) run in ``out_dir`` from its last
            completed epoch, with the same options and data (``epochs``, ``time_budget_s`` and
            ``device`` may change; ``seed=None`` takes the run's seed). On the same device the
            result is bitwise that of an uninterrupted run. A run ended by early stopping is
            only finished; one ended by ``time_budget_s`` trains on.
        overwrite: replace the run in ``out_dir`` (its files only).
        seed: seeds weights, sampling and augmentation; ``None`` draws one and records it.
        progress: show tqdm bars.
        init: a pretraining run folder (:func:`medgen.classify.pretrain`) of the same
            ``model``, ``model_kwargs`` and input size: its encoder initialises the network, the
            head starts fresh (seeded); recorded as ``config["init"]`` and in ``provenance``.
        cache: how the images are held. ``"memory"``: every training and validation image is
            read once into one tensor (the fastest; the cohort must fit in RAM). ``"disk"``:
            streamed in batches from the cohort's disk cache in ``cache_dir`` (each image is
            read and preprocessed once, then reused by later epochs and later runs). ``None``:
            streamed from the image files, read and preprocessed every epoch. Streaming holds a
            few batches, not the cohort, and the same seed gives the same model in every mode.
            Not part of the run's options: a run may resume with another mode.
        cache_dir: the disk-cache folder (created if missing; required with ``cache="disk"``,
            refused otherwise; not inside ``out_dir``). Shareable between runs and cohorts.
        num_workers: ``DataLoader`` worker processes that read the streamed batches (``0``:
            this process); results do not depend on it.

    Returns:
        The trained :class:`Classifier` (best validation epoch, with its temperature).

    Raises:
        RunFolderError: ``out_dir`` holds a finished run (without ``overwrite``/``resume``), an
            interrupted one (without either), files that are not a run's, or nothing to resume.
        RunLockedError: another process is writing ``out_dir``.
        ConfigError: ``resume`` with options or data other than the run's (the message names
            each difference), an invalid option, ``init`` of another architecture or input
            size (the message names both), or a ``cache_dir`` that is a file, is missing with
            ``cache="disk"`` or lies inside ``out_dir``.
    """
    import contextlib

    import numpy as np

    from medgen._internal.provenance import package_versions
    from medgen._internal.runs import mark_complete, run_lock
    from medgen.classify import _run
    from medgen.classify._data import (
        as_cohort,
        check_cache_dir,
        check_num_workers,
        image_source,
        manifest_hash,
        manifest_of,
    )
    from medgen.classify._model import Classifier
    from medgen.classify._registry import get_model_spec

    get_model_spec(model)
    recipe = resolve_recipe(
        model,
        lr=lr,
        weight_decay=weight_decay,
        augment=augment,
        lr_schedule=lr_schedule,
        warmup_fraction=warmup_fraction,
        label_smoothing=label_smoothing,
        grad_clip=grad_clip,
    )
    check_recipe(
        TrainConfig(
            model=get_model_spec(model).name,
            focal_gamma=_check_gamma(focal_gamma),
            **recipe,
        )
    )
    cache_path = check_cache_dir(cache, cache_dir)
    check_num_workers(num_workers)
    for name, val in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ConfigError(f"{name} must be a positive integer, not {val!r}")
    if out_dir is None and (resume or overwrite):
        raise ConfigError(
            "resume=True and overwrite=True apply to a run folder; pass out_dir=<folder>."
        )
    co = as_cohort(cohort)
    out = Path(out_dir).expanduser() if out_dir is not None else None
    if (
        cache_path is not None
        and out is not None
        and cache_path.resolve().is_relative_to(out.resolve())
    ):
        raise ConfigError(
            f"cache_dir {str(cache_path)!r} lies inside the run folder {str(out)!r}, whose "
            "files are the run's only; put the cache beside it (e.g. a shared cache folder)"
        )
    # under torchrun only rank 0 locks and writes the folder; the others read it to resume
    writer = out is not None and int(os.environ.get("RANK", "0")) == 0
    with contextlib.ExitStack() as held:
        if writer and out is not None:
            held.enter_context(run_lock(out, what=_WHAT, owned=_run.OWNED))
            held.enter_context(_run.finished_kept_on_failure(out, resume=resume))
            _run.prepare(out, resume=resume, overwrite=overwrite, what=_WHAT)
        if resume and seed is None and out is not None:
            stored = _run.read_train_state(out)
            if stored is not None and stored["config"].get("seed") is not None:
                seed = int(stored["config"]["seed"])
        if seed is None:
            seed = int(np.random.default_rng().integers(0, 2**31 - 1))
        if isinstance(balance, str):
            balance = [balance]
        df = manifest_of(co)
        if target not in df.columns:
            _encode_target(df, target)  # raises the missing-column error
        tr_df, va_df = _split_train_val(df, val_fraction=val_fraction, seed=seed)
        y_tr, classes = _encode_target(tr_df, target)
        y_va, _ = _encode_target(va_df, target, classes)
        weights = sample_weights(
            tr_df.reset_index(drop=True),
            target=target,
            balance=balance,
            synthetic_fraction=synthetic_fraction,
        )
        size = list(image_size) if image_size is not None else None
        x_tr, x_va = (
            image_source(
                co,
                part["image_id"].astype(str).tolist(),
                image_size=size,
                spatial_dims=spatial_dims,
                cache=cache,
                cache_dir=cache_path,
                num_workers=num_workers,
                progress=progress,
            )
            for part in (tr_df, va_df)
        )
        if x_tr.shape != x_va.shape:
            raise MedgenValueError(
                f"training images are {x_tr.shape} but validation images are "
                f"{x_va.shape}; pass image_size=(...) to resize both"
            )
        cfg = TrainConfig(
            target=target,
            model=get_model_spec(model).name,
            model_kwargs=dict(model_kwargs or {}),
            spatial_dims=spatial_dims,
            image_size=[int(s) for s in x_tr.shape[1:]],
            in_channels=int(x_tr.shape[0]),
            classes=classes,
            epochs=epochs,
            batch_size=batch_size,
            **recipe,
            balance=list(balance) if balance else None,
            class_weights=class_weights,
            focal_gamma=_check_gamma(focal_gamma),
            synthetic_fraction=synthetic_fraction,
            patience=patience,
            calibrate=calibrate,
            val_fraction=val_fraction,
            steps_per_epoch=steps_per_epoch,
            time_budget_s=time_budget_s,
            channels_last=channels_last,
            seed=seed,
            device=str(resolve_device(device)),
            init=str(Path(init).expanduser()) if init is not None else None,
        )
        init_info = None
        if cfg.init is not None:
            from medgen.classify._pretrain import check_init

            init_info = check_init(cfg.init, cfg)
        res = fit_tensors(
            x_tr,
            y_tr,
            x_va,
            y_va,
            cfg=cfg,
            weights=weights,
            distributed=distributed,
            progress=progress,
            run_dir=out,
            resume=resume,
            run_info={
                "manifest_sha256": manifest_hash(df),
                **({"init_sha256": init_info["weights_sha256"]} if init_info else {}),
            },
        )
        metrics = {
            "best_epoch": res.best_epoch,
            "best_val_auc": res.best_val_auc,
            "epochs_run": len(res.history),
            "temperature": res.temperature,
            "ece_before": res.ece_before,
            "ece_after": res.ece_after,
            "n_train": len(tr_df),
            "n_val": len(va_df),
            "train_seconds": res.wall_s,
        }
        tr_ids = tr_df["image_id"].astype(str).tolist()
        clf = Classifier(
            res.net,
            config=asdict(cfg),
            temperature=res.temperature,
            metrics=metrics,
            history=res.history,
            provenance={
                "manifest_sha256": manifest_hash(df),
                "seed": seed,
                "versions": package_versions(),
                **({"init": init_info} if init_info else {}),
            },
        )
        clf.seen_image_ids = [[tr_ids[i] for i in ep] for ep in res.seen]
        if writer and out is not None:
            clf._write(out)  # weights and config, then the marker that vouches for them
            mark_complete(
                out,
                _run.RESULT_FILES,
                kind=_run.KIND,
                info={"best_epoch": res.best_epoch, "epochs_run": len(res.history)},
            )
    return clf
