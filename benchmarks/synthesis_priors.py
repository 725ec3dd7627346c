"""Benchmark: other sampling priors for a trained VAE-GAN, with its weights unchanged.

Question (issue 12): the VAE-GAN's samples reach a lower label fidelity and TSTR AUC than its
reconstructions of real images (docs/synthesis.md), so is its sampler, the fitted Gaussian per
condition combination (``medgen/generative/_latent_prior.py``), what loses the label? This
script loads a saved run (``--run``, e.g. ``benchmarks/synthesis.py``'s ``OUT/runs/vae-gan``),
encodes the train split of ``--cohort`` with it, and evaluates ``Synthesizer.evaluate`` (the same
call and settings as ``benchmarks/synthesis.py``) once per prior of ``--variants``:

- ``rankR``: the shipped prior refitted with ``R`` principal directions (``MAX_RANK``; the
  shipped default, 64, is the baseline row: it reproduces the run's own evaluation);
- ``anchorL``: an experiment, not a medgen feature. Each draw picks a training latent ``z_i`` of
  its combination (by a hash of its noise, so draws stay pure in the noise) and keeps a share
  ``L`` of its deviation from the combination's mean: ``z = m_c + L (z_i - m_c) + sqrt(1 - L^2)
  (g - m_c)`` with ``g`` the fitted prior's draw, so the mean and covariance are the prior's
  at every ``L`` (``L = 0``: the prior; ``L = 1``: the training latent itself). It measures how
  much the non-Gaussian structure of real latents is worth, at what cost in near-copies. It
  needs the training latents at sampling time, so a model sampling this way would carry
  (decodable) latents of real patients: not shipped.

Printed: each variant's quality, label fidelity, TSTR and near-copy rate, and the differences
from the baseline row (same weights, same evaluation seed, same process). About 4-8 minutes per
variant on one thread (evaluation classifier and TSTR training included).

    OMP_NUM_THREADS=1 python benchmarks/synthesis_priors.py --run OUT/runs/vae-gan \\
        --cohort OUT/cohort_demo/manifest.csv --variants rank64,rank256,anchor0.5,anchor0.8
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


class AnchoredPrior(nn.Module):
    """The fitted prior's draw pulled a share ``lam`` of the way towards a training latent of
    the same combination (see the module docstring); ``lam = 0`` is the prior itself."""

    def __init__(self, base: Any, latents: np.ndarray, cells: np.ndarray, lam: float) -> None:
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise SystemExit(f"anchor share must be in [0, 1], not {lam}")
        self.base, self.lam = base, lam
        self.latents = torch.from_numpy(np.asarray(latents, dtype=np.float32))
        self.cells = np.asarray(cells)

    def forward(self, noise: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        g = self.base(noise, cells).reshape(noise.shape[0], -1).float()
        out = []
        for b, c in enumerate(cells.cpu().numpy()):
            pool = np.flatnonzero(self.cells == c)
            m = self.base.mean[int(c)].float()
            if len(pool) == 0:  # a combination without training images: the prior's draw
                out.append(g[b])
                continue
            k = int(abs(float(noise[b].flatten()[:8].sum()) * 1e6)) % len(pool)
            anchor = self.latents[pool[k]]
            out.append(m + self.lam * (anchor - m) + math.sqrt(1 - self.lam**2) * (g[b] - m))
        return torch.stack(out).reshape(noise.shape).to(noise.dtype)


def training_latents(syn: Any, manifest: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Posterior means of the train split (``N x D``), their combination cells, the cell count."""
    images, _, index, _, _ = syn._training_data(manifest)
    latents = syn._posterior_means(images)
    return latents, syn._combined(index), math.prod(syn._num_classes())


def make_prior(variant: str, latents: np.ndarray, cells: np.ndarray, n_cells: int) -> Any:
    from medgen.generative._latent_prior import LatentPrior

    if variant.startswith("rank"):
        return LatentPrior.fit(latents, cells, n_cells, max_rank=int(variant[4:]))
    if variant.startswith("anchor"):
        base = LatentPrior.fit(latents, cells, n_cells)
        return AnchoredPrior(base, latents, cells, float(variant[6:]))
    raise SystemExit(f"--variants: unknown variant {variant!r}; use rankR or anchorL")


def measure(syn: Any, manifest: Path, args: argparse.Namespace) -> dict[str, float]:
    ev = syn.evaluate(
        manifest,
        n=None,
        by=("label", "sex"),
        target="label",
        seed=args.seed,
        classifier_epochs=args.classifier_epochs,
        kid_subsets=args.kid_subsets,
    )
    o = ev.quality.loc[("overall", "all")]
    f = ev.fidelity.loc[("label", "overall")]
    t = ev.tstr
    return {
        "fid/floor": float(o["fid"] / o["fid_floor"]),
        "precision": float(o["precision"]),
        "recall": float(o["recall"]),
        "coverage": float(o["coverage"]),
        "label fidelity": float(f["auc"]),
        "fidelity real": float(f["auc_real"]),
        "fidelity recon": float(f["auc_reconstruction"]),
        "tstr": float(t.loc["synthetic", "auc"]),
        "trtr": float(t.loc["real", "auc"]),
        "tstr recon": float(t.loc["reconstructions", "auc"]),
        "near-copy rate": float(ev.near_copies.loc[("overall", "all"), "near_copy_rate"]),
    }


def main() -> None:
    import pandas as pd

    import medgen.generative as gen

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", type=Path, required=True, help="a saved vae-gan Synthesizer run")
    ap.add_argument("--cohort", type=Path, required=True, help="the manifest it trained on")
    ap.add_argument("--variants", default="rank64,rank256,anchor0.5,anchor0.8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--classifier-epochs", type=int, default=20)
    ap.add_argument("--kid-subsets", type=int, default=100)
    ap.add_argument("--out", type=Path, default=None, help="write the table here (CSV)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    syn = gen.load(args.run)
    if syn.model != "vae-gan":
        raise SystemExit(f"--run: {args.run} is a {syn.model!r} run; this compares vae-gan priors")
    latents, cells, n_cells = training_latents(syn, args.cohort)
    print(f"{args.run}: {latents.shape[0]} training latents of {latents.shape[1]} values")
    rows = []
    for v in [s.strip() for s in args.variants.split(",") if s.strip()]:
        t = time.perf_counter()
        syn.nets["latent_prior"] = make_prior(v, latents, cells, n_cells)
        rows.append({"prior": v, **measure(syn, args.cohort, args), "s": time.perf_counter() - t})
        print(
            " ".join(
                f"{k} {val:.3f}" if isinstance(val, float) else str(val)
                for k, val in rows[-1].items()
            ),
            flush=True,
        )
    df = pd.DataFrame(rows).set_index("prior")
    base = df.iloc[0]
    delta = (df - base).drop(columns=["s"]).add_suffix(" - base")
    print(f"\nbaseline: {df.index[0]} (the first variant; rank64 is the shipped prior)")
    print(df.T.to_string(float_format=lambda x: f"{x:.3f}"))
    print(
        delta[["label fidelity - base", "tstr - base", "near-copy rate - base"]].T.to_string(
            float_format=lambda x: f"{x:+.3f}"
        )
    )
    if args.out is not None:
        df.to_csv(args.out)


if __name__ == "__main__":
    main()
