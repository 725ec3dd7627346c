"""The augmentation study against the truth: both ground-truth presets at demo size.

For each preset the simulator injects a known bias; the study then trains the same classifier
several ways and the script prints, per arm, the overall AUC, the worst group's AUC and TPR, the
gap with its paired CI, and the wall time, and beside it what the study concluded and what the
injected truth says it should conclude:

- ``demo`` (presentation bias: lesions subtler in women). A generator trained on these images
  cannot add the signal women's images lack: no arm should be credited with closing the sex gap.
- ``demo-underrep`` (scarce positives: positive cases of one site rare in training, as visible
  as elsewhere). Filling that cell with *good* images should shrink the gap: the ``oracle``
  arm (the simulator drawing new subjects of each cell, a perfect generator) is the check of
  the study itself; the learned synthesizer's arm shows how close medgen's generator comes.

Arms: ``real``, ``reweight``, ``focal``, ``synthetic-balanced`` (the learned ``vae-gan``,
trained on the train split for ``--synth-epochs`` x 50 steps) and ``oracle-balanced`` (a
user-defined arm: every cell's deficit drawn from :class:`medgen.simulate.SimulatedGenerator`).
The baseline of every ratio is the ``real`` arm, trained in the same process with the same seed.

Run on an otherwise idle machine (two torch processes on 2 cores slow each other 10-20x)::

    python benchmarks/study.py                  # both presets, 1 seed, about 20 minutes
    python benchmarks/study.py --preset demo-underrep --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

TRUTH = {
    "demo": (
        "presentation bias on sex=F: no arm can add the missing signal; no arm should be "
        "credited with a smaller sex gap or a better worst group"
    ),
    "demo-underrep": (
        "scarce positives at one site: perfect images of the scarce cell (oracle) should shrink "
        "the gap / raise the worst group"
    ),
}


def _attribute(cohort_dir: Path) -> str:
    truth = json.loads((cohort_dir / "simulation.json").read_text())["ground_truth"]["biases"]
    return str(truth[0]["attribute"])


def _oracle_fill(cohort: Any, cohort_dir: Path, attribute: str, folder: Path, seed: int) -> Path:
    """Each label x attribute cell's deficit (one seed's worth) drawn from the simulator."""
    from medgen.apps._study import generation_plan
    from medgen.apps._study_arms import ArmSpec, prepare_data
    from medgen.simulate import SimulatedGenerator

    data = prepare_data(cohort, target="label", attributes=[attribute], val_fraction=0.2)
    # exactly the deficit: the margin is for a memorisation gate the oracle does not have
    spec = ArmSpec("synthetic-balanced", "synthetic-balanced")
    plan = generation_plan(data, [spec], 1, margin=(0.0, 0))
    gen = SimulatedGenerator.from_simulation(cohort_dir)
    where = plan.drop(columns="pool").reset_index(drop=True)
    return gen.write(gen.sample(None, where=where, seed=seed + 101), folder, split="train")


def run_preset(name: str, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    from medgen import Cohort
    from medgen.apps import augmentation_study
    from medgen.apps._study_arms import count_deficits, prepare_data
    from medgen.generative.synthesis import Synthesizer
    from medgen.simulate import preset, simulate

    t0 = time.perf_counter()
    cdir = work / name / "cohort"
    manifest = simulate(preset(name), cdir, seed=0, progress=False)
    cohort = Cohort.from_manifest(manifest)
    attribute = _attribute(cdir)
    t_sim = time.perf_counter() - t0

    t0 = time.perf_counter()
    syn = Synthesizer("vae-gan", ("label", attribute), image_size=(64, 64))
    syn.fit(
        manifest,
        run_dir=work / name / "synth",
        config={"epochs": args.synth_epochs, "steps_per_epoch": 50, "batch_size": 16, "seed": 0},
        progress=False,
    )
    t_syn = time.perf_counter() - t0

    seeds = tuple(int(s) for s in args.seeds.split(","))
    data = prepare_data(cohort, target="label", attributes=[attribute], val_fraction=0.2)
    deficit = count_deficits(data)
    oracle = _oracle_fill(cohort, cdir, attribute, work / name / "oracle", seed=0)
    t0 = time.perf_counter()
    res = augmentation_study(
        cohort,
        attributes=[attribute],
        sensitive=[attribute],
        arms=(
            "real",
            "reweight",
            "focal",
            "synthetic-balanced",
            {"name": "oracle-balanced", "extra": oracle},
        ),
        synthesizer=syn,
        seeds=seeds,
        classifier={"model": "densenet", "epochs": 40, "batch_size": 32, "lr": 3e-3, "patience": 8},
        shortage="warn",
        n_boot=1000,
        out_dir=work / name / "study",
        arm_reports=False,
        progress=False,
    )
    t_study = time.perf_counter() - t0

    rows = []
    wg = res.worst_group.xs(attribute, level="attribute")
    gd = res.worst_group_deltas
    real_s = res.timings.get("arm/real", float("nan"))
    for arm in res.arms:
        w = wg.xs(arm, level="arm")
        row: dict[str, Any] = {
            "preset": name,
            "arm": arm,
            "auc": float(w["overall_auc"].mean()),
            "worst_auc": float(w["worst_group_auc"].mean()),
            "worst_tpr": float(w["worst_group_tpr"].mean()),
            "gap": float(w["auc_gap"].mean()),
            "s": res.timings.get(f"arm/{arm}", float("nan")),
        }
        row["time_ratio"] = row["s"] / real_s
        if arm != "real" and gd is not None:
            g = gd.loc[(arm, attribute, "auc", "gap")]
            v = gd.loc[(arm, attribute, "auc", "worst")]
            row["gap_delta"] = (float(g["delta"]), float(g["delta_low"]), float(g["delta_high"]))
            row["gap_sig"] = bool(g["significant"])
            row["worst_delta"] = (
                float(v["delta"]),
                float(v["delta_low"]),
                float(v["delta_high"]),
            )
            row["worst_sig"] = bool(v["significant"])
        rows.append(row)
    info = {
        "preset": name,
        "attribute": attribute,
        "deficits": {str(k): int(v) for k, v in deficit["deficit"].items()},
        "simulate_s": round(t_sim, 1),
        "synthesizer_s": round(t_syn, 1),
        "synth_steps": len(syn.history),
        "study_s": round(t_study, 1),
        "generated": res.settings.get("synthesizer"),
        "verdict": res.verdict.reset_index().to_dict(orient="records"),
    }
    print(json.dumps(info, default=str, indent=1))
    print(_table(rows))
    print(_conclusion(name, rows, attribute))
    return rows


def _ci(t: tuple[float, float, float] | None) -> str:
    if t is None:
        return ""
    return f"{t[0]:+.3f} [{t[1]:+.3f}, {t[2]:+.3f}]"


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| arm | overall AUC | worst-group AUC | worst-group TPR | AUC gap | Δ gap vs real [CI] "
        "| Δ worst AUC vs real [CI] | s (train+predict) | time / real |"
    )
    out = [head, "|" + " --- |" * 9]
    for r in rows:
        gap = _ci(r.get("gap_delta")) + (" *" if r.get("gap_sig") else "")
        worst = _ci(r.get("worst_delta")) + (" *" if r.get("worst_sig") else "")
        out.append(
            f"| {r['arm']} | {r['auc']:.3f} | {r['worst_auc']:.3f} | {r['worst_tpr']:.3f} | "
            f"{r['gap']:.3f} | {gap} | {worst} | {r['s']:.0f} | {r['time_ratio']:.2f} |"
        )
    return "\n".join(out) + "\n(* significant after Holm adjustment within the gap table)"


def _conclusion(name: str, rows: list[dict[str, Any]], attribute: str) -> str:
    credited = [
        r["arm"]
        for r in rows
        if r["arm"] != "real"
        and (
            (r.get("gap_sig") and r["gap_delta"][0] < 0)
            or (r.get("worst_sig") and r["worst_delta"][0] > 0)
        )
    ]
    lines = [f"truth ({name}): {TRUTH.get(name, '?')}"]
    lines.append(
        f"study: arms credited with a smaller {attribute} gap or a better worst group: "
        f"{', '.join(credited) or 'none'}"
    )
    if name == "demo-underrep":
        ok = "oracle-balanced" in credited
        lines.append(f"agrees with the truth: {'yes' if ok else 'NO (oracle arm not credited)'}")
    else:
        ok = not credited
        lines.append(f"agrees with the truth: {'yes' if ok else 'NO (an arm was credited)'}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", action="append", choices=sorted(TRUTH), default=None)
    ap.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    ap.add_argument("--synth-epochs", type=int, default=12, help="x 50 steps of the VAE-GAN")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=None, help="a folder to keep the outputs in")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="medgen-bench-study-"))
    print(f"outputs in {work}; load before start: {os.getloadavg()}")
    for name in args.preset or list(TRUTH):
        run_preset(name, args, work)


if __name__ == "__main__":
    main()
