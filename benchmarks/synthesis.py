"""Benchmark: conditional synthesis (``medgen.generative.Synthesizer``) on the demo cohort.

Data: the ``demo`` simulator preset (2,000 subjects, 2D 64x64, seed 0; simulated into ``--out``
or a temp folder, or reused when ``--cohort`` / an earlier run's ``--out`` already holds it).
Each model of ``--models`` (``vae-gan``, ``ldm``) trains on the train split conditioned on
``("label", "sex")`` for at most ``--budget-s`` seconds (the engine's ``time_budget_s``; GPU when
one is visible, recorded), then ``Synthesizer.evaluate`` measures it against the held-out real
rows (val + test), by ``label`` and ``sex``.

Printed per model, each figure beside its named baseline:

- training: steps, wall time, steps/s, device (the LDM's stage split is planned from a short
  pilot run that measures both stages' step rates: ``--ldm-ae-share`` of the budget for stage 1);
- quality per subgroup (encoder features of the model itself, so compare models by their gap to
  the real-vs-real ``*_floor``, not by raw FID): FID, KID, precision, recall, density,
  coverage, and ``fid / floor``;
- conditioning fidelity of ``label`` and ``sex``: AUC of a real-trained classifier on samples vs
  the same classifier on real held-out images (the ceiling), and their ratio, and on the
  model's reconstructions of those images (what its latent keeps of each condition);
- TSTR: the label AUC on real test images when trained on synthetic vs on real images;
- near-copies of the evaluation samples per subgroup (vs the gate's quantile, 1 %);
- sampling: images/s of ``sample(--n-speed)`` (under ``--sample-threads``), then those samples
  written through the memorisation gate (written / dropped, near-copies written).

Then the targets of issue 12 with measured value and pass/fail: label-fidelity AUC >= 0.90; TSTR
AUC within 0.05 of train-on-real; coverage >= 0.6; no near-copies written; no subgroup's FID more
than 1.5x the best subgroup's; sampling >= 50 images/s. 3D: ``benchmarks/synthesis3d.py``.

Run in one process (CPU, 2 cores): ``python benchmarks/synthesis.py --out OUT`` (about 50-60
min: ~2 min simulating, 20 min training per model, 2-6 min of evaluation and sampling per model);
``--budget-s 300`` for a shorter look; ``--quick`` for a smoke run (tiny preset, seconds of
training, about 1-2 min). Tables (CSV) and an HTML report per model land in ``--out``.

``--only-sampling``: sampling speed alone, no training to speak of (weights after 2 + 2 steps on
a 40-subject ``demo`` cohort: speed does not depend on them). Each model of ``--models`` at
``--size`` with the default network sizes; for the LDM each of ``--ddim-steps`` (default 20 and
10) with classifier-free guidance computed in one batched U-Net pass (``sample_ddim``'s default)
and in two passes (``batch_guidance=False``, the path before), ``--repeats`` interleaved timings
of ``sample(--n-speed)`` under ``--sample-threads``: the best (the least disturbed by other
load) and the median images/s. About 3-6 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CONDITIONS = ("label", "sex")
TARGETS = {
    "label_auc": 0.90,
    "tstr_gap": 0.05,
    "coverage": 0.6,
    "near_copies_written": 0,
    "fid_subgroup_ratio": 1.5,
    "images_per_s": 50.0,
}


def cohort_manifest(args: argparse.Namespace) -> tuple[Path, float]:
    """The cohort's manifest (simulated unless it is there already) and the seconds it took."""
    if args.cohort is not None:
        return args.cohort, 0.0
    folder = args.out / f"cohort_{args.preset}"
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        return manifest, 0.0
    from medgen.simulate import preset, simulate

    t = time.perf_counter()
    path = simulate(preset(args.preset), folder, seed=0, progress=False)
    return Path(path), time.perf_counter() - t


def engine_config(args: argparse.Namespace, *, epochs: int, budget: float | None) -> dict[str, Any]:
    return {
        "epochs": epochs,
        "steps_per_epoch": args.steps_per_epoch,
        "batch_size": args.batch_size,
        "ema_decay": 0.99,
        "time_budget_s": budget,
        "seed": args.seed,
        "device": args.device,
        "num_workers": 0,
    }


#: the VAE-GAN trained with classifier guidance (``guide_weight=--guide-weight``)
GUIDED = "vae-gan-guided"


def base_model(kind: str) -> str:
    """The ``Synthesizer`` model of a benchmark model name."""
    return "vae-gan" if kind == GUIDED else kind


def new_model(kind: str, size: tuple[int, int], **extra: Any) -> Any:
    from medgen.generative import Synthesizer

    return Synthesizer(kind, CONDITIONS, spatial_dims=2, image_size=size, **extra)


def plan_ldm(args: argparse.Namespace, manifest: Path, size: tuple[int, int]) -> dict[str, Any]:
    """Stage-1 steps and total steps of the LDM for the budget, from a short pilot run that
    measures both stages' step rates (``autoencoder_steps`` must end inside the budget)."""
    p = args.pilot_steps
    pilot = new_model("ldm", size, autoencoder_steps=p)
    cfg = {**engine_config(args, epochs=2, budget=None), "steps_per_epoch": p}
    t = time.perf_counter()
    pilot.fit(manifest, config=cfg, progress=False)
    wall = time.perf_counter() - t
    s1, s2 = (float(r["seconds"]) for r in pilot.history[:2])
    r1, r2 = p / max(s1, 1e-9), p / max(s2, 1e-9)
    budget = args.budget_s
    ae_steps = max(p, int(args.ldm_ae_share * budget * r1))
    diff_steps = max(p, int((1.0 - args.ldm_ae_share) * budget * r2))
    # 25% more steps than planned: the time budget, not the step count, ends training
    epochs = math.ceil(1.25 * (ae_steps + diff_steps) / args.steps_per_epoch)
    return {
        "autoencoder_steps": ae_steps,
        "epochs": epochs,
        "pilot_s": wall,
        "stage1_steps_per_s": r1,
        "stage2_steps_per_s": r2,
    }


def train(args: argparse.Namespace, kind: str, manifest: Path, size: tuple[int, int]) -> Any:
    import torch

    extra: dict[str, Any] = {}
    info: dict[str, Any] = {"model": kind}
    epochs = 1_000_000  # the time budget ends training
    if kind == "ldm":
        plan = plan_ldm(args, manifest, size)
        extra["autoencoder_steps"] = plan["autoencoder_steps"]
        epochs = plan["epochs"]
        info.update(plan)
    if args.adv_weight is not None and kind != "ldm":
        extra["adv_weight"] = args.adv_weight
    if args.lesion_weight > 0:
        extra["lesion_weight"] = args.lesion_weight
    if args.mask_condition and kind != "ldm":
        extra["mask_condition"] = True
    if kind == GUIDED:
        extra["guide_weight"] = args.guide_weight
        if args.guide_conditions:
            extra["guide_conditions"] = args.guide_conditions.split(",")
    syn = new_model(base_model(kind), size, **extra)
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
    info.update(
        device=str(syn.device),
        threads=torch.get_num_threads(),
        budget_s=args.budget_s,
        steps=syn.steps_trained,
        wall_s=wall,
        steps_per_s=syn.steps_trained / max(train_s, 1e-9),
        images_per_s_train=syn.steps_trained * args.batch_size / max(train_s, 1e-9),
    )
    last = syn.history[-1] if syn.history else {}
    for key in ("loss_g", "l1", "loss"):
        if key in last and np.isfinite(last[key]):
            info[f"last_{key}"] = float(last[key])
    return syn, info


def sampling(args: argparse.Namespace, syn: Any, kind: str) -> dict[str, Any]:
    """Images/s of ``sample(n_speed)`` and the gate on writing them."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.sample_threads)
    try:
        syn.sample(8, seed=args.seed + 100)  # warm-up
        t = time.perf_counter()
        out = syn.sample(args.n_speed, seed=args.seed + 2)
        secs = time.perf_counter() - t
    finally:
        torch.set_num_threads(threads)
    folder = args.out / "written" / kind
    if folder.exists():
        import shutil

        shutil.rmtree(folder)  # the benchmark's own output of an earlier run
    t = time.perf_counter()
    syn.write(out, folder)  # the memorisation gate against the training manifest
    write_s = time.perf_counter() - t
    meta = json.loads((folder / "synthesis.json").read_text())
    written = pd.read_csv(folder / "manifest.csv")
    copies = int(written["near_copy"].astype(str).str.lower().eq("true").sum())
    return {
        "n": args.n_speed,
        "threads": args.sample_threads,
        "sample_s": secs,
        "images_per_s": args.n_speed / max(secs, 1e-9),
        "write_s": write_s,
        "n_written": int(meta["n_written"]),
        "n_dropped": int(meta["n_dropped"]),
        "near_copies_written": copies,
    }


def sampling_speed(args: argparse.Namespace) -> None:
    """``--only-sampling``: images/s of ``sample(n_speed)`` per model, DDIM steps and guidance
    path (one batched U-Net pass per step, or two), best and median of ``--repeats``."""
    import functools

    import torch

    import medgen.generative.objectives.conditional as conditional

    manifest = args.cohort
    if manifest is None:
        from medgen.simulate import preset, simulate

        folder = args.out / "cohort_sampling"
        manifest = folder / "manifest.csv"
        if not manifest.is_file():
            cfg = preset("demo")
            cfg.population.n_subjects = 40
            manifest = Path(simulate(cfg, folder, seed=0, progress=False))
    size = (args.size, args.size)
    steps_list = [int(s) for s in args.ddim_steps.split(",") if s.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    # Synthesizer.sample imports sample_ddim when it runs: the two-pass path is chosen by
    # replacing the module attribute for the timing, then restoring it
    original = conditional.sample_ddim
    cases: list[tuple[str, int | None, str]] = []
    for kind in models:
        if kind == "ldm":
            cases += [(kind, s, p) for s in steps_list for p in ("batched", "two passes")]
        else:
            cases.append((kind, None, "-"))
    trained: dict[str, Any] = {}
    for kind in models:
        extra = {"autoencoder_steps": 2} if kind == "ldm" else {}
        syn = new_model(kind, size, **extra)
        cfg = {**engine_config(args, epochs=2, budget=None), "steps_per_epoch": 2, "batch_size": 4}
        syn.fit(manifest, config=cfg, progress=False)
        trained[kind] = syn
    threads = torch.get_num_threads()
    torch.set_num_threads(args.sample_threads)
    times: dict[tuple[str, int | None, str], list[float]] = {c: [] for c in cases}
    try:
        for kind, steps, path in cases:  # warm-up
            conditional.sample_ddim = functools.partial(  # type: ignore[assignment]
                original, batch_guidance=path != "two passes"
            )
            trained[kind].sample(8, seed=args.seed + 100, num_inference_steps=steps)
        for _ in range(args.repeats):  # interleaved: a burst of other load hits every case
            for case in cases:
                kind, steps, path = case
                conditional.sample_ddim = functools.partial(  # type: ignore[assignment]
                    original, batch_guidance=path != "two passes"
                )
                t = time.perf_counter()
                trained[kind].sample(args.n_speed, seed=args.seed + 2, num_inference_steps=steps)
                times[case].append(time.perf_counter() - t)
    finally:
        conditional.sample_ddim = original  # type: ignore[assignment]
        torch.set_num_threads(threads)
    rows = []
    for (kind, steps, path), secs in times.items():
        rows.append(
            {
                "model": kind,
                "ddim_steps": steps if steps is not None else "-",
                "guidance": path,
                "unet_passes": (2 * steps if path == "two passes" else steps) if steps else 0,
                "images/s best": args.n_speed / min(secs),
                "images/s median": args.n_speed / float(np.median(secs)),
                "s/sample(n) all": " ".join(f"{s:.2f}" for s in secs),
            }
        )
    table = pd.DataFrame(rows)
    print(
        f"\n== sampling speed: sample({args.n_speed}) at {size[0]}x{size[1]}, default sizes, "
        f"{args.sample_threads} torch threads, {args.repeats} repeats =="
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    table.to_csv(args.out / "sampling_speed.csv", index=False)
    print(f"\ntable in {args.out / 'sampling_speed.csv'}")


def quality_view(q: pd.DataFrame) -> pd.DataFrame:
    cols = ["n"]
    for m in ("fid", "kid", "precision", "recall", "density", "coverage"):
        cols += [m, f"{m}_floor"]
    v = q[cols].copy()
    v.insert(3, "fid/floor", q["fid"] / q["fid_floor"].replace(0, np.nan))
    return v


def fid_subgroup_ratio(q: pd.DataFrame) -> float:
    sub = q.drop(index=("overall", "all"), errors="ignore")["fid"].dropna()
    if len(sub) < 2 or sub.min() <= 0:
        return float("nan")
    return float(sub.max() / sub.min())


def targets(model: str, ev: Any, speed: dict[str, Any]) -> list[dict[str, Any]]:
    fid, q, t = ev.fidelity, ev.quality, ev.tstr
    label_auc = float(fid.loc[("label", "overall"), "auc"])
    has_both = {"synthetic", "real"} <= set(t.index)
    gap = float(t.loc["synthetic", "auc"] - t.loc["real", "auc"]) if has_both else np.nan
    cov = float(q.loc[("overall", "all"), "coverage"])
    ratio = fid_subgroup_ratio(q)
    rows = [
        ("label-fidelity AUC", label_auc, ">= 0.90", label_auc >= TARGETS["label_auc"]),
        ("TSTR AUC - train-on-real", gap, ">= -0.05", gap >= -TARGETS["tstr_gap"]),
        ("coverage (overall)", cov, ">= 0.6", cov >= TARGETS["coverage"]),
        (
            f"near-copies written (of {speed['n_written']}; {speed['n_dropped']} dropped)",
            speed["near_copies_written"],
            "== 0",
            speed["near_copies_written"] == TARGETS["near_copies_written"],
        ),
        ("worst / best subgroup FID", ratio, "<= 1.5", ratio <= TARGETS["fid_subgroup_ratio"]),
        (
            f"sampling images/s ({speed['threads']} threads)",
            speed["images_per_s"],
            ">= 50",
            speed["images_per_s"] >= TARGETS["images_per_s"],
        ),
    ]
    return [
        {
            "model": model,
            "target": name,
            "measured": value,
            "goal": goal,
            "pass": "n/a" if isinstance(value, float) and math.isnan(value) else bool(ok),
        }
        for name, value, goal, ok in rows
    ]


def print_model(kind: str, info: dict[str, Any], ev: Any, speed: dict[str, Any]) -> None:
    print(f"\n== {kind}: training ==")
    print(pd.Series(info).to_string())
    print(
        f"\n== {kind}: quality per subgroup (samples vs held-out real; *_floor = real vs real) =="
    )
    print(quality_view(ev.quality).round(4).to_string())
    print(f"\n== {kind}: the same on the evaluation classifier's features (cross-check) ==")
    print(quality_view(ev.quality_classifier).round(4).to_string())
    print(
        f"\n== {kind}: conditioning fidelity (real-trained classifier; *_real = the ceiling, "
        "*_reconstruction = on the model's reconstructions of the held-out images) =="
    )
    f = ev.fidelity.copy()
    f["auc/real"] = f["auc"] / f["auc_real"].replace(0, np.nan)
    print(f.round(3).to_string())
    print(f"\n== {kind}: TSTR (label AUC on the real test split) ==")
    t = ev.tstr.copy()
    if "real" in t.index:
        t["auc - real"] = t["auc"] - t.loc["real", "auc"]
    print(t.round(3).to_string())
    q = ev.provenance.get("quantile", 0.01)
    print(f"\n== {kind}: near-copies of the evaluation samples (expected rate ~{q:g}) ==")
    print(ev.near_copies.round(4).to_string())
    print(f"\n== {kind}: sampling and writing through the gate ==")
    print(pd.Series(speed).to_string())


def _ratio(q: pd.DataFrame, metric: str) -> float:
    o = q.loc[("overall", "all")]
    return float(o[metric] / o[f"{metric}_floor"]) if o[f"{metric}_floor"] else float("nan")


def summary_row(kind: str, info: dict[str, Any], ev: Any, speed: dict[str, Any]) -> dict[str, Any]:
    q, f, t = ev.quality, ev.fidelity, ev.tstr
    o = q.loc[("overall", "all")]
    nc = ev.near_copies.loc[("overall", "all")]
    return {
        "model": kind,
        "steps": info["steps"],
        "train_s": info["wall_s"],
        "fid": o["fid"],
        "fid_floor": o["fid_floor"],
        "fid/floor": o["fid"] / o["fid_floor"] if o["fid_floor"] else np.nan,
        "clf fid/floor": _ratio(ev.quality_classifier, "fid"),
        "clf coverage": ev.quality_classifier.loc[("overall", "all"), "coverage"],
        "kid": o["kid"],
        "precision": o["precision"],
        "recall": o["recall"],
        "density": o["density"],
        "coverage": o["coverage"],
        "auc_label": f.loc[("label", "overall"), "auc"],
        "auc_label_real": f.loc[("label", "overall"), "auc_real"],
        "auc_label_recon": f.loc[("label", "overall"), "auc_reconstruction"],
        "auc_sex": f.loc[("sex", "overall"), "auc"],
        "auc_sex_real": f.loc[("sex", "overall"), "auc_real"],
        "tstr_auc": t.loc["synthetic", "auc"] if "synthetic" in t.index else np.nan,
        "trtr_auc": t.loc["real", "auc"] if "real" in t.index else np.nan,
        "tstr_recon_auc": (
            t.loc["reconstructions", "auc"] if "reconstructions" in t.index else np.nan
        ),
        "near_copy_rate": nc["near_copy_rate"],
        "fid_worst/best": fid_subgroup_ratio(q),
        "img_per_s": speed["images_per_s"],
        "eval_s": info["eval_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--models",
        default="vae-gan,ldm",
        help=f"comma-separated: vae-gan, ldm, {GUIDED} (the VAE-GAN with --guide-weight)",
    )
    ap.add_argument(
        "--guide-weight", type=float, default=0.1, help=f"{GUIDED}: the classifier guidance"
    )
    ap.add_argument(
        "--adv-weight",
        type=float,
        default=None,
        help="the VAE-GANs' adversarial weight (default: the model's, 0.05)",
    )
    ap.add_argument(
        "--lesion-weight",
        type=float,
        default=0.0,
        help="every model's autoencoder L1 weighs pixels in the lesion masks 1 + W (0: off)",
    )
    ap.add_argument(
        "--mask-condition",
        action="store_true",
        help="the VAE-GANs decode under lesion masks (training: the image's; sampling: a "
        "training mask of the same conditions)",
    )
    ap.add_argument(
        "--guide-conditions",
        default="",
        help=f"{GUIDED}: comma-separated conditions the guide learns (default: all)",
    )
    ap.add_argument("--budget-s", type=float, default=1200.0, help="training seconds per model")
    ap.add_argument("--preset", default="demo", help="simulator preset of the cohort")
    ap.add_argument("--cohort", type=Path, default=None, help="a manifest to use instead")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=0, help="training, sampling and evaluation seed")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (training, evaluation)")
    ap.add_argument(
        "--sample-threads",
        type=int,
        default=2,
        help="torch threads while timing sampling (the target is on 2 CPU cores)",
    )
    ap.add_argument("--device", default="auto", help="engine device: auto (CUDA if any), cpu")
    ap.add_argument(
        "--n-eval",
        type=int,
        default=None,
        help="evaluation samples (default: one per held-out row)",
    )
    ap.add_argument("--n-speed", type=int, default=256, help="images of the timed sample(n)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps-per-epoch", type=int, default=50)
    ap.add_argument("--classifier-epochs", type=int, default=20)
    ap.add_argument("--kid-subsets", type=int, default=100)
    ap.add_argument(
        "--ldm-ae-share", type=float, default=0.4, help="share of the LDM budget for stage 1"
    )
    ap.add_argument("--pilot-steps", type=int, default=20, help="steps per stage of the LDM pilot")
    ap.add_argument("--quick", action="store_true", help="tiny preset and budgets (smoke test)")
    ap.add_argument(
        "--no-ablation",
        action="store_true",
        help="skip the VAE-GAN's second evaluation with N(0, I) latents",
    )
    ap.add_argument(
        "--only-sampling",
        action="store_true",
        help="time sampling only (untrained weights): DDIM steps x guidance path",
    )
    ap.add_argument("--size", type=int, default=64, help="--only-sampling: image edge (pixels)")
    ap.add_argument(
        "--ddim-steps", default="20,10", help="--only-sampling: comma-separated DDIM steps"
    )
    ap.add_argument("--repeats", type=int, default=5, help="--only-sampling: timings per case")
    args = ap.parse_args()

    import torch

    from medgen.errors import MetricWarning

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("medgen.generative.engine").setLevel(logging.ERROR)  # "budget reached"
    warnings.filterwarnings("ignore", category=MetricWarning)  # small groups: NaN in the tables
    if args.quick:
        args.preset, args.budget_s, args.n_speed = "tiny", 8.0, 64
        args.classifier_epochs, args.kid_subsets, args.pilot_steps = 2, 5, 4
        args.steps_per_epoch = 10
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="medgen_bench_synthesis_"))
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only_sampling:
        print(f"torch {torch.__version__}, device {args.device}")
        sampling_speed(args)
        return
    models = [m.strip() for m in args.models.split(",") if m.strip()]

    manifest, sim_s = cohort_manifest(args)
    from medgen.cohort import Cohort
    from medgen.io import load

    df = Cohort.from_manifest(manifest).df
    first = np.asarray(load(df["image_path"].iloc[0])).squeeze()
    size = (int(first.shape[0]), int(first.shape[1]))
    counts = df["split"].value_counts().to_dict()
    print(
        f"cohort: {manifest} ({len(df)} images {size[0]}x{size[1]}, splits {counts}"
        + (f"; simulated in {sim_s:.0f} s)" if sim_s else ")")
    )
    print(
        "train rows by label x sex: "
        + str(df[df["split"] == "train"].groupby(list(CONDITIONS)).size().to_dict())
    )
    print(
        f"torch {torch.__version__}, {args.threads} thread(s) (sampling timed with "
        f"{args.sample_threads}), device {args.device}, budget {args.budget_s:.0f} s per model, "
        f"batch {args.batch_size}, seed {args.seed}"
    )
    print(
        "features: each model's own encoder (FID etc. comparable to the floor, not across models)"
    )

    summary, all_targets = [], []
    for kind in models:
        syn, info = train(args, kind, manifest, size)
        # the VAE-GAN is measured twice with the same weights: with its fitted latent prior
        # (the default) and drawing N(0, I) latents (the ablation: what the prior buys)
        variants = [(kind, None)]
        if kind == "vae-gan" and "latent_prior" in syn.networks() and not args.no_ablation:
            variants.append(("vae-gan N(0,I) latents", syn.networks()["latent_prior"]))
        for name, prior in variants:
            if prior is not None:
                syn.nets.pop("latent_prior")
            t = time.perf_counter()
            ev = syn.evaluate(
                manifest,
                n=args.n_eval,
                by=CONDITIONS,
                target="label",
                seed=args.seed,
                classifier_epochs=args.classifier_epochs,
                kid_subsets=args.kid_subsets,
            )
            info = {**info, "eval_s": time.perf_counter() - t}
            ev_dir = args.out / "eval" / name.replace(" ", "_").replace("(", "").replace(")", "")
            ev.to_csv(ev_dir)
            ev.to_html(ev_dir / "report.html")
            speed = sampling(args, syn, kind)
            print_model(name, info, ev, speed)
            summary.append(summary_row(name, info, ev, speed))
            all_targets += targets(name, ev, speed)
            if prior is not None:
                syn.nets["latent_prior"] = prior

    print("\n== summary (overall rows; *_real / trtr = real-image ceilings) ==")
    print(pd.DataFrame(summary).set_index("model").T.to_string(float_format=lambda v: f"{v:.4g}"))
    print("\n== targets (issue 12) ==")
    tt = pd.DataFrame(all_targets)
    tt["measured"] = tt["measured"].map(lambda v: f"{v:.4g}" if isinstance(v, float) else str(v))
    print(tt.to_string(index=False))
    pd.DataFrame(summary).to_csv(args.out / "summary.csv", index=False)
    tt.to_csv(args.out / "targets.csv", index=False)
    print(f"\ntables, reports and runs in {args.out}")


if __name__ == "__main__":
    main()
