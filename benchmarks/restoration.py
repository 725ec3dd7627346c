"""Benchmark: learned denoising / super-resolution vs classical baselines on unseen real images.

Training data: axial slices of nilearn's MNI152 T1 template (1 mm) inside a band of slices
(``--train-band``), at 1, 2 and 3 mm in plane; the denoiser also trains on scikit-image's bundled
grey-level sample images (``--natural``; none of them is a test image). Test data (never seen in
training): nibabel's ``example4d.nii.gz`` (first volume) and ``anatomical.nii``, pydicom's
``MR_small`` and ``CT_small``, and MNI slices outside the training band. Degradations: Gaussian
and Rician noise, sigma 0.05 and 0.1 of each clean image's intensity range
(``medgen.simulate.degrade``); SR x2 and x4 by block averaging.

Printed: mean PSNR / SSIM (whole image and foreground, data range = clean max - min) for the
input, each baseline (NL-means, TV, wavelet, BM3D when installed; bicubic for SR) and the model,
seconds per slice, and ratios: dB gained over NL-means / bicubic, speed relative to BM3D. Each
model is evaluated twice: one pass (``model``) and the self-ensemble over the 8 in-plane
rotations/flips (``model_x8``, 8x the inference time).

Run in one process (CPU): ``python benchmarks/restoration.py`` (about 23 min with the default
budgets); ``--skip-compare --skip-sr`` for the denoiser alone (about 16 min); ``--evaluate-only``
re-evaluates the models a run left in ``--out``; ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _mni() -> np.ndarray:
    from nilearn.datasets import load_mni152_template

    vol = np.asarray(load_mni152_template(resolution=1).get_fdata(), dtype=np.float32)
    return vol


def natural_images() -> list[np.ndarray]:
    """Grey-level scikit-image sample images (none of them is a test image), about 256 px.

    Bundled with scikit-image (no download). Images larger than 400 px are block-averaged by 2 so
    that every training slice costs about the same to degrade as an MNI slice.
    """
    from skimage import color, data

    out = []
    for name in (
        "camera", "moon", "coins", "cell", "text", "page", "clock", "brick", "grass", "gravel",
        "shepp_logan_phantom", "astronaut", "chelsea", "coffee",
    ):  # fmt: skip
        a = np.asarray(getattr(data, name)(), dtype=np.float64)
        if a.ndim == 3:
            a = color.rgb2gray(a / 255.0)
        a = a.astype(np.float32)
        if max(a.shape) > 400:
            nx, ny = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
            a = a[:nx, :ny].reshape(nx // 2, 2, ny // 2, 2).mean(axis=(1, 3))
        out.append(a)
    return out


def test_images(band: tuple[int, int]) -> list[tuple[str, str, np.ndarray]]:
    """``(name, source, 2D slice)`` for every test slice."""
    import nibabel as nib
    from pydicom.data import get_testdata_file

    from medgen.io import load

    out: list[tuple[str, str, np.ndarray]] = []
    ndir = Path(nib.__file__).parent / "tests" / "data"
    ex4d = np.asarray(load(ndir / "example4d.nii.gz")[0])
    for z in (8, 12, 16):
        out.append((f"example4d_z{z}", "nibabel example4d", ex4d[..., z]))
    anat = np.asarray(load(ndir / "anatomical.nii")[0])
    for z in (10, 13, 16):
        out.append((f"anatomical_z{z}", "nibabel anatomical", anat[..., z]))
    for name in ("MR_small.dcm", "CT_small.dcm"):
        img = np.asarray(load(get_testdata_file(name))[0])[..., 0]
        out.append((name[:-4], f"pydicom {name[:-4]}", img))
    mni = _mni()
    lo, hi = band
    for z in (lo - 25, lo - 15, hi + 5, hi + 15):  # brain ends near z = 150
        out.append((f"mni_z{z}", "MNI outside band", mni[..., z]))
    return out


def _model_rows(
    model: Any, images: list[np.ndarray], ensemble_only: bool = False, **degradation: Any
) -> list[pd.DataFrame]:
    """The model's rows of ``evaluate``: ``model`` (one pass) and ``model_x8`` (self-ensemble
    over the 8 rotations/flips, ``RestorerConfig.self_ensemble``)."""
    from medgen.generative import evaluate

    rows = []
    was = model.config.self_ensemble
    try:
        for ens in (False, True) if not ensemble_only else (True,):
            model.config.self_ensemble = ens
            t = evaluate(model, images, baselines=[], progress=False, **degradation)
            t = t[t.method == "model"].copy()
            t["method"] = "model_x8" if ens else "model"
            rows.append(t)
    finally:
        model.config.self_ensemble = was
    return rows


def _table(df: pd.DataFrame, ref: str, bm3d_row: bool) -> pd.DataFrame:
    g = df.groupby("method")[["psnr", "ssim", "psnr_fg", "ssim_fg", "seconds_per_slice"]].mean()
    g[f"dB_vs_{ref}"] = g["psnr"] - g.loc[ref, "psnr"]
    if bm3d_row and "bm3d" in g.index:
        g["speed_vs_bm3d"] = g.loc["bm3d", "seconds_per_slice"] / g["seconds_per_slice"].replace(
            0, np.nan
        )
    return g.sort_values("psnr")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--denoise-budget", type=float, default=900.0, help="s of U-Net denoiser training"
    )
    ap.add_argument(
        "--compare-budget", type=float, default=120.0, help="s for the U-Net vs VAE comparison"
    )
    ap.add_argument("--sr-budget", type=float, default=150.0, help="s of training per SR model")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for the network (1 + one --workers process fill 2 cores; 2 threads "
        "beside a worker ran slower)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="background processes making training pairs (1: pairs on one core, the network on "
        "the other; 1.7x the steps per second of 0 on 2 cores)",
    )
    ap.add_argument("--train-band", type=int, nargs=2, default=(60, 130))
    ap.add_argument("--channels", default="16,32,64,128")
    ap.add_argument("--patch-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--out", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "medgen_restoration"
    )
    ap.add_argument("--lr", type=float, default=3e-3, help="generator learning rate")
    # denoiser loss: MSE only (PSNR is an MSE metric); measured against L1 + 0.1 (1 - SSIM) in
    # docs/restoration.md. SR keeps L1 + 0.1 (1 - SSIM).
    ap.add_argument("--l1-weight", type=float, default=0.0, help="denoiser L1 weight")
    ap.add_argument("--mse-weight", type=float, default=1.0, help="denoiser MSE weight")
    ap.add_argument("--ssim-weight", type=float, default=0.0, help="denoiser 1 - SSIM weight")
    ap.add_argument(
        "--natural",
        type=int,
        default=5,
        help="add the scikit-image sample images to the denoiser's training pool, each this "
        "many times (0: MNI only)",
    )
    ap.add_argument(
        "--skip-compare",
        action="store_true",
        help="no U-Net vs VAE comparison: the U-Net trains --denoise-budget s in one go",
    )
    ap.add_argument("--skip-sr", action="store_true", help="no super-resolution part")
    ap.add_argument(
        "--evaluate-only",
        action="store_true",
        help="no training: evaluate the models a previous run saved in --out",
    )
    ap.add_argument("--quick", action="store_true", help="tiny budgets (smoke test)")
    args = ap.parse_args()

    import torch

    from medgen.generative import Denoiser, SuperResolver, evaluate
    from medgen.generative.baselines import bm3d_available

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        args.denoise_budget, args.compare_budget, args.sr_budget = 20.0, 10.0, 10.0
    channels = tuple(int(c) for c in args.channels.split(","))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    band = (int(args.train_band[0]), int(args.train_band[1]))
    mni = _mni()
    train_vol = mni[..., band[0] : band[1]]
    # the same slices at 1, 2 and 3 mm in plane (block averages): unseen clinical images are
    # coarser than the 1 mm template; in a 70-s trial this lifted mean PSNR by ~0.3 dB
    from medgen.simulate import degrade

    train_set = [train_vol]
    for f in (2, 3):
        nx, ny = (s - s % f for s in train_vol.shape[:2])
        train_set.append(np.asarray(degrade(train_vol[:nx, :ny], downsample=f, seed=0).degraded))
    tests = test_images(band)
    names = [t[0] for t in tests]
    sources = {f"image{i}": t[1] for i, t in enumerate(tests)}
    images = [t[2].astype(np.float32) for t in tests]
    print(
        f"train: MNI152 axial slices z={band[0]}..{band[1] - 1} at 1, 2 and 3 mm in plane "
        f"({[v.shape for v in train_set]})"
    )
    print(f"test: {len(images)} slices: {', '.join(names)}")
    print(
        f"bm3d installed: {bm3d_available()}; torch threads: {args.threads}; "
        f"pair workers: {args.workers}\n"
    )

    def cfg(budget: float, seed: int = 0, sr: bool = False) -> dict[str, object]:
        return {
            "epochs": 100_000,
            "steps_per_epoch": 50,
            "batch_size": args.batch_size,
            "time_budget_s": budget,
            "seed": seed,
            "device": "cpu",
            "num_workers": args.workers,
            "ema_decay": 0.99,
            "lr_g": args.lr,
            "l1_weight": 1.0 if sr else args.l1_weight,
            "mse_weight": 0.0 if sr else args.mse_weight,
            "ssim_weight": 0.1 if sr else args.ssim_weight,
        }

    conditions = [("gaussian", 0.05), ("gaussian", 0.1), ("rician", 0.05), ("rician", 0.1)]
    if args.quick:
        conditions = [("gaussian", 0.1)]
        images, names = images[:8], names[:8]

    # ------------------------------------------------ U-Net vs VAE at the same short budget
    def den_model(kind: str) -> Denoiser:
        return Denoiser(
            model=kind,
            channels=channels if kind == "unet" else channels[:3],
            patch_size=args.patch_size,
            noise=["gaussian", "rician"],
            sigma=(0.03, 0.12),
        )

    den_train = list(train_set)
    if args.natural > 0:
        nat = natural_images()
        den_train += nat * args.natural
        print(f"denoiser also trains on {len(nat)} scikit-image sample images x {args.natural}")
    compare = []
    unet_dir = out / "denoise_unet"
    trained: dict[str, Denoiser] = {}
    for kind in () if args.skip_compare or args.evaluate_only else ("unet", "vae"):
        m = den_model(kind)
        t0 = time.perf_counter()
        m.fit(
            den_train,
            run_dir=out / f"denoise_{kind}",
            config=cfg(args.compare_budget),
            overwrite=True,  # a new benchmark run trains anew
            progress=False,
        )
        secs = time.perf_counter() - t0
        tab = evaluate(m, images, noise="gaussian", sigma=0.1, baselines=[], progress=False)
        r = tab[tab.method == "model"][["psnr", "ssim", "seconds_per_slice"]].mean()
        compare.append({"model": kind, "train_s": secs, "steps": m.steps_trained, **r.to_dict()})
        trained[kind] = m
    if compare:
        print("\n== U-Net vs VAE denoiser, same training budget, Gaussian sigma 0.1 ==")
        print(pd.DataFrame(compare).set_index("model").round(3).to_string())

    # ------------------------------------------------ continue the U-Net (identical resume)
    done = 0.0 if args.skip_compare else args.compare_budget
    rest = max(args.denoise_budget - done, 1.0)
    if args.evaluate_only:
        den = Denoiser.load(unet_dir)
        print(f"U-Net denoiser loaded from {unet_dir}: {den.steps_trained} steps")
    else:
        den = den_model("unet")
        t0 = time.perf_counter()
        den.fit(
            den_train,
            run_dir=unet_dir,
            config=cfg(rest),
            resume=not args.skip_compare,
            overwrite=args.skip_compare,
            progress=False,
        )
        print(
            f"\nU-Net denoiser trained {done + time.perf_counter() - t0:.0f} s in total, "
            f"{den.steps_trained} steps"
        )
        pd.DataFrame(den.history).to_csv(out / "denoise_unet_history.csv", index=False)

    # ------------------------------------------------ baselines (after training)
    base: dict[tuple[str, float], pd.DataFrame] = {}
    for noise, sigma in conditions:
        t0 = time.perf_counter()
        base[(noise, sigma)] = evaluate(
            None, images, task="denoise", noise=noise, sigma=sigma, progress=False
        )
        print(f"baselines {noise} {sigma}: {time.perf_counter() - t0:.0f} s")

    all_rows = []
    for noise, sigma in conditions:
        df = pd.concat(
            [base[(noise, sigma)], *_model_rows(den, images, noise=noise, sigma=sigma)],
            ignore_index=True,
        )
        df["source"] = df["image_id"].map(sources)
        all_rows.append(df)
        print(f"\n== denoise {noise} sigma={sigma} (mean over {len(images)} unseen slices) ==")
        print(_table(df, "nl_means", True).round(3).to_string())
    full = pd.concat(all_rows, ignore_index=True)
    full.to_csv(out / "denoise_per_image.csv", index=False)
    g01 = full[(full.noise == "gaussian") & (full.sigma == 0.1)]
    print("\n== denoise Gaussian 0.1: PSNR by test source (subgroup) ==")
    print(g01.pivot_table(index="source", columns="method", values="psnr").round(2).to_string())

    # ------------------------------------------------ super-resolution
    sr_rows = []
    for scale in () if args.skip_sr else (2, 4):
        if args.evaluate_only:
            sr = SuperResolver.load(out / f"sr_x{scale}")
        else:
            sr = SuperResolver(scale=scale, channels=channels, patch_size=args.patch_size)
            t0 = time.perf_counter()
            sr.fit(
                train_set,
                run_dir=out / f"sr_x{scale}",
                config=cfg(args.sr_budget, sr=True),
                overwrite=True,
                progress=False,
            )
            print(f"\nSR x{scale} trained {time.perf_counter() - t0:.0f} s")
        df = evaluate(sr, images, progress=False)
        df = pd.concat([df, _model_rows(sr, images, ensemble_only=True)[0]], ignore_index=True)
        df["source"] = df["image_id"].map(sources)
        sr_rows.append(df)
        print(f"== super-resolution x{scale} (mean over {len(images)} unseen slices) ==")
        print(_table(df, "bicubic", False).round(3).to_string())
        mni_only = df[df.source == "MNI outside band"].groupby("method")["psnr"].mean()
        print(f"MNI slices only: {mni_only.round(2).to_dict()}")
    if sr_rows:
        pd.concat(sr_rows, ignore_index=True).to_csv(out / "sr_per_image.csv", index=False)
    print(f"\nper-image tables and runs in {out}")


if __name__ == "__main__":
    main()
