"""Benchmark: the 3D mode of conditional synthesis (``Synthesizer(spatial_dims=3)``), measured
without a quality target (issue 12).

Data: the ``demo3d`` simulator preset (200 subjects, seed 0) sampled at ``--spacing-mm`` (6 mm:
32^3 voxels over its 192 mm cube), simulated into ``--out`` (reused when there already) or taken
from ``--cohort``. Each model of ``--models`` trains on the train split conditioned on
``("label", "sex")`` at ``--size``^3 with the default network sizes for at most ``--budget-s``
seconds of wall time (the engine's ``time_budget_s``; default 300 s); the LDM's split between its
two stages is planned from a short pilot that measures both stages' step rates
(``--ldm-ae-share`` of the budget for the autoencoder). The learning rate is constant and the
budget, not a step count, ends each training. Then, per model:

- ``Synthesizer.evaluate`` against the held-out real volumes (val + test): FID / KID / coverage
  of the encoder features beside their real-vs-real floors, label and sex conditioning-fidelity
  AUC beside the real-image ceiling, TSTR label AUC beside train-on-real;
- sampling speed: ``sample(--n-speed)`` under ``--sample-threads`` torch threads, the best and
  the median of ``--repeats`` timings (the best is the least disturbed by other load);
- those samples written as NIfTI through the memorisation gate (written / dropped).

Printed: one table per model, then a summary table (also ``summary.csv`` in ``--out``). Run
on CPU: ``python benchmarks/synthesis3d.py --budget-s 120 --out OUT`` (about 5-6 min per model
on 2 cores: training, ~1 min of evaluation and sampling; the cohort ~1 min once); ``--quick``
for a smoke run (40 subjects at 16^3, seconds of training).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# the 2D benchmark's engine options (the script's own folder is on sys.path when it runs)
from synthesis import engine_config

CONDITIONS = ("label", "sex")


def cohort_manifest(args: argparse.Namespace) -> tuple[Path, float]:
    """The 3D cohort's manifest (simulated unless it is there already) and the seconds it took."""
    if args.cohort is not None:
        return args.cohort, 0.0
    folder = args.out / f"cohort_demo3d_{args.n_subjects}_{args.spacing_mm:g}mm"
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        return manifest, 0.0
    from medgen.simulate import preset, simulate

    cfg = preset("demo3d")
    cfg.population.n_subjects = args.n_subjects
    cfg.anatomy.spacing_mm = args.spacing_mm
    t = time.perf_counter()
    path = simulate(cfg, folder, seed=0, progress=False)
    return Path(path), time.perf_counter() - t


def new_model(args: argparse.Namespace, kind: str, **extra: Any) -> Any:
    from medgen.generative import Synthesizer

    size = (args.size,) * 3
    return Synthesizer(kind, CONDITIONS, spatial_dims=3, image_size=size, **extra)


def plan_ldm(args: argparse.Namespace, manifest: Path) -> dict[str, Any]:
    """Stage-1 steps of the LDM for the budget, from a pilot of three epochs of
    ``--pilot-steps``: two of the autoencoder (the first warms up), one of the U-Net (its wall
    time counts against nothing: it is reported as ``pilot_s``). The learning rate is constant,
    so the number of epochs does not matter: the time budget ends training."""
    p = args.pilot_steps
    pilot = new_model(args, "ldm", autoencoder_steps=2 * p)
    cfg = {**engine_config(args, epochs=3, budget=None), "steps_per_epoch": p}
    t = time.perf_counter()
    pilot.fit(manifest, config=cfg, progress=False)
    wall = time.perf_counter() - t
    s1, s2 = (float(r["seconds"]) for r in pilot.history[1:3])
    r1, r2 = p / max(s1, 1e-9), p / max(s2, 1e-9)
    ae_steps = max(p, int(args.ldm_ae_share * args.budget_s * r1))
    return {
        "autoencoder_steps": ae_steps,
        "pilot_s": wall,
        "stage1_steps_per_s": r1,
        "stage2_steps_per_s": r2,
    }


def train(args: argparse.Namespace, kind: str, manifest: Path) -> tuple[Any, dict[str, Any]]:
    import torch

    extra: dict[str, Any] = {}
    info: dict[str, Any] = {"model": kind}
    epochs = 1_000_000  # the time budget ends training
    if kind == "ldm":
        plan = plan_ldm(args, manifest)
        extra["autoencoder_steps"] = plan["autoencoder_steps"]
        info.update(plan)
    syn = new_model(args, kind, **extra)
    t = time.perf_counter()
    syn.fit(
        manifest,
        run_dir=args.out / "runs" / kind,
        config=engine_config(args, epochs=epochs, budget=args.budget_s),
        overwrite=True,  # a new benchmark run trains anew
        progress=False,
    )
    wall = time.perf_counter() - t
    train_s = float(sum(r["seconds"] for r in syn.history))
    steps = int(syn.steps_trained)
    if kind == "ldm":
        ae = min(steps, int(extra["autoencoder_steps"]))
        info["steps_text"] = f"{ae} AE + {steps - ae} diffusion"
    else:
        info["steps_text"] = str(steps)
    info.update(
        device=str(syn.device),
        threads=torch.get_num_threads(),
        budget_s=args.budget_s,
        steps=steps,
        wall_s=wall,
        steps_per_s=steps / max(train_s, 1e-9),
        volumes_per_s_train=steps * args.batch_size / max(train_s, 1e-9),
    )
    last = syn.history[-1] if syn.history else {}
    for key in ("l1", "loss"):
        if key in last and np.isfinite(last[key]):
            info[f"last_{key}"] = float(last[key])
    return syn, info


def sampling(args: argparse.Namespace, syn: Any, kind: str) -> dict[str, Any]:
    """Images/s of ``sample(n_speed)`` (best and median of ``repeats``) and the gate on writing
    the last of those samples as NIfTI."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.sample_threads)
    secs = []
    try:
        syn.sample(4, seed=args.seed + 100)  # warm-up
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = syn.sample(args.n_speed, seed=args.seed + 2)
            secs.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    folder = args.out / "written" / kind
    if folder.exists():
        shutil.rmtree(folder)  # the benchmark's own output of an earlier run
    syn.write(out, folder)  # the memorisation gate against the training manifest
    meta = json.loads((folder / "synthesis.json").read_text())
    return {
        "n": args.n_speed,
        "threads": args.sample_threads,
        "sample_s": " ".join(f"{s:.2f}" for s in secs),
        "images_per_s": args.n_speed / min(secs),
        "images_per_s_median": args.n_speed / float(np.median(secs)),
        "n_written": int(meta["n_written"]),
        "n_dropped": int(meta["n_dropped"]),
    }


def summary_row(
    kind: str, info: dict[str, Any], ev: Any, speed: dict[str, Any], eval_s: float
) -> dict[str, Any]:
    o = ev.quality.loc[("overall", "all")]
    f, t = ev.fidelity, ev.tstr
    return {
        "model": kind,
        "steps": info["steps_text"],
        "train_s": info["wall_s"],
        "steps/s": info["steps_per_s"],
        "fid": o["fid"],
        "fid_floor": o["fid_floor"],
        "fid/floor": o["fid"] / o["fid_floor"] if o["fid_floor"] else np.nan,
        "kid": o["kid"],
        "kid_floor": o["kid_floor"],
        "coverage": o["coverage"],
        "coverage_floor": o["coverage_floor"],
        "auc_label": f.loc[("label", "overall"), "auc"],
        "auc_label_real": f.loc[("label", "overall"), "auc_real"],
        "auc_sex": f.loc[("sex", "overall"), "auc"],
        "auc_sex_real": f.loc[("sex", "overall"), "auc_real"],
        "tstr_auc": t.loc["synthetic", "auc"] if "synthetic" in t.index else np.nan,
        "trtr_auc": t.loc["real", "auc"] if "real" in t.index else np.nan,
        "written/dropped": f"{speed['n_written']}/{speed['n_dropped']}",
        "img/s best": speed["images_per_s"],
        "img/s median": speed["images_per_s_median"],
        "eval_s": eval_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default="vae-gan,ldm", help="comma-separated: vae-gan, ldm")
    ap.add_argument("--budget-s", type=float, default=300.0, help="training seconds per model")
    ap.add_argument("--size", type=int, default=32, help="volume edge (voxels) of the models")
    ap.add_argument("--n-subjects", type=int, default=200, help="subjects of the demo3d cohort")
    ap.add_argument("--spacing-mm", type=float, default=6.0, help="simulated voxel size (mm)")
    ap.add_argument("--cohort", type=Path, default=None, help="a 3D manifest to use instead")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=0, help="training, sampling and evaluation seed")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (training, evaluation)")
    ap.add_argument("--sample-threads", type=int, default=2, help="torch threads of the timing")
    ap.add_argument("--device", default="auto", help="engine device: auto (CUDA if any), cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps-per-epoch", type=int, default=20)
    ap.add_argument("--classifier-epochs", type=int, default=10)
    ap.add_argument("--kid-subsets", type=int, default=50)
    ap.add_argument("--n-speed", type=int, default=32, help="volumes of the timed sample(n)")
    ap.add_argument("--repeats", type=int, default=3, help="timings of sample(n)")
    ap.add_argument("--ldm-ae-share", type=float, default=0.4, help="LDM budget share of stage 1")
    ap.add_argument("--pilot-steps", type=int, default=5, help="steps per epoch of the LDM pilot")
    ap.add_argument("--quick", action="store_true", help="small cohort and budgets (smoke test)")
    args = ap.parse_args()

    import torch

    from medgen.errors import MetricWarning

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("medgen.generative.engine").setLevel(logging.ERROR)  # "budget reached"
    logging.getLogger("medgen.generative._synth_eval").setLevel(logging.ERROR)  # few held out
    warnings.filterwarnings("ignore", category=MetricWarning)  # small groups: NaN in the tables
    if args.quick:
        args.n_subjects, args.spacing_mm, args.size, args.budget_s = 40, 12.0, 16, 6.0
        args.classifier_epochs, args.kid_subsets, args.pilot_steps = 1, 5, 2
        args.steps_per_epoch, args.batch_size, args.n_speed, args.repeats = 5, 4, 8, 1
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="medgen_bench_synthesis3d_"))
    args.out.mkdir(parents=True, exist_ok=True)
    models = [m.strip() for m in args.models.split(",") if m.strip()]

    manifest, sim_s = cohort_manifest(args)
    from medgen.cohort import Cohort
    from medgen.io import load

    df = Cohort.from_manifest(manifest).df
    first = load(df["image_path"].iloc[0])
    counts = df["split"].value_counts().to_dict()
    print(
        f"cohort: {manifest} ({len(df)} volumes {tuple(first.shape[1:])} at "
        f"{tuple(round(float(s), 2) for s in first.meta['spacing'])} mm, splits {counts}"
        + (f"; simulated in {sim_s:.0f} s)" if sim_s else ")")
    )
    print(
        "train rows by label x sex: "
        + str(df[df["split"] == "train"].groupby(list(CONDITIONS)).size().to_dict())
    )
    load_avg = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"torch {torch.__version__}, {args.threads} thread(s) (sampling timed with "
        f"{args.sample_threads}), {os.cpu_count()} CPUs, load average {load_avg[0]:.2f} "
        f"{load_avg[1]:.2f} {load_avg[2]:.2f}, device {args.device}, models at {args.size}^3, "
        f"budget {args.budget_s:.0f} s per model, batch {args.batch_size}, seed {args.seed}"
    )

    summary = []
    for kind in models:
        syn, info = train(args, kind, manifest)
        t = time.perf_counter()
        ev = syn.evaluate(
            manifest,
            by=CONDITIONS,
            target="label",
            seed=args.seed,
            classifier_epochs=args.classifier_epochs,
            kid_subsets=args.kid_subsets,
        )
        eval_s = time.perf_counter() - t
        ev.to_csv(args.out / "eval" / kind)
        ev.to_html(args.out / "eval" / kind / "report.html")
        speed = sampling(args, syn, kind)
        print(f"\n== {kind}: training ==")
        print(pd.Series(info).to_string())
        print(f"\n== {kind}: quality (samples vs held-out real; *_floor = real vs real) ==")
        cols = ["n", "fid", "fid_floor", "kid", "kid_floor", "coverage", "coverage_floor"]
        print(ev.quality[cols].round(4).to_string())
        print(f"\n== {kind}: conditioning fidelity (*_real = real held-out images) ==")
        print(ev.fidelity.round(3).to_string())
        print(f"\n== {kind}: TSTR ==")
        print(ev.tstr.round(3).to_string())
        print(f"\n== {kind}: sampling (evaluation took {eval_s:.0f} s) ==")
        print(pd.Series(speed).to_string())
        summary.append(summary_row(kind, info, ev, speed, eval_s))

    load_avg = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"\n== summary (overall rows; load average at the end {load_avg[0]:.2f}) ==")
    table = pd.DataFrame(summary).set_index("model")
    print(table.T.to_string(float_format=lambda v: f"{v:.4g}"))
    table.to_csv(args.out / "summary.csv")
    print(f"\ntables, reports and runs in {args.out}")


if __name__ == "__main__":
    main()
