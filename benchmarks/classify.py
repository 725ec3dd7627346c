"""Benchmark medgen.classify on CPU: training throughput against a bare PyTorch loop, test AUC /
wall time of DenseNet121 and ViT on the demo cohort under a fixed training budget, and (``--suite``)
issue 17's extended benchmark: self-supervised pretraining, label efficiency, pointing game.

Usage (one process; ~10-15 minutes on 2 cores with the defaults)::

    python benchmarks/classify.py                       # simulates the demo cohort into a temp dir
    python benchmarks/classify.py --cohort OUT/cohort/manifest.csv --budget 240 --threads 2
    python benchmarks/classify.py --skip-auc            # throughput only (~2 minutes)

Baselines:
  * throughput: the same MONAI network, the same in-memory tensors, the same batch size and
    optimiser, trained by a bare ``for`` loop (no sampler, no augmentation, no validation).
    medgen's figure is ``fit_tensors`` with ``augment="none"`` over one epoch of the same number
    of steps, including its per-epoch validation, metrics CSV and best-state copy. Target: overhead
    < 10 %.
  * quality: target test AUC >= 0.90 on the disease label (``label``) of the demo cohort.

Extended suite (``--suite``; issue 17)::

    python benchmarks/classify.py --suite --plan --budget 120 --pretrain-budget 240  # estimate only
    python benchmarks/classify.py --suite --threads 1 --budget 120 --pretrain-budget 240 \
        --cohort OUT/cohort/manifest.csv --out bench_suite --memory
    python benchmarks/classify.py --suite --preset tiny --budget 3 --pretrain-budget 3 --n-boot 50
    python benchmarks/classify.py --suite --row-steps 1656 --pretrain-steps 600 ...  # step budgets
    python benchmarks/classify.py --suite --label-only --pairs vit --vit-only --fractions 0.1 \
        --pretrain-steps 2400 ...   # a longer pretraining, measured only where the gain is

On the demo cohort (simulated into ``--out/cohort`` unless ``--cohort``), images resized to
``--image-size`` (64x64), one process, ``--threads`` torch threads:

  1. pretraining on the ``train`` split's images, labels ignored, ``--pretrain-budget`` seconds
     (or ``--pretrain-steps`` steps)
     each: ``pretrain(method=--vit-method, model=--mae-model)`` (default ``mae`` and
     ``--vit-model``; MAE on a ViT with a convolutional stem, such as ``vit_hybrid``, is refused
     up front: see :func:`mae_problem`; ``--vit-method contrastive`` pretrains it with SimCLR
     instead) and ``pretrain(method="contrastive", model=--cnn-model)``;
  2. rows, each trained for ``--budget`` seconds (``time_budget_s``), or with ``--row-steps N``
     for about N optimiser steps (whole epochs, no time budget: the learning-rate schedule then
     follows steps, so the machine's load cannot change it; ``patience=None``, the best
     validation epoch kept, seed ``--seed``; learning rate, augmentation and schedule: the model's
     training recipe unless ``--vit-lr``/``--cnn-lr``/``--*-train-kwargs``): ``densenet121``, the
     small ``densenet``, the ViT from scratch, the MAE ViT from scratch when ``--mae-model``
     differs, the MAE ViT fine-tuned from MAE (``init=``), the CNN fine-tuned from contrastive.
     For each: test AUC with a bootstrap percentile CI (images resampled), AUC per sex, wall time,
     epochs and steps, and the pointing game per sex with its random-map baseline from
     ``medgen.audit.explanations(clf, cohort, --mask-column, method=--explain-method,
     split="test")`` (default ``auto``: GradCAM / rollout; ``occlusion`` localises the demo's
     small lesions where GradCAM's 2x2 map at 64x64 cannot, docs/explanations.md);
  3. label efficiency: the ``train`` split subsampled by subject (stratified by the subject's
     label, seed ``--seed``) to each of ``--fractions``, pretrained vs from scratch for each of
     ``--pairs`` (``vit``: --mae-model scratch vs MAE; ``cnn``: --cnn-model scratch vs contrastive); the
     100 % column reuses the rows of step 2. The validation and test splits are never subsampled,
     and the pretraining saw all training images (labels ignored);
  4. peak memory and images/s of ``train(cache="disk")`` on 2,000 vs 20,000 images: measured by
     ``benchmarks/classify_memory.py`` (disk-cache warm runs, in subprocesses) with ``--memory``,
     otherwise a pointer row to that script;
  5. the targets table (measured, threshold, met).

CSVs under ``--out``: ``suite_rows.csv``, ``suite_pointing.csv`` (every group and metric of each
row's explanation audit), ``suite_pretrain.csv``, ``suite_label_efficiency.csv``,
``suite_memory.csv`` (with ``--memory``) and ``suite_targets.csv``; each written as soon as its rows
exist, so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


def _bare_loop(
    net: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    batch: int,
    channels_last: bool,
) -> float:
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    net.train()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    t = time.perf_counter()
    for s in range(steps):
        idx = perm[(s * batch) % len(x) : (s * batch) % len(x) + batch]
        xb = x[idx]
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xb), y[idx])
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def throughput(model: str, *, steps: int, batch: int, size: int, repeats: int) -> dict[str, float]:
    from medgen.classify._registry import build_model, get_model_spec
    from medgen.classify._train import TrainConfig, fit_tensors

    n = steps * batch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, size, size, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    xv, yv = x[:batch], y[:batch]
    cl = get_model_spec(model).channels_last
    bare, ours, loop = [], [], []
    for _ in range(repeats):
        torch.manual_seed(0)
        net = build_model(
            model, spatial_dims=2, in_channels=1, num_classes=2, image_size=(size, size)
        )
        if cl:
            net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        bare.append(_bare_loop(net, x, y, steps=steps, batch=batch, channels_last=cl))
        cfg = TrainConfig(
            model=model,
            classes=[0, 1],
            image_size=[size, size],
            epochs=1,
            batch_size=batch,
            augment="none",
            calibrate=False,
            patience=None,
            seed=0,
        )
        t = time.perf_counter()
        res = fit_tensors(x, y, xv, yv, cfg=cfg, progress=False)
        ours.append(time.perf_counter() - t)
        loop.append(float(res.history["seconds"].iloc[0]))  # the epoch: steps + validation
    b, o, ep = min(bare), min(ours), min(loop)
    return {
        "bare_img_s": n / b,
        "medgen_img_s": n / o,
        "overhead": o / b - 1,
        "epoch_img_s": n / ep,
        "epoch_overhead": ep / b - 1,
    }


def quality(
    model: str, manifest: Path, *, budget: float, epochs: int, batch: int, seed: int
) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    from medgen.classify import train
    from medgen.cohort import Cohort

    co = Cohort.from_manifest(manifest)
    t = time.perf_counter()
    clf = train(
        co,
        model=model,
        epochs=epochs,
        batch_size=batch,
        lr=1e-3 if model != "vit" else 3e-4,
        time_budget_s=budget,
        patience=None,
        seed=seed,
        progress=False,
    )
    wall = time.perf_counter() - t
    preds = clf.predict(co, split="test", progress=False)
    out = {
        "test_auc": roc_auc_score(preds["y_true"], preds["y_score"]),
        "train_wall_s": wall,
        "epochs": len(clf.history),
        "best_val_auc": clf.metrics["best_val_auc"],
        "ece_before": clf.metrics["ece_before"],
        "ece_after": clf.metrics["ece_after"],
    }
    for sex, part in preds.groupby("sex"):
        out[f"auc_{sex}"] = roc_auc_score(part["y_true"], part["y_score"])
    return out


# ---------------------------------------------------------------------------------------------
# the extended suite (issue 17)

#: fixed costs per step of the suite (seconds, demo cohort, 1 thread), for the wall-time estimate:
#: simulating the demo cohort (docs/simulate.md), per training (loading 1,400 images, the cut
#: epoch's validation, calibration, prediction of the 600 test images, bootstrap; measured 13-21 s
#: with a 2 s budget on the loaded 2-core VM), per explanation audit (8-15 s), per pretraining
#: (loading and writing the run), and the memory benchmark of 2,000 + 20,000 images (a guess).
OVERHEAD_S = {"simulate": 130.0, "train": 20.0, "explain": 15.0, "pretrain": 10.0, "memory": 240.0}
#: the training options recorded per row (``Classifier.config``), where this medgen has them
RECIPE_KEYS = ("augment", "weight_decay", "lr_schedule", "warmup_fraction", "label_smoothing")
METHOD_LABEL = {"mae": "MAE", "contrastive": "contrastive"}
TARGETS = {
    "memory": 1.2,
    "vit_scratch": 0.85,
    "vit_pretrained": 0.90,
    "vit_vs_densenet121": 0.03,
    "label_gain_10": 0.05,
}


@dataclass
class Row:
    """One training of the suite: a registry model, from scratch or from a pretraining run."""

    name: str
    model: str
    init: str | None = None  # "mae" / "contrastive": fine-tuned from that pretraining run
    fraction: float = 1.0  # share of the training subjects whose labels are used


def suite_rows(args: argparse.Namespace) -> list[Row]:
    """The main rows (100 % of the labels): baseline CNNs, the ViT pair and the CNN pair; none
    with ``--label-only``."""
    if args.label_only:  # only the label-efficiency rows below 100 %
        return []
    if args.vit_only:  # a seed check of the ViT pair
        mae = mae_model(args)
        return [
            Row(f"{mae} (scratch)", mae),
            Row(f"{mae} + {METHOD_LABEL[args.vit_method]}", mae, args.vit_method),
        ]
    rows = [Row(m, m) for m in args.baselines.split(",") if m]
    if args.cnn_model not in {r.model for r in rows}:
        rows.append(Row(args.cnn_model, args.cnn_model))
    rows.append(Row(f"{args.vit_model} (scratch)", args.vit_model))
    mae = mae_model(args)
    if mae != args.vit_model:  # the MAE pair needs its own from-scratch row
        rows.append(Row(f"{mae} (scratch)", mae))
    vm = args.vit_method
    rows.append(Row(f"{mae} + {METHOD_LABEL[vm]}", mae, vm))
    rows.append(
        Row(f"{args.cnn_model} + {METHOD_LABEL['contrastive']}", args.cnn_model, "contrastive")
    )
    return rows


def pretrain_plan(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The (method, model) pretrainings the rows need, once each (a ViT and a CNN may share one):
    the ViT's, and the CNN's unless ``--vit-only``; with ``--label-only`` those of ``--pairs``."""
    plan = [(args.vit_method, mae_model(args))]
    if not args.vit_only:  # the seed check trains no CNN pair
        plan.append(("contrastive", args.cnn_model))
    if args.label_only:
        plan = [k for k in plan if (k[1], k[0]) in _pair_keys(args)]
    return list(dict.fromkeys(plan))


def mae_model(args: argparse.Namespace) -> str:
    """The ViT that MAE pretrains and fine-tunes: ``--mae-model``, else ``--vit-model``."""
    return str(args.mae_model or args.vit_model)


def label_rows(args: argparse.Namespace) -> list[Row]:
    """The label-efficiency rows below 100 %: for each pair and fraction, scratch then pretrained."""
    pairs = {
        "vit": (mae_model(args), args.vit_method),
        "cnn": (args.cnn_model, "contrastive"),
    }
    out = []
    for pair in _csv(args.pairs):
        if pair not in pairs:
            raise SystemExit(f"--pairs: unknown pair {pair!r}; use a subset of 'vit,cnn'")
        model, method = pairs[pair]
        for f in _fractions(args.fractions):
            if f < 1.0:
                if not args.skip_scratch:
                    out.append(Row(f"{model} (scratch) {f:.0%}", model, None, f))
                out.append(Row(f"{model} + {METHOD_LABEL[method]} {f:.0%}", model, method, f))
    return out


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _fractions(text: str) -> list[float]:
    fr = [float(t) for t in _csv(text)]
    bad = [f for f in fr if not 0.0 < f <= 1.0]
    if bad:
        raise SystemExit(f"--fractions must be in (0, 1], e.g. 0.1,0.25,1; not {bad}")
    return fr


#: seconds per optimiser step for the wall-time estimate of a step budget (``--row-steps``):
#: ``vit_hybrid`` at batch 16 on one loaded thread (1,656 steps in 630 s), the slowest row but
#: DenseNet121; the small DenseNet is about 10x faster, so this over-estimates most suites.
SECONDS_PER_STEP = 0.4
#: the same for a pretraining step (``--pretrain-steps``; contrastive ``vit_hybrid``, batch 32,
#: two views: 580 steps in 607 s on one loaded thread)
SECONDS_PER_PRETRAIN_STEP = 1.05


def epochs_for_steps(n_images: int, batch: int, steps: int | None, otherwise: int) -> int:
    """The fewest whole epochs of ``ceil(n_images / batch)`` steps that reach ``steps``;
    ``otherwise`` (the ``--epochs`` cap of a time budget) when no step budget is given."""
    if not steps:
        return int(otherwise)
    per_epoch = max(1, math.ceil(n_images / batch))
    return max(1, math.ceil(steps / per_epoch))


def row_epochs(n_train: int, args: argparse.Namespace) -> int:
    """Epochs of a row: ``--epochs`` under a time budget; under ``--row-steps N`` enough whole
    epochs of ``--batch`` for N steps, so every row (100 % or 10 % of the labels) trains about
    the same number of optimiser steps."""
    return epochs_for_steps(n_train, args.batch, args.row_steps, args.epochs)


def pretrain_epochs(n_images: int, args: argparse.Namespace) -> int:
    """Epochs of a pretraining: ``--epochs`` under ``--pretrain-budget`` seconds; under
    ``--pretrain-steps N`` enough whole epochs of ``--pretrain-batch`` for N steps."""
    return epochs_for_steps(n_images, args.pretrain_batch, args.pretrain_steps, args.epochs)


def pretrain_budget_text(args: argparse.Namespace) -> str:
    """How each pretraining is bounded, for the printed headers."""
    if args.pretrain_steps:
        return f"{args.pretrain_steps} steps"
    return f"{args.pretrain_budget:.0f} s"


def row_budget_text(args: argparse.Namespace) -> str:
    """How each row's training is bounded, for the printed headers."""
    if args.row_steps:
        return f"{args.row_steps} optimiser steps (no time budget)"
    return f"{args.budget:.0f} s"


def estimate_wall_s(args: argparse.Namespace) -> dict[str, float]:
    """The suite's expected wall time: budgets plus the fixed costs of :data:`OVERHEAD_S`
    (a step budget counts :data:`SECONDS_PER_STEP` per step)."""
    n_main, n_label = len(suite_rows(args)), len(label_rows(args))
    n_train = n_main + n_label
    per_row = args.row_steps * SECONDS_PER_STEP if args.row_steps else args.budget
    per_pretrain = (
        args.pretrain_steps * SECONDS_PER_PRETRAIN_STEP
        if args.pretrain_steps
        else args.pretrain_budget
    )
    parts = {
        "simulate": OVERHEAD_S["simulate"] if args.cohort is None else 0.0,
        "pretrain": len(pretrain_plan(args)) * (per_pretrain + OVERHEAD_S["pretrain"]),
        "train": n_train * (per_row + OVERHEAD_S["train"]),
        "explain": n_main * OVERHEAD_S["explain"],
        "memory": OVERHEAD_S["memory"] if args.memory else 0.0,
    }
    parts["total"] = sum(parts.values())
    parts["n_train"] = n_train
    return parts


def subsample_train(cohort: Any, fraction: float, *, seed: int) -> Any:
    """The cohort with only ``fraction`` of its training subjects (stratified by the subject's
    label, at least one subject per label); validation and test rows are kept whole."""
    import numpy as np

    if fraction >= 1.0:
        return cohort
    df = cohort.df
    train = df[df["split"] == "train"]
    subj = train.groupby("subject_id")["label"].max()
    rng = np.random.default_rng(seed)
    keep: list[str] = []
    for _, ids in subj.groupby(subj):
        ids_sorted = sorted(ids.index.astype(str))
        k = max(1, round(fraction * len(ids_sorted)))
        keep += list(rng.choice(ids_sorted, size=k, replace=False))
    others = df.loc[df["split"] != "train", "subject_id"].astype(str).unique().tolist()
    return cohort.select(subject_id=keep + others)


def auc_ci(
    y_true: Any, y_score: Any, *, n_boot: int, ci: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """ROC AUC with a percentile bootstrap CI (images resampled with replacement)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    y, s = np.asarray(y_true), np.asarray(y_score)
    auc = float(roc_auc_score(y, s))
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        i = rng.integers(0, len(y), len(y))
        if y[i].min() != y[i].max():
            reps.append(roc_auc_score(y[i], s[i]))
    if not reps:
        return auc, float("nan"), float("nan")
    lo, hi = np.quantile(reps, [(1 - ci) / 2, (1 + ci) / 2])
    return auc, float(lo), float(hi)


def fit_row(
    row: Row, cohort: Any, args: argparse.Namespace, inits: dict[tuple[str, str], Path]
) -> tuple[dict[str, Any], Any]:
    """Train one row for ``--budget`` seconds (or ``--row-steps`` steps) and score it on the
    test split."""
    from sklearn.metrics import roc_auc_score

    from medgen.classify import get_model_spec, train

    vit = get_model_spec(row.model).family == "vit"
    kwargs: dict[str, Any] = {}
    lr = args.vit_lr if vit else args.cnn_lr
    if lr is not None:
        kwargs["lr"] = lr
    elif inspect.signature(train).parameters["lr"].default is not None:
        kwargs["lr"] = 3e-4 if vit else 1e-3  # a medgen without per-model recipes
    kwargs.update(json.loads(args.vit_train_kwargs if vit else args.cnn_train_kwargs))
    co = subsample_train(cohort, row.fraction, seed=args.seed)
    n_train = int((co.df["split"] == "train").sum())
    t = time.perf_counter()
    clf = train(
        co,
        model=row.model,
        image_size=(args.image_size, args.image_size),
        epochs=row_epochs(n_train, args),
        batch_size=args.batch,
        time_budget_s=None if args.row_steps else args.budget,
        patience=None,
        seed=args.seed,
        progress=False,
        device="cpu",
        init=inits[(row.init, row.model)] if row.init else None,
        **kwargs,
    )
    wall = time.perf_counter() - t
    preds = clf.predict(co, split="test", progress=False)
    auc, lo, hi = auc_ci(preds["y_true"], preds["y_score"], n_boot=args.n_boot, seed=args.seed)
    h = clf.history
    out: dict[str, Any] = {
        "row": row.name,
        "model": row.model,
        "init": row.init or "scratch",
        "label_fraction": row.fraction,
        "n_train": clf.metrics["n_train"],
        "budget_s": None if args.row_steps else args.budget,
        "row_steps": args.row_steps,
        "test_auc": auc,
        "auc_low": lo,
        "auc_high": hi,
        "train_wall_s": wall,
        "epochs": len(h),
        # upper bound: the last epoch may have been cut by the budget
        "steps": int(sum(math.ceil(n / args.batch) for n in h["n_train_seen"])),
        "best_epoch": clf.metrics["best_epoch"],
        "best_val_auc": clf.metrics["best_val_auc"],
        "lr": clf.config.get("lr"),  # as resolved by train (the model's recipe unless given)
        "recipe": json.dumps(
            {k: clf.config[k] for k in RECIPE_KEYS if k in clf.config}, default=str
        ),
    }
    for sex, part in preds.groupby("sex"):
        ok = part["y_true"].nunique() == 2
        out[f"auc_{sex}"] = roc_auc_score(part["y_true"], part["y_score"]) if ok else math.nan
    return out, clf


def pointing(clf: Any, cohort: Any, args: argparse.Namespace) -> tuple[dict[str, float], Any]:
    """Pointing game per sex (and its random-map baseline) on the test split's lesion images."""
    import warnings

    from medgen.audit import explanations
    from medgen.errors import MetricWarning

    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)  # small groups: the tiny preset's
        res = explanations(
            clf,
            cohort,
            args.mask_column,
            method=args.explain_method,
            by=("sex",),
            split="test",
            n_boot=args.n_boot,
            seed=args.seed,
        )
    bg = res.by_group
    out: dict[str, float] = {
        "explain_method": res.provenance.get("method", "auto"),
        "explain_s": time.perf_counter() - t,
    }
    for (attr, group), sub in bg.groupby(level=["attribute", "group"], sort=False):
        s = sub.droplevel(["attribute", "group"])
        key = "all" if attr == "overall" else str(group)
        out[f"pointing_{key}"] = float(s.loc["pointing", "value"])
        out[f"pointing_{key}_low"] = float(s.loc["pointing", "low"])
        out[f"pointing_{key}_high"] = float(s.loc["pointing", "high"])
        out[f"pointing_random_{key}"] = float(s.loc["pointing_random", "value"])
        out[f"flat_map_{key}"] = float(s.loc["flat_map", "value"])
        out[f"n_lesion_{key}"] = int(s.loc["pointing", "n"])
    return out, bg


def run_memory(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Peak memory and images/s of ``train(cache="disk")`` (warm cache) on the two
    ``--memory-sizes``, via ``benchmarks/classify_memory.py``'s cohort writer and subprocess."""
    import shutil

    import classify_memory  # the sibling script (benchmarks/ is on sys.path when run as a script)

    work = out / "memory"
    res: dict[str, Any] = {}
    for n in args.memory_sizes:
        manifest = work / f"n{n}" / "manifest.csv"
        if not manifest.is_file():
            manifest = classify_memory.write_cohort(work / f"n{n}", n, n_val=200)
        cache = work / f"cache{n}"
        shutil.rmtree(cache, ignore_errors=True)
        kw = {"steps": args.memory_steps, "batch": 32, "workers": 0}
        classify_memory.measure(manifest, "disk", cache, **kw)  # cold: fills the cache
        r = classify_memory.measure(manifest, "disk", cache, **kw)
        res[n] = r
        print(
            f"  memory N={n}: peak {r['peak_kib'] / 1024:.0f} MiB, {r['images_per_s']:.0f} img/s",
            flush=True,
        )
    shutil.rmtree(work, ignore_errors=True)
    small, big = args.memory_sizes
    return {
        "sizes": (small, big),
        "peak_mib": (res[small]["peak_kib"] / 1024, res[big]["peak_kib"] / 1024),
        "images_per_s": (res[small]["images_per_s"], res[big]["images_per_s"]),
        "ratio": res[big]["peak_kib"] / res[small]["peak_kib"],
    }


def mae_problem(model: str, image_size: int) -> str | None:
    """Why ``pretrain(method="mae", model=model)`` cannot pretrain this network as built for
    ``image_size`` (1 channel), or ``None``. ``pretrain`` builds the MAE on the input pixels with
    the patch size of the ViT inside the network; a ViT on a convolutional stem (``vit_hybrid``:
    patch 1 on the stem's feature map) would become an MAE over every pixel (4,096 tokens at
    64x64, tens of GB of attention), so the suite refuses it up front instead of running out of
    memory."""
    from monai.networks.nets import ViT

    from medgen.classify import build_model

    net = build_model(
        model, spatial_dims=2, in_channels=1, num_classes=2, image_size=(image_size, image_size)
    )
    vits = [m for m in net.modules() if isinstance(m, ViT)]
    if not vits:
        return f"model {model!r} holds no MONAI ViT"
    conv = vits[0].patch_embedding.patch_embeddings
    if int(getattr(conv, "in_channels", 1)) != 1:
        return (
            f"model {model!r}: its ViT reads a {conv.in_channels}-channel feature map (a convolutional "
            "stem), not the image; pretrain(method='mae') masks image patches of the ViT's patch "
            f"size {tuple(conv.kernel_size)} and does not support a stem yet"
        )
    return None


def _write(df: Any, path: Path) -> None:
    tmp = path.with_suffix(".csv.tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)


def _fmt(x: Any, spec: str = ".3f") -> str:
    try:
        return "n/a" if x is None or x != x else format(x, spec)
    except (TypeError, ValueError):
        return str(x)


def run_suite(args: argparse.Namespace) -> None:
    """Issue 17's extended benchmark (``--suite``): see the module docstring."""
    import pandas as pd

    from medgen.classify import pretrain
    from medgen.cohort import Cohort

    est = estimate_wall_s(args)
    main_rows, extra_rows = suite_rows(args), label_rows(args)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), one process, "
        f"{args.image_size}x{args.image_size}, batch {args.batch}, seed {args.seed}"
    )
    print(
        f"CPU budget: {row_budget_text(args)} of training per row ({est['n_train']:.0f} trainings: "
        f"{len(main_rows)} rows + {len(extra_rows)} label-efficiency), "
        f"{pretrain_budget_text(args)} per pretraining ({METHOD_LABEL[args.vit_method]} "
        f"{mae_model(args)}"
        + ("" if args.vit_only else f", contrastive {args.cnn_model}")
        + f"), each on {args.threads} thread(s)"
    )
    print(
        "estimated wall time on the demo cohort (budgets + fixed costs, OVERHEAD_S): "
        + ", ".join(f"{k} {v / 60:.1f}" for k, v in est.items() if k not in {"n_train"})
        + " min"
    )
    if args.plan:
        return
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    manifest = args.cohort
    if manifest is None:
        from medgen.simulate import preset, simulate

        t = time.perf_counter()
        manifest = simulate(preset(args.preset), out / "cohort", seed=0, progress=False)
        print(
            f"simulated the {args.preset} cohort in {time.perf_counter() - t:.0f} s: {manifest} "
            "(pass it as --cohort to reuse)",
            flush=True,
        )
    co = Cohort.from_manifest(manifest)
    print(f"cohort: {co.splits}", flush=True)

    print("\n## pretraining on the train split's images (labels ignored)")
    inits: dict[tuple[str, str], Path] = {}
    pre_rows = []
    earlier = _earlier_pretraining(out) if args.reuse_pretrain else {}
    for method, model in pretrain_plan(args):
        if (method, model) in earlier:
            inits[(method, model)] = out / f"pretrain_{method}_{model}"
            pre_rows.append({**earlier[(method, model)], "reused": True})
            print(f"{method:<12} {model:<12} reused from {inits[(method, model)]}", flush=True)
            continue
        t = time.perf_counter()
        why = mae_problem(model, args.image_size) if method == "mae" else None
        if why is not None:
            print(f"{method:<12} {model:<12} SKIPPED: {why}", flush=True)
            continue
        try:
            res = pretrain(
                co,
                method=method,
                model=model,
                out_dir=out / f"pretrain_{method}_{model}",
                overwrite=True,
                image_size=(args.image_size, args.image_size),
                epochs=pretrain_epochs(int((co.df["split"] == "train").sum()), args),
                batch_size=args.pretrain_batch,
                time_budget_s=None if args.pretrain_steps else args.pretrain_budget,
                seed=args.seed,
                device="cpu",
                progress=False,
            )
        except Exception as err:  # report it and go on with the other rows
            print(f"{method:<12} {model:<12} FAILED: {type(err).__name__}: {err}", flush=True)
            continue
        inits[(method, model)] = out / f"pretrain_{method}_{model}"
        m = res.metrics
        steps = int(res.history["steps"].sum()) if res.history is not None else 0
        pre_rows.append(
            {
                "method": method,
                "model": model,
                "budget_s": None if args.pretrain_steps else args.pretrain_budget,
                "pretrain_steps": args.pretrain_steps,
                "n_images": m["n_images"],
                "epochs": m["epochs_run"],
                "steps": steps,
                "first_loss": m["first_epoch_loss"],
                "last_loss": m["last_epoch_loss"],
                "wall_s": time.perf_counter() - t,
            }
        )
        r = pre_rows[-1]
        print(
            f"{method:<12} {model:<12} {r['n_images']} images, {r['epochs']} epochs, "
            f"{steps} steps, loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}, "
            f"{r['wall_s']:.0f} s",
            flush=True,
        )
    _write(pd.DataFrame(pre_rows), out / "suite_pretrain.csv")

    print(
        f"\n## rows: {row_budget_text(args)} of training each, test AUC [95 % bootstrap CI], "
        "pointing game on the test lesion images (random-map baseline)"
    )
    head = (
        f"{'row':<26} {'test AUC':>8} {'95% CI':>13} {'AUC F':>6} {'AUC M':>6} {'ep':>4} "
        f"{'steps':>6} {'train s':>7} {'expl':>8} {'point F':>7} {'point M':>7} {'rand F':>6} "
        f"{'rand M':>6}"
    )
    print(head)
    print("-" * len(head))
    results: list[dict[str, Any]] = []
    point_tables = []
    for row in main_rows:
        if not _runnable(row, inits):
            continue
        try:
            r, clf = fit_row(row, co, args, inits)
        except Exception as err:  # report it and go on with the other rows
            print(f"{row.name:<26} FAILED: {type(err).__name__}: {err}", flush=True)
            continue
        try:
            p, bg = pointing(clf, co, args)
            point_tables.append(bg.reset_index().assign(row=row.name))
            r.update(p)
        except Exception as err:  # the row stands without its pointing game
            r["explain_method"] = f"failed: {type(err).__name__}: {err}"
        results.append(r)
        print(
            f"{row.name:<26} {r['test_auc']:>8.3f} "
            f"{'[' + _fmt(r['auc_low']) + ', ' + _fmt(r['auc_high']) + ']':>13} "
            f"{_fmt(r.get('auc_F')):>6} {_fmt(r.get('auc_M')):>6} {r['epochs']:>4} "
            f"{r['steps']:>6} {r['train_wall_s']:>7.0f} {str(r['explain_method'])[:8]:>8} "
            f"{_fmt(r.get('pointing_F')):>7} {_fmt(r.get('pointing_M')):>7} "
            f"{_fmt(r.get('pointing_random_F')):>6} {_fmt(r.get('pointing_random_M')):>6}",
            flush=True,
        )
        _write(pd.DataFrame(results), out / "suite_rows.csv")
        if point_tables:
            _write(pd.concat(point_tables, ignore_index=True), out / "suite_pointing.csv")

    by_key = {(r["model"], r["init"]): r for r in results}
    keys = _pair_keys(args)
    label = [{**r, "pair": r["model"]} for r in results if (r["model"], r["init"]) in keys]
    if extra_rows:
        print(
            f"\n## label efficiency: {row_budget_text(args)} of training each, train split subsampled "
            f"by subject (seed {args.seed}); pretraining saw all training images"
        )
    for row in extra_rows:
        if not _runnable(row, inits):
            continue
        try:
            r, _ = fit_row(row, co, args, inits)
        except Exception as err:  # report it and go on with the other rows
            print(f"{row.name:<30} FAILED: {type(err).__name__}: {err}", flush=True)
            continue
        label.append({**r, "pair": r["model"]})
        print(
            f"{row.name:<30} n_train {r['n_train']:>5} test AUC {r['test_auc']:.3f} "
            f"[{_fmt(r['auc_low'])}, {_fmt(r['auc_high'])}] {r['epochs']} ep "
            f"{r['train_wall_s']:.0f} s",
            flush=True,
        )
        _write(pd.DataFrame(label), out / "suite_label_efficiency.csv")
    gains = _label_table(label, args)

    memory = None
    if args.memory:
        print(f"\n## memory: train(cache='disk') on {args.memory_sizes} images (classify_memory)")
        memory = run_memory(args, out)
        _write(
            pd.DataFrame(
                {
                    "n_images": memory["sizes"],
                    "peak_mib": memory["peak_mib"],
                    "images_per_s": memory["images_per_s"],
                }
            ),
            out / "suite_memory.csv",
        )
    _targets(by_key, gains, memory, args, out)
    print(f"\nsuite wall time {(time.perf_counter() - t_all) / 60:.1f} min; CSVs in {out}")


def _earlier_pretraining(out: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """``--reuse-pretrain``: the finished pretraining runs of an earlier suite run in ``out``
    (a ``run_complete.json`` and a row of ``suite_pretrain.csv``), by (method, model)."""
    import pandas as pd

    table = out / "suite_pretrain.csv"
    if not table.is_file():
        return {}
    found = {}
    for row in pd.read_csv(table).to_dict("records"):
        key = (str(row["method"]), str(row["model"]))
        if (out / f"pretrain_{key[0]}_{key[1]}" / "run_complete.json").is_file():
            found[key] = {k: v for k, v in row.items() if k != "reused"}
    return found


def _runnable(row: Row, inits: dict[tuple[str, str], Path]) -> bool:
    if row.init is None or (row.init, row.model) in inits:
        return True
    print(
        f"{row.name:<26} skipped: no {row.init} pretraining (skipped or failed above)", flush=True
    )
    return False


def _pair_keys(args: argparse.Namespace) -> set[tuple[str, str]]:
    keys = set()
    for pair in _csv(args.pairs):
        model, method = (
            (mae_model(args), args.vit_method) if pair == "vit" else (args.cnn_model, "contrastive")
        )
        keys |= {(model, "scratch"), (model, method)}
    return keys


def _label_table(label: list[dict[str, Any]], args: argparse.Namespace) -> dict[tuple, float]:
    """Print AUC per fraction, scratch vs pretrained, per pair; return the gains."""
    import pandas as pd

    if not label:
        return {}
    df = pd.DataFrame(label)
    fr = sorted(df["label_fraction"].unique())
    print("\n## label efficiency: test AUC by share of training labels")
    print(f"{'model':<14} {'init':<12} " + " ".join(f"{f:>7.0%}" for f in fr))
    gains: dict[tuple, float] = {}
    for model, sub in df.groupby("model", sort=False):
        table = sub.pivot_table(index="init", columns="label_fraction", values="test_auc")
        for init in table.index:
            cells = " ".join(f"{_fmt(table.loc[init].get(f)):>7}" for f in fr)
            print(f"{model:<14} {init:<12} {cells}")
        pre = [i for i in table.index if i != "scratch"]
        if pre and "scratch" in table.index:
            gain = table.loc[pre[0]] - table.loc["scratch"]
            print(f"{model:<14} {'gain':<12} " + " ".join(f"{_fmt(gain.get(f)):>7}" for f in fr))
            for f in fr:
                gains[(model, pre[0], float(f))] = float(gain.get(f, float("nan")))
    return gains


def _targets(
    by_key: dict[tuple[str, str], dict[str, Any]],
    gains: dict[tuple, float],
    memory: dict[str, Any] | None,
    args: argparse.Namespace,
    out: Path,
) -> None:
    """Print and write issue 17's targets: measured value, threshold, met."""
    import pandas as pd

    nan = float("nan")

    def auc(model: str, init: str) -> float:
        return float(by_key.get((model, init), {}).get("test_auc", nan))

    vit_s, vit_p = auc(args.vit_model, "scratch"), auc(mae_model(args), args.vit_method)
    dn121 = auc("densenet121", "scratch")
    rows = []
    if memory is not None:
        small, big = memory["sizes"]
        rows.append(
            (
                f"peak memory {big} / {small} images (disk cache, warm)",
                memory["ratio"],
                "<= 1.2",
                memory["ratio"] <= TARGETS["memory"],
            )
        )
        ips = memory["images_per_s"]
        rows.append((f"training images/s {big} / {small} (no target)", ips[1] / ips[0], "-", "-"))
    else:
        rows.append(
            (
                "peak memory 20,000 / 2,000 images (disk cache)",
                nan,
                "<= 1.2",
                "not run: --memory, or python benchmarks/classify_memory.py",
            )
        )
    rows.append(
        (
            f"{args.vit_model} from scratch: test AUC",
            vit_s,
            ">= 0.85",
            vit_s >= TARGETS["vit_scratch"],
        )
    )
    rows.append(
        (
            f"{mae_model(args)} + {METHOD_LABEL[args.vit_method]}: test AUC",
            vit_p,
            ">= 0.90",
            vit_p >= TARGETS["vit_pretrained"],
        )
    )
    rows.append(
        (
            f"densenet121 - (ViT + {METHOD_LABEL[args.vit_method]}) test AUC",
            dn121 - vit_p,
            "<= 0.03",
            dn121 - vit_p <= TARGETS["vit_vs_densenet121"],
        )
    )
    low = min((f for (_, _, f) in gains), default=None)
    for (model, init, f), g in gains.items():
        if f == low and f < 1.0:
            rows.append(
                (
                    f"{f:.0%} labels: {model} {init} - scratch AUC",
                    g,
                    ">= 0.05",
                    g >= TARGETS["label_gain_10"],
                )
            )
    print("\n## targets (issue 17)")
    print(f"{'target':<48} {'measured':>9} {'threshold':>10}  met")
    table = []
    for name, value, thr, met in rows:
        if isinstance(met, str):
            shown = met
        else:
            shown = "n/a (not run)" if value != value else ("yes" if met else "no")
        print(f"{name:<48} {_fmt(value):>9} {thr:>10}  {shown}")
        table.append({"target": name, "measured": value, "threshold": thr, "met": shown})
    _write(pd.DataFrame(table), out / "suite_targets.csv")


def build_parser() -> argparse.ArgumentParser:
    """The command-line options of every mode."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cohort", type=Path, default=None, help="demo manifest (simulated if absent)")
    ap.add_argument("--budget", type=float, default=240.0, help="training seconds per model")
    ap.add_argument(
        "--epochs", type=int, default=None, help="max epochs (default 30; --suite: the budget)"
    )
    ap.add_argument(
        "--steps", type=int, default=88, help="steps per throughput run (88 = one demo epoch)"
    )
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--models", default="densenet121,vit,densenet")
    ap.add_argument("--skip-auc", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    su = ap.add_argument_group("extended suite (--suite)")
    su.add_argument("--suite", action="store_true", help="run issue 17's extended benchmark")
    su.add_argument("--plan", action="store_true", help="print the suite's plan and estimate only")
    su.add_argument("--out", type=Path, default=Path("bench_classify_suite"), help="CSV folder")
    su.add_argument("--preset", default="demo", help="simulator preset when --cohort is absent")
    su.add_argument("--image-size", type=int, default=64)
    su.add_argument("--batch", type=int, default=16, help="training batch size")
    su.add_argument("--seed", type=int, default=0)
    su.add_argument(
        "--row-steps",
        type=int,
        default=None,
        help="train every row for about this many optimiser steps instead of --budget seconds "
        "(whole epochs; the learning-rate schedule then follows steps, not the machine's load)",
    )
    su.add_argument("--pretrain-budget", type=float, default=240.0, help="seconds per pretraining")
    su.add_argument(
        "--pretrain-steps",
        type=int,
        default=None,
        help="pretrain for about this many steps instead of --pretrain-budget seconds (whole "
        "epochs of the train split; every pretraining of the suite)",
    )
    su.add_argument("--pretrain-batch", type=int, default=32)
    su.add_argument(
        "--reuse-pretrain",
        action="store_true",
        help="reuse finished pretraining runs of an earlier suite run in --out",
    )
    su.add_argument("--baselines", default="densenet121,densenet", help="CNNs from scratch")
    su.add_argument("--vit-model", default="vit", help="ViT from scratch (and MAE's default)")
    su.add_argument(
        "--mae-model",
        default=None,
        help="ViT pretrained by --vit-method (default: --vit-model); "
        "when it differs, its own from-scratch row is added (the label-efficiency pair)",
    )
    su.add_argument(
        "--vit-method",
        choices=("mae", "contrastive"),
        default="mae",
        help="how the pretrained ViT row is pretrained (contrastive: e.g. vit_hybrid, which MAE "
        "refuses)",
    )
    su.add_argument("--cnn-model", default="densenet", help="CNN: after contrastive pretraining")
    su.add_argument("--vit-lr", type=float, default=None, help="default: the model's recipe")
    su.add_argument("--cnn-lr", type=float, default=None, help="default: the model's recipe")
    su.add_argument("--vit-train-kwargs", default="{}", help="JSON: more train() options, ViTs")
    su.add_argument("--cnn-train-kwargs", default="{}", help="JSON: more train() options, CNNs")
    su.add_argument("--pairs", default="vit,cnn", help="label-efficiency pairs: vit, cnn or both")
    su.add_argument(
        "--vit-only",
        action="store_true",
        help="only the ViT pair's rows (with --pairs vit: a quicker check of another --seed)",
    )
    su.add_argument(
        "--label-only",
        action="store_true",
        help="only the pretraining and the label-efficiency rows below 100 %% (no 100 %% rows: "
        "e.g. a longer --pretrain-steps checked where the gain target is measured)",
    )
    su.add_argument(
        "--skip-scratch",
        action="store_true",
        help="with --label-only: no from-scratch label rows (a seed's scratch row does not depend "
        "on the pretraining and gives the same AUC for the same seed and --row-steps; compare "
        "with an earlier run's)",
    )
    su.add_argument("--fractions", default="0.1,0.25,1", help="shares of the training labels")
    su.add_argument("--mask-column", default="mask_path")
    su.add_argument(
        "--explain-method",
        default="auto",
        choices=("auto", "gradcam", "rollout", "occlusion"),
        help="explanation method of the pointing game (auto: GradCAM for CNNs, rollout for ViTs)",
    )
    su.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (AUC, pointing)")
    su.add_argument("--memory", action="store_true", help="run classify_memory's disk-cache rows")
    su.add_argument("--memory-sizes", type=int, nargs=2, default=[2000, 20000])
    su.add_argument("--memory-steps", type=int, default=40)
    return ap


def main() -> None:
    """Parse the options and run the selected benchmarks."""
    args = build_parser().parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    if args.suite or args.plan:
        args.epochs = args.epochs or 10_000  # the suite's rows stop on their time budget
        if args.pretrain_steps is not None and args.pretrain_steps < 1:
            raise SystemExit(
                f"--pretrain-steps must be a positive number of steps, not {args.pretrain_steps}"
            )
        if args.row_steps is not None and args.row_steps < 1:
            raise SystemExit(
                f"--row-steps must be a positive number of steps, not {args.row_steps}"
            )
        run_suite(args)
        return
    models = args.models.split(",")
    print(f"torch {torch.__version__}, {args.threads} threads, 64x64, batch 16")
    if not args.skip_throughput:
        print("\n## training throughput vs a bare PyTorch loop (same net, tensors, optimiser)")
        print(
            "(medgen call = whole fit_tensors incl. model build; epoch = its training epoch incl. validation)"
        )
        print(
            f"{'model':<12} {'bare img/s':>11} {'call img/s':>11} {'ratio':>7} {'overhead':>9} "
            f"{'epoch img/s':>12} {'ratio':>7} {'overhead':>9}"
        )
        for m in models:
            r = throughput(m, steps=args.steps, batch=16, size=64, repeats=args.repeats)
            print(
                f"{m:<12} {r['bare_img_s']:>11.1f} {r['medgen_img_s']:>11.1f} "
                f"{r['medgen_img_s'] / r['bare_img_s']:>7.3f} {100 * r['overhead']:>8.1f}% "
                f"{r['epoch_img_s']:>12.1f} {r['epoch_img_s'] / r['bare_img_s']:>7.3f} "
                f"{100 * r['epoch_overhead']:>8.1f}%"
            )
    if not args.skip_auc:
        manifest = args.cohort
        if manifest is None:
            from medgen.simulate import preset, simulate

            t = time.perf_counter()
            manifest = simulate(
                preset("demo"),
                Path(tempfile.mkdtemp(prefix="medgen_bench_")),
                seed=0,
                progress=False,
            )
            print(f"\nsimulated the demo cohort in {time.perf_counter() - t:.0f} s")
        print(
            f"\n## test AUC on the demo cohort (label), training budget {args.budget:.0f} s, target AUC >= 0.90"
        )
        print(
            f"{'model':<12} {'test AUC':>9} {'/ 0.90':>7} {'AUC F':>7} {'AUC M':>7} {'epochs':>7} "
            f"{'train s':>8} {'ECE pre':>8} {'ECE post':>9}"
        )
        for m in models:
            r = quality(m, manifest, budget=args.budget, epochs=args.epochs or 30, batch=16, seed=0)
            print(
                f"{m:<12} {r['test_auc']:>9.3f} {r['test_auc'] / 0.9:>7.3f} {r.get('auc_F', float('nan')):>7.3f} "
                f"{r.get('auc_M', float('nan')):>7.3f} {r['epochs']:>7d} {r['train_wall_s']:>8.0f} "
                f"{r['ece_before']:>8.3f} {r['ece_after']:>9.3f}"
            )


if __name__ == "__main__":
    main()
