"""Benchmark streamed training (``train(cache="disk")``): peak memory and images/s against cohort size.

Issue 17's target: with ``cache="disk"`` the peak memory of training on 20,000 images is within
1.2x of that on 2,000 (memory bounded by the batches in flight, not the cohort), where the
in-memory path (``cache="memory"``, one ``NxCxXxY`` tensor) grows with the cohort.

Usage (full size; writes ~22,000 small NIfTI files, ~400 MB, into a temp dir)::

    python benchmarks/classify_memory.py                     # N = 2,000 and 20,000
    python benchmarks/classify_memory.py --sizes 1000 10000  # reduced
    python benchmarks/classify_memory.py --steps 50 --repeats 3 --workers 2 --keep DIR

The images: 64x64 axial slices of nilearn's bundled MNI152 template (2 mm, slices 30-69 resized
with area interpolation), each with its own intensity gain, bias field and Gaussian noise, and a
bright blob for ``label == 1`` (half the images): realistic anatomy and contrast, written in
seconds without running the simulator. One image per subject; ``--val`` images (default 200,
fixed so every run validates the same amount) form the ``val`` split, the rest ``train``.

Each measurement runs in its own subprocess (a process-lifetime peak per run): ``train`` of a
small DenseNet (init_features 16, growth 16, blocks 2-2) for one epoch of ``--steps`` steps of
``--batch`` images, no augmentation, no calibration, one thread. Reported per run: peak RSS
(MiB, ``VmHWM`` of ``/proc/self/status``; not ``getrusage``'s ``ru_maxrss``, which a child
inherits from the parent it was forked from; with ``--workers`` the largest worker's
``ru_maxrss`` is added, an upper bound as workers share pages with the parent), the RSS after
imports (the baseline), their difference (what the manifest, the data and training cost), and
training images/s (``steps x batch`` over the epoch's seconds, validation of the ``--val``
images included; the median of ``--repeats`` runs, the peak their largest). Modes:
``disk (cold)`` fills an emptied disk cache, ``disk (warm)`` reads it (the runs after), run), ``memory`` is the in-memory tensor path for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(1)
import monai.data, monai.transforms  # imported by train anyway: part of the baseline
from medgen.classify import train
from medgen.cohort import Cohort

def status_kib(field):  # VmRSS now / VmHWM peak of this process's memory (reset by exec)
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))

manifest, mode, cache_dir, steps, batch, workers = sys.argv[1:7]
base = status_kib("VmRSS")
co = Cohort.from_manifest(manifest, check_files=False)
t = time.perf_counter()
clf = train(co, model="densenet",
            model_kwargs={"init_features": 16, "growth_rate": 16, "block_config": (2, 2)},
            epochs=1, steps_per_epoch=int(steps), batch_size=int(batch), augment="none",
            patience=None, calibrate=False, seed=0, progress=False, device="cpu",
            cache=None if mode == "none" else mode,
            cache_dir=cache_dir if mode == "disk" else None, num_workers=int(workers))
wall = time.perf_counter() - t
h = clf.history.iloc[0]
print(json.dumps({
    "peak_kib": status_kib("VmHWM"),
    "children_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    "base_kib": base,
    "images_per_s": float(h["n_train_seen"]) / float(h["seconds"]),
    "wall_s": wall,
    "n_train": clf.metrics["n_train"],
}))
"""


def write_cohort(folder: Path, n: int, *, n_val: int, seed: int = 0) -> Path:
    """Write ``n`` 64x64 NIfTI slices and their manifest into ``folder``; return the manifest."""
    import nibabel as nib
    import numpy as np
    import pandas as pd
    import torch
    from nilearn.datasets import load_mni152_template

    from medgen.transforms import resize

    vol = np.asarray(load_mni152_template(resolution=2).get_fdata(), dtype=np.float32)
    vol /= vol.max()
    slices = torch.as_tensor(np.stack([vol[:, :, z] for z in range(30, 70)]))[:, None]
    base = np.stack([np.asarray(resize(s, (64, 64)))[0] for s in slices])  # (40, 64, 64)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32) / 63.0
    (folder / "images").mkdir(parents=True, exist_ok=True)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    rows = []
    for i in range(n):
        label = int(i % 2)
        img = base[rng.integers(len(base))] * rng.uniform(0.7, 1.3)
        img = img * (1 + 0.2 * (rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy))
        if label:
            cx, cy = rng.uniform(0.3, 0.7, size=2)
            img = img + 0.5 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.004)
        img = img + rng.normal(0, 0.03, size=img.shape)
        name = f"images/img{i:06d}.nii"
        nib.save(nib.Nifti1Image(img.astype(np.float32), affine), folder / name)
        rows.append(
            {
                "image_id": f"img{i:06d}",
                "image_path": name,
                "subject_id": f"sub{i:06d}",
                "split": "val" if i < n_val else "train",
                "source": "real",
                "label": label,
            }
        )
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def measure(
    manifest: Path, mode: str, cache_dir: Path, *, steps: int, batch: int, workers: int
) -> dict[str, float]:
    """One ``train`` in a fresh subprocess; its peak RSS and training images/s."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": root}
    cmd = [sys.executable, "-c", CHILD, str(manifest), mode, str(cache_dir)]
    cmd += [str(steps), str(batch), str(workers)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"benchmark run failed ({mode}):\n{out.stderr[-4000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[2000, 20000], metavar=("SMALL", "BIG"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="warm and memory runs per size")
    ap.add_argument("--skip-memory", action="store_true", help="skip the in-memory comparison")
    ap.add_argument("--keep", type=Path, default=None, help="write the cohorts here and keep them")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory() if args.keep is None else None
    work = Path(tmp.name) if tmp is not None else args.keep
    results: dict[tuple[int, str], dict[str, float]] = {}
    try:
        for n in args.sizes:
            manifest = work / f"n{n}" / "manifest.csv"
            if not manifest.is_file():  # --keep: a cohort written before is reused
                t = time.perf_counter()
                manifest = write_cohort(work / f"n{n}", n, n_val=args.val)
                print(f"wrote {n} images in {time.perf_counter() - t:.1f} s", flush=True)
            cache = work / f"cache{n}"
            shutil.rmtree(cache, ignore_errors=True)
            modes = [("disk (cold)", "disk")] + [("disk (warm)", "disk")] * args.repeats
            if not args.skip_memory:
                modes += [("memory", "memory")] * args.repeats
            runs: dict[str, list[dict[str, float]]] = {}
            for label, mode in modes:
                r = measure(
                    manifest, mode, cache, steps=args.steps, batch=args.batch, workers=args.workers
                )
                runs.setdefault(label, []).append(r)
                print(f"  N={n} {label}: {json.dumps(r)}", flush=True)
            for label, rs in runs.items():
                results[(n, label)] = {
                    "peak_kib": max(
                        r["peak_kib"] + (r["children_kib"] if args.workers else 0) for r in rs
                    ),
                    "base_kib": min(r["base_kib"] for r in rs),
                    "images_per_s": statistics.median(r["images_per_s"] for r in rs),
                }
    finally:
        if tmp is not None:
            tmp.cleanup()

    small, big = args.sizes
    print()
    print(
        f"train(cache=...): {args.steps} steps x {args.batch} images (64x64), {args.val} val "
        f"images, workers={args.workers}, 1 thread; load average {os.getloadavg()[0]:.1f}"
    )
    head = f"{'mode':<12} {'N':>6} {'peak MiB':>9} {'base MiB':>9} {'data MiB':>9} {'img/s':>7}"
    print(head)
    print("-" * len(head))
    for (n, label), r in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        peak = r["peak_kib"] / 1024
        base = r["base_kib"] / 1024
        print(
            f"{label:<12} {n:>6} {peak:>9.0f} {base:>9.0f} {peak - base:>9.0f} "
            f"{r['images_per_s']:>7.0f}"
        )
    print()
    for label in dict.fromkeys(lab for _, lab in results):
        a, b = results.get((small, label)), results.get((big, label))
        if a and b:
            print(
                f"{label:<12} {big}/{small}: peak memory x{b['peak_kib'] / a['peak_kib']:.2f}, "
                f"images/s x{b['images_per_s'] / a['images_per_s']:.2f}"
            )


if __name__ == "__main__":
    main()
