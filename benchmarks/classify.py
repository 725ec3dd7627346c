"""Benchmark medgen.classify on CPU: training throughput against a bare PyTorch loop, and test AUC /
wall time of DenseNet121 and ViT on the demo cohort under a fixed training budget.

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
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cohort", type=Path, default=None, help="demo manifest (simulated if absent)")
    ap.add_argument("--budget", type=float, default=240.0, help="training seconds per model")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument(
        "--steps", type=int, default=88, help="steps per throughput run (88 = one demo epoch)"
    )
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--models", default="densenet121,vit,densenet")
    ap.add_argument("--skip-auc", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
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
            r = quality(m, manifest, budget=args.budget, epochs=args.epochs, batch=16, seed=0)
            print(
                f"{m:<12} {r['test_auc']:>9.3f} {r['test_auc'] / 0.9:>7.3f} {r.get('auc_F', float('nan')):>7.3f} "
                f"{r.get('auc_M', float('nan')):>7.3f} {r['epochs']:>7d} {r['train_wall_s']:>8.0f} "
                f"{r['ece_before']:>8.3f} {r['ece_after']:>9.3f}"
            )


if __name__ == "__main__":
    main()
