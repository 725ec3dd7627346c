"""Benchmark: image-to-image translation against the simulator's counterfactual truth (issue 14).

Two tasks on simulated 2D cohorts (64x64 axial slices of the ``tiny`` preset's anatomy,
``--n-subjects`` subjects, ``--seed``, default 0), each with the truth rendered by the simulator:

- ``site``: site_A -> site_B of the ``tiny`` preset (both FLAIR; site_B blurred, noisier,
  stronger bias field, other units), truth from ``counterfactual=("site",)``;
- ``contrast``: T1 -> T2 (the CSF inverts: dark on T1, bright on T2): two sites with the same
  scanner (site_A's), one T1 and one T2, truth from ``counterfactual=("contrast",)`` (every
  T1 subject rendered as T2 at its own site).

Methods: identity, histogram matching, Nyul standardisation, CycleGAN (unpaired: the source's
and the target's real training images) and pix2pix (paired: each source training image with its
counterfactual render). Each learned model trains for ``--max-steps`` steps or ``--budget-s``
seconds, whichever comes first. Printed per task and method (test split): masked PSNR / SSIM to
the truth, median lesion contrast ratio (1 = preserved), and the target rate: how often a
classifier trained on the real training images (source vs target; the synthesis evaluation's
small DenseNet) calls the output "target".

Targets (issue 14): contrast: the model beats histogram matching by >= 3 dB masked PSNR; site:
by >= 1 dB; lesion contrast within 15 %; target rate >= 80 %. Each learned model is checked.

Usage::

    python benchmarks/translation.py            # both tasks, the full run (about 40 min)
    python benchmarks/translation.py --quick    # smoke run (about a minute)
    python benchmarks/translation.py --tasks site --budget-s 300 --out /tmp/tr

Writes ``results.csv`` (per image and method), ``summary.csv`` / ``summary.json`` and
``figure_<task>.png`` (source, truth, histogram and each learned model on one test image) to
``--out``; ``--save-models`` also the fitted translators.

pix2pix variants: ``--detail-weight W [W ...]`` trains one pix2pix per value on the same cohort
(``Pix2PixConfig.detail_weight``, the detail-weighted L1; rows ``pix2pix`` for 0 and
``pix2pix detail=W``), ``--lesion-weight W [W ...]`` likewise for the mask-weighted L1
(``lesion_weight``: the training rows' lesion masks; ``pix2pix lesion=W``) and ``--pix2pix-adv-weight W [W ...]`` for the adversarial weight
(``adv=W``); every combination is trained. ``--detail-sigma`` sets that option for all of them
(named in the row label, e.g. ``pix2pix detail=2 adv=0.1``); ``--lesion-adv-weight`` and
``--lesion-contrast-weight`` likewise for the two other lesion terms (``lesion_adv=W``,
``lesion_contrast=W``).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

TASKS = {
    "site": {"source": {"site": "site_A"}, "target": {"site": "site_B"}, "psnr_gain": 1.0},
    "contrast": {"source": {"contrast": "t1"}, "target": {"contrast": "t2"}, "psnr_gain": 3.0},
}
LEARNED = ("cyclegan", "pix2pix")


def task_config(task: str, n_subjects: int, image_size: int) -> tuple[Any, tuple[str, ...]]:
    """The simulation config of ``task`` and its counterfactual attribute."""
    from medgen.simulate import preset

    cfg = preset("tiny")
    cfg.population.n_subjects = n_subjects
    cfg.anatomy.image_size = image_size
    if task == "site":
        return cfg, ("site",)
    base = cfg.sites[0]
    t1, t2 = copy.deepcopy(base), copy.deepcopy(base)
    t1.name, t1.contrast, t1.proportion = "site_T1", "t1", 0.5
    t2.name, t2.contrast, t2.proportion = "site_T2", "t2", 0.5
    cfg.sites = [t1, t2]
    cfg.biases = [b for b in cfg.biases if b.params.get("site") not in ("site_A", "site_B")]
    return cfg.validate(), ("contrast",)


def fit_models(
    cohort: Any, task: str, args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, float]]:
    """The fitted translators of ``task`` and their fit times (s)."""
    from medgen.generative.translation import Translator

    sel = TASKS[task]
    models: dict[str, Any] = {}
    times: dict[str, float] = {}
    engine = {
        "epochs": max(1, args.max_steps // args.steps_per_epoch),
        "steps_per_epoch": min(args.steps_per_epoch, args.max_steps),
        "batch_size": args.batch_size,
        "time_budget_s": args.budget_s,
        "lr_schedule": args.lr_schedule,
        "device": args.device,
        "seed": args.seed,
    }
    nets = {"channels": tuple(args.channels), "discriminator_channels": args.channels[0]}
    for name in ("histogram", "nyul", *LEARNED):
        if name not in args.models and name in LEARNED:
            continue
        opts: dict[str, Any] = {}
        if name == "cyclegan":
            opts = {"cyclegan": dict(nets)}
            if args.cyclegan_identity_weight is not None:
                opts["cyclegan"]["identity_weight"] = args.cyclegan_identity_weight
            if args.cyclegan_gain_init is not None:
                opts["cyclegan"]["gain_init"] = args.cyclegan_gain_init
            opts["cyclegan"].update(parse_options(args.cyclegan_set))
        variants: list[tuple[str, dict[str, Any]]] = [(name, opts)]
        if name == "pix2pix":
            variants = []
            advs = args.pix2pix_adv_weight or [None]
            for dw, lw, adv, law, lcw in itertools.product(
                args.detail_weight,
                args.lesion_weight,
                advs,
                args.lesion_adv_weight,
                args.lesion_contrast_weight,
            ):
                p2p: dict[str, Any] = {**nets, "mse_weight": 1.0}
                if law > 0:
                    p2p["lesion_adv_weight"] = law
                if lcw > 0:
                    p2p["lesion_contrast_weight"] = lcw
                if dw > 0:
                    p2p["detail_weight"] = dw
                if lw > 0:
                    p2p["lesion_weight"] = lw
                if args.detail_sigma is not None:
                    p2p["detail_sigma"] = args.detail_sigma
                if adv is not None:
                    p2p["adv_weight"] = adv
                p2p.update(parse_options(args.pix2pix_set))
                label = pix2pix_label(dw, lw, adv, args, law, lcw)
                variants.append((label, {"pix2pix": p2p}))
        for label, kwargs in variants:
            t = Translator(
                name,
                source=sel["source"],
                target=sel["target"],
                patch_size=args.patch_size,
                **kwargs,
            )
            t0 = time.perf_counter()
            t.fit(cohort, config=engine if name in LEARNED else None)
            times[label] = time.perf_counter() - t0
            models[label] = t
            steps = f", {t.steps_trained} steps" if name in LEARNED else ""
            logging.info("%s %s: fitted in %.1f s%s", task, label, times[label], steps)
    return models, times


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``["cycle_weight=2", "lr_g=1e-3"]`` -> ``{"cycle_weight": 2.0, "lr_g": 0.001}`` (numbers
    where they parse, ``true`` / ``false`` as booleans, else strings)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected KEY=VALUE, not {item!r}")
        if value.strip().lower() in ("true", "false"):
            out[key.strip()] = value.strip().lower() == "true"
            continue
        try:
            out[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            out[key.strip()] = value.strip()
    return out


def pix2pix_label(
    detail_weight: float,
    lesion_weight: float,
    adv_weight: float | None,
    args: argparse.Namespace,
    lesion_adv_weight: float = 0.0,
    lesion_contrast_weight: float = 0.0,
) -> str:
    """The row label of a pix2pix variant: ``"pix2pix"`` with today's options, else the options
    that differ, e.g. ``"pix2pix detail=2"`` or ``"pix2pix lesion=10 adv=0.1"``."""
    parts = ["pix2pix"]
    if detail_weight > 0:
        parts.append(f"detail={detail_weight:g}")
    if lesion_weight > 0:
        parts.append(f"lesion={lesion_weight:g}")
    if args.detail_sigma is not None:
        parts.append(f"sigma={args.detail_sigma:g}")
    if adv_weight is not None:
        parts.append(f"adv={adv_weight:g}")
    if lesion_adv_weight > 0:
        parts.append(f"lesion_adv={lesion_adv_weight:g}")
    if lesion_contrast_weight > 0:
        parts.append(f"lesion_contrast={lesion_contrast_weight:g}")
    parts += [item.replace(" ", "") for item in getattr(args, "pix2pix_set", None) or []]
    return " ".join(parts)


def is_learned(method: str) -> bool:
    """Whether a row label names a learned model (``"pix2pix detail=2"`` included)."""
    return method.split(" ")[0] in LEARNED


def pooled_ratio(table: pd.DataFrame) -> pd.Series:
    """Per method: the sum of the outputs' lesion contrasts over the sum of the truths' (images
    with lesions), a ratio that truths with barely visible lesions cannot dominate."""
    rows = table.dropna(subset=["lesion_contrast", "truth_lesion_contrast"])
    g = rows.groupby("method", sort=False)
    return g["lesion_contrast"].sum() / g["truth_lesion_contrast"].sum()


def summarise(
    table: pd.DataFrame, task: str, times: dict[str, float], steps: dict[str, int]
) -> pd.DataFrame:
    """Per-method means (medians for the lesion ratio) and the targets' pass/fail."""
    g = table.groupby("method", sort=False)
    out = pd.DataFrame(
        {
            "n": g.size(),
            "psnr": g["psnr"].mean(),
            "ssim": g["ssim"].mean(),
            "lesion_contrast_ratio": g["lesion_contrast_ratio"].median(),
            "lesion_ratio_pooled": pooled_ratio(table),
            "target_rate": g["target_rate"].mean() if "target_rate" in table else np.nan,
        }
    )
    out["fit_s"] = [times.get(m, np.nan) for m in out.index]
    out["steps"] = [steps.get(m, np.nan) for m in out.index]
    hist = out.loc["histogram", "psnr"] if "histogram" in out.index else np.nan
    gain = TASKS[task]["psnr_gain"]
    checks = []
    for m in out.index:
        if not is_learned(str(m)):
            checks.append("")
            continue
        r = out.loc[m]
        parts = [
            f"psnr+{gain:g}dB:{'pass' if r['psnr'] - hist >= gain else 'FAIL'}",
            f"lesion15%:{'pass' if abs(r['lesion_contrast_ratio'] - 1) <= 0.15 else 'FAIL'}",
            f"rate80%:{'pass' if r['target_rate'] >= 0.8 else 'FAIL'}",
        ]
        checks.append(" ".join(parts))
    out["targets"] = checks
    out.insert(0, "task", task)
    return out


def figure(cohort: Any, models: dict[str, Any], task: str, path: Path) -> None:
    """One test image: source, truth, histogram, cyclegan, pix2pix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medgen.generative.translation import _counterfactual_pairs, _matches
    from medgen.io import load

    df = cohort.df
    fact = df[(df["split"] == "test") & df["counterfactual_of"].isna()]
    fact = fact[_matches(fact, TASKS[task]["source"])]
    pairs = _counterfactual_pairs(df, fact, TASKS[task]["target"], split="test")
    row = pairs.iloc[0]
    x = load(row["image_path"]).numpy()[0]
    panels = [("source", x), ("truth", load(row["truth_path"]).numpy()[0])]
    panels += [(m, t.apply(x)) for m, t in models.items() if m == "histogram" or is_learned(m)]
    lines = max(len(name.split(" ")) for name, _ in panels)  # a variant's options, one a line
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.2 + 0.18 * lines))
    for ax, (name, img) in zip(axes, panels, strict=True):
        lo, hi = np.percentile(img, (0.5, 99.5))
        ax.imshow(np.rot90(img), cmap="gray", vmin=lo, vmax=hi)
        ax.set_title(name.replace(" ", "\n"), fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_task(task: str, args: argparse.Namespace, out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    from medgen.cohort import Cohort
    from medgen.generative.translation import evaluate_translation, train_target_classifier
    from medgen.simulate import simulate

    cfg, cf = task_config(task, args.n_subjects, args.image_size)
    t0 = time.perf_counter()
    manifest = simulate(
        cfg, out / f"cohort_{task}", seed=args.seed, progress=False, counterfactual=cf
    )
    cohort = Cohort.from_manifest(manifest)
    logging.info(
        "%s: simulated %d images in %.1f s", task, len(cohort.df), time.perf_counter() - t0
    )
    models, times = fit_models(cohort, task, args)
    if args.save_models:
        for label, t in models.items():
            t.save(out / f"models_{task}" / label.replace(" ", "_").replace("=", "-"))
    t0 = time.perf_counter()
    sel = TASKS[task]
    clf = train_target_classifier(
        cohort, sel["source"], sel["target"], epochs=args.classifier_epochs, seed=args.seed
    )
    logging.info(
        "%s: target classifier: %d images, val accuracy %.3f, %.1f s",
        task,
        clf.n_train,
        clf.accuracy,
        time.perf_counter() - t0,
    )
    # one evaluation per learned variant (rows are named by model, so two pix2pix variants
    # cannot share one); the identity and baselines come from the first
    learned = [k for k in models if is_learned(k)] or ["nyul"]
    baselines = [m for k, m in models.items() if not is_learned(k) and k != learned[0]]
    tables = []
    for i, label in enumerate(learned):
        t = models[label]
        part = evaluate_translation(
            t, cohort, baselines=baselines if i == 0 else (), target_classifier=clf
        )
        if i > 0:
            part = part[part["method"] == t.model]
        part["method"] = part["method"].replace({t.model: label})
        tables.append(part)
    table = pd.concat(tables, ignore_index=True)
    table.attrs = tables[0].attrs
    table.insert(0, "task", task)
    steps = {k: m.steps_trained for k, m in models.items() if is_learned(k)}
    summary = summarise(table, task, times, steps)
    summary["classifier_val_accuracy"] = clf.accuracy
    summary["classifier_truth_rate"] = table.attrs["target_classifier"]["truth_rate"]
    try:
        figure(cohort, models, task, out / f"figure_{task}.png")
    except Exception as err:  # a figure is a convenience, never a failure of the benchmark
        logging.warning("figure of %s not written: %s", task, err)
    return table, summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--models", nargs="+", default=list(LEARNED), choices=list(LEARNED))
    p.add_argument("--n-subjects", type=int, default=400)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--budget-s", type=float, default=900.0, help="training seconds per model")
    p.add_argument("--max-steps", type=int, default=4000, help="training steps per model")
    p.add_argument("--steps-per-epoch", type=int, default=250)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=32)
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--classifier-epochs", type=int, default=30)
    p.add_argument(
        "--cyclegan-identity-weight",
        type=float,
        default=None,
        help="CycleGAN identity-loss weight (default: the model's, 5.0); 0 for contrast changes, "
        "where G(b) = b fights the inversion",
    )
    p.add_argument(
        "--cyclegan-gain-init",
        type=float,
        default=None,
        help="CycleGAN generators' starting gain (default: the model's, 0 = the identity); 1 for "
        "contrast changes (the identity is a stationary point of the cycle loss)",
    )
    p.add_argument(
        "--cyclegan-set",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="another CycleGANConfig option, e.g. cycle_weight=2 (repeatable)",
    )
    p.add_argument(
        "--pix2pix-set",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="another Pix2PixConfig option for every pix2pix variant, e.g. num_res_units=2 "
        "(repeatable; named in the row label)",
    )
    p.add_argument(
        "--detail-weight",
        type=float,
        nargs="+",
        default=[0.0],
        help="pix2pix detail-weighted L1 (Pix2PixConfig.detail_weight); several values train "
        "one pix2pix each on the same cohort, rows 'pix2pix' (0) and 'pix2pix detail=W'",
    )
    p.add_argument(
        "--lesion-weight",
        type=float,
        nargs="+",
        default=[0.0],
        help="pix2pix mask-weighted L1 (Pix2PixConfig.lesion_weight; the training rows' lesion "
        "masks); several values: one pix2pix each (with every --detail-weight), 'lesion=W'",
    )
    p.add_argument(
        "--lesion-adv-weight",
        type=float,
        nargs="+",
        default=[0.0],
        help="pix2pix adversarial term on the lesion cells (Pix2PixConfig.lesion_adv_weight; "
        "the training rows' lesion masks; needs an adversarial weight > 0); several values: one "
        "pix2pix each, 'lesion_adv=W'",
    )
    p.add_argument(
        "--lesion-contrast-weight",
        type=float,
        nargs="+",
        default=[0.0],
        help="pix2pix lesion-contrast term (Pix2PixConfig.lesion_contrast_weight; the training "
        "rows' lesion masks); several values: one pix2pix each, 'lesion_contrast=W'",
    )
    p.add_argument(
        "--detail-sigma",
        type=float,
        default=None,
        help="pix2pix detail_sigma (default: the model's, 1.0 pixel)",
    )
    p.add_argument(
        "--pix2pix-adv-weight",
        type=float,
        nargs="+",
        default=None,
        help="pix2pix adversarial weight(s) (default: the model's, 0.01); several values: one "
        "pix2pix each (with every detail/lesion weight), 'adv=W' in the row label",
    )
    p.add_argument(
        "--save-models",
        action="store_true",
        help="save every fitted translator to OUT/models_<task>/<label> (medgen.generative.load)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the simulated cohort (anatomy, lesions, splits), the models and the target "
        "classifier",
    )
    p.add_argument(
        "--lr-schedule",
        default="constant",
        help="the learned models' engine lr_schedule (constant, cosine, ...)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="smoke run: 40 subjects, 32x32, 20 steps")
    args = p.parse_args()
    for flag in ("detail_weight", "lesion_weight", "pix2pix_adv_weight"):
        if any(w < 0 for w in getattr(args, flag) or ()):
            p.error(f"--{flag.replace('_', '-')} must be >= 0, not {getattr(args, flag)}")
    if args.quick:
        args.n_subjects, args.image_size, args.max_steps = 40, 32, 20
        args.steps_per_epoch, args.budget_s, args.batch_size = 10, 60.0, 4
        args.patch_size, args.channels, args.classifier_epochs = 16, [4, 8], 5
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="medgen_translation_"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tables, summaries = [], []
    for task in args.tasks:
        table, summary = run_task(task, args, out)
        tables.append(table)
        summaries.append(summary)
    results = pd.concat(tables, ignore_index=True)
    summary = pd.concat(summaries)
    results.to_csv(out / "results.csv", index=False)
    summary.to_csv(out / "summary.csv")
    meta = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "torch_threads": torch.get_num_threads(),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    (out / "summary.json").write_text(
        json.dumps({"meta": meta, "summary": summary.reset_index().to_dict("records")}, indent=1)
    )
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary.round(3).to_string())
    print(f"wall time {meta['wall_s']} s, {meta['torch_threads']} torch threads; results in {out}")


if __name__ == "__main__":
    main()
