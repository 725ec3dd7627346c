"""Benchmark: the harmonisation study with learned translators against the injected truth
(issue 14).

``demo-underrep`` with ``--n-subjects`` subjects (800) and ``counterfactual=("site",)``: site C
is T1-like (lesions dark where the FLAIR sites A and B show them bright) and most of its
training positives were never recruited, so a classifier trained on the raw images does worse
there. The oracle arm (site C's subjects rendered at site A's appearance by the simulator) says
how much of that gap is appearance; each translator's ``harmonised`` arm says how much of it
that translator removes. Translators site C -> site A, each fitted on the training split only:

- ``histogram``: histogram matching (cannot reorder tissue intensities);
- ``pix2pix``: paired, each site C training image with its site A counterfactual render (an
  upper bound: real cohorts have no such pairs), ``--steps`` steps;
- ``cyclegan`` (``--models``): unpaired, the realistic case, ``--steps`` steps.

For every translator: :func:`medgen.apps.harmonisation_study` with the same classifier
(``--model``, ``--epochs``) and seeds (``--seeds``), 500 paired resamples. Printed per
translator and arm: AUC per site, the AUC gap with its change against ``raw`` and the paired
95 % CI, site C's TPR, and the translator's masked PSNR to the truth on the test images; the
raw and oracle arms are the same for every translator (same seeds), so they are printed once.

Run on an otherwise idle machine for the timings (the quality columns do not depend on load)::

    python benchmarks/harmonise.py                     # about 25 minutes on one thread
    python benchmarks/harmonise.py --quick             # smoke run
    python benchmarks/harmonise.py --models pix2pix --seeds 0,1,2 --out /tmp/harm
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from translation import parse_options  # benchmarks/translation.py: the same KEY=VALUE parser

SOURCE, TARGET = {"site": "site_C"}, {"site": "site_A"}
TRANSLATORS = ("histogram", "pix2pix", "cyclegan")


def fit_translator(name: str, manifest: Path, args: argparse.Namespace) -> tuple[Any, float]:
    from medgen.generative import Translator

    nets = {"channels": tuple(args.channels), "discriminator_channels": args.channels[0]}
    opts: dict[str, Any] = {}
    if name == "pix2pix":
        opts = {"pix2pix": {**nets, "mse_weight": 1.0, **parse_options(args.pix2pix_set)}}
    elif name == "cyclegan":
        opts = {"cyclegan": {**nets, **parse_options(args.cyclegan_set)}}
    t = Translator(name, source=SOURCE, target=TARGET, patch_size=args.patch_size, **opts)
    engine = None
    if name != "histogram":
        spe = min(250, args.steps)
        engine = {
            "epochs": max(1, args.steps // spe),
            "steps_per_epoch": spe,
            "batch_size": 8,
            "lr_schedule": "constant",
            "device": "cpu",
            "seed": 0,
        }
    t0 = time.perf_counter()
    t.fit(manifest, config=engine)
    return t, time.perf_counter() - t0


def rows_of(name: str, res: Any, fit_s: float) -> list[dict[str, Any]]:
    auc = res.by_site["auc"]
    tpr = res.by_site.get("tpr", None)
    sites = [g for g in auc.index.get_level_values("group").unique() if g != "all"]
    out = []
    for arm in res.arms:
        row: dict[str, Any] = {"translator": name, "arm": arm}
        for s in sites:
            row[f"auc_{s}"] = float(auc[(arm, s)])
        key = (arm, "site", "auc", "gap")
        gap = res.gaps.loc[key] if key in res.gaps.index else None
        if arm == "raw":  # every other arm's row holds the raw gap beside its own
            row["auc_gap"] = float(
                res.gaps.xs(("site", "auc", "gap"), level=(1, 2, 3))["raw"].iloc[0]
            )
        else:
            row["auc_gap"] = float(gap["value"]) if gap is not None else float("nan")
        if gap is not None and arm != "raw":
            row["delta_gap"] = float(gap["delta"])
            row["delta_ci"] = f"[{gap['delta_low']:+.3f}, {gap['delta_high']:+.3f}]"
            row["effect"] = gap["effect"]
        if tpr is not None:
            row["tpr_site_C"] = float(tpr[(arm, "site_C")])
        if arm == "harmonised" and res.translation is not None:
            tr = res.translation
            method = [m for m in tr.index if m != "identity"]
            row["psnr_truth"] = float(tr.loc[method[0], "psnr"]) if method else float("nan")
            row["psnr_identity"] = float(tr.loc["identity", "psnr"])
            row["lesion_ratio"] = (
                float(tr.loc[method[0], "lesion_contrast_ratio"]) if method else float("nan")
            )
            row["fit_s"] = round(fit_s, 1)
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default=",".join(TRANSLATORS), help="comma-separated translators")
    ap.add_argument("--n-subjects", type=int, default=800)
    ap.add_argument("--cohort-seed", type=int, default=0)
    ap.add_argument("--seeds", default="0,1,2", help="classifier training seeds, comma-separated")
    ap.add_argument("--steps", type=int, default=4000, help="training steps of learned translators")
    ap.add_argument("--patch-size", type=int, default=32)
    ap.add_argument(
        "--pix2pix-set",
        action="append",
        metavar="KEY=VALUE",
        help="a Pix2PixConfig option, e.g. lesion_weight=30 (repeatable)",
    )
    ap.add_argument(
        "--cyclegan-set",
        action="append",
        metavar="KEY=VALUE",
        help="a CycleGANConfig option, e.g. gain_init=1 (repeatable)",
    )
    ap.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--model", default="densenet", help="the study's classifier")
    ap.add_argument("--epochs", type=int, default=20, help="the study classifier's epochs")
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="smoke run: 120 subjects, 20 steps")
    args = ap.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in TRANSLATORS]
    if bad:
        ap.error(f"--models: unknown {bad}; choose from {list(TRANSLATORS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.quick:
        args.n_subjects, args.steps, args.epochs, args.n_boot = 120, 20, 2, 50
        args.channels, seeds = [4, 8], seeds[:1]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    from medgen.apps import harmonisation_study
    from medgen.simulate import preset, simulate

    out = args.out or Path(tempfile.mkdtemp(prefix="medgen_harmonise_"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg = preset("demo-underrep")
    cfg.population.n_subjects = args.n_subjects
    manifest = Path(
        simulate(
            cfg, out / "cohort", seed=args.cohort_seed, progress=False, counterfactual=("site",)
        )
    )
    logging.info("simulated in %.1f s", time.perf_counter() - t0)
    rows: list[dict[str, Any]] = []
    answers: dict[str, str] = {}
    for name in models:
        translator, fit_s = fit_translator(name, manifest, args)
        logging.info("%s fitted in %.1f s", name, fit_s)
        res = harmonisation_study(
            manifest,
            translator,
            out / f"study_{name}",
            classifier={"model": args.model, "epochs": args.epochs, "batch_size": 32, "lr": 3e-3},
            seeds=seeds,
            n_boot=args.n_boot,
            device="cpu",
            progress=False,
        )
        answers[name] = res.answer
        for r in rows_of(name, res, fit_s):
            if r["arm"] != "harmonised" and any(x["arm"] == r["arm"] for x in rows):
                continue  # raw and oracle: the same arms (same seeds) for every translator
            rows.append(r)
        logging.info("%s: %s", name, res.answer)
    table = pd.DataFrame(rows)
    table.to_csv(out / "summary.csv", index=False)
    meta = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seeds": seeds,
        "wall_s": round(time.perf_counter() - t0, 1),
        "answers": answers,
    }
    (out / "summary.json").write_text(json.dumps(meta, indent=1))
    with pd.option_context("display.width", 220, "display.max_columns", 30):
        print(table.round(3).to_string(index=False))
    for name, text in answers.items():
        print(f"{name}: {text}")
    print(f"wall time {meta['wall_s']} s; seeds {seeds}; results in {out}")


if __name__ == "__main__":
    main()
