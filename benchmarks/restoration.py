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

**Shipped pretrained models** (``--pretrained``): ``pretrained:mri`` / ``pretrained:ct``
(denoisers, blind: ``model.apply(x)``, noise level estimated), ``pretrained:x2`` /
``pretrained:x4`` (2D in-plane SR) and ``pretrained:through_x4`` (3D thick-slice SR), loaded with
``medgen.generative.load("pretrained:NAME")`` or from a run folder (``--model NAME=RUN_DIR``), on
the held-out set only:

- slices (:func:`test_images`): the 12 above plus pydicom-data's ``693_UNCR`` (CT, 512x512),
  ``MR2_UNCR`` (MR, 1024x1024 block-averaged by 2 to 512x512 at 0.39 mm: BM3D on the full image
  alone costs about 30 s per setting) and ``MR-SIEMENS-DICOM-WithOverlays`` (MR, 484x484); every
  file whose content is held out, in every compression, is listed by :func:`held_out_files`;
- volumes (:func:`test_volumes`): nibabel's ``anatomical.nii`` and two MNI152 1 mm sub-volumes
  below and above the training band (4 slices away from it), Z a multiple of 4.

Settings: Gaussian sigma 0.05 and 0.1 of the range on every slice; Rician 0.05 and 0.1 on the MR
slices (a magnitude-image model: on CT in HU it would fold air to +1000 HU); Poisson-Gaussian
low-dose noise on the CT slices in HU (photons per slice chosen so that soft tissue at 40 HU gets
``--ct-noise-hu`` s.d., ``--ct-electronic-hu`` of it Gaussian; the measured s.d. in soft tissue,
-100..100 HU, is printed); SR x2 and x4 on every slice; through-plane x4 on the volumes. Metric
per setting: PSNR, foreground PSNR (``psnr_fg``) for Rician (both are printed for all).

Rows: ``input``, ``nl_means``, ``bm3d``, ``pretrained`` (the MR denoiser on MR slices, the CT one
on CT slices) and ``pretrained_x8`` (self-ensemble), ``scratch`` (the recipe above trained
``--scratch-budget`` s; ``--skip-scratch``); SR: ``bicubic`` or ``cubic_z`` / ``linear_z`` vs
``pretrained`` / ``pretrained_x8``. Tables per setting (mean over slices, dB vs BM3D / bicubic /
cubic_z, speed vs BM3D), per held-out source, and the targets (pretrained denoiser >= BM3D + 0.3
dB on the mean of every setting and >= 10x its speed, one pass; SR >= bicubic + 1.5 dB at x2 and
x4 and through-plane >= cubic_z + 1 dB on every source), also as CSV in ``--out``. About 15 min
on 2 CPU cores without the scratch row: ``python benchmarks/restoration.py --pretrained
--skip-scratch``.
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


#: held-out source -> modality ("mr" or "ct"): CT slices are in HU and get HU-appropriate noise
SOURCE_MODALITY = {
    "nibabel example4d": "mr",
    "nibabel anatomical": "mr",
    "pydicom MR_small": "mr",
    "pydicom CT_small": "ct",
    "MNI outside band": "mr",
    "pydicom-data 693_UNCR": "ct",
    "pydicom-data MR2_UNCR": "mr",
    "pydicom-data MR-SIEMENS": "mr",
}
#: pydicom-data files held out: (file loaded, prefix of every other compression of its content)
PYDICOM_DATA_HELD_OUT = (
    ("693_UNCR.dcm", "693_"),
    ("MR2_UNCR.dcm", "MR2_"),
    ("MR-SIEMENS-DICOM-WithOverlays.dcm", "MR-SIEMENS-"),
)


def modality(source: str) -> str:
    """``"mr"`` or ``"ct"`` for a held-out ``source`` (the second entry of :func:`test_images`)."""
    return SOURCE_MODALITY[source]


def _nibabel_dir() -> Path:
    import nibabel as nib

    return Path(nib.__file__).parent / "tests" / "data"


def _pydicom_data_dir() -> Path:
    import data_store  # the pydicom-data package

    return Path(os.path.dirname(data_store.__file__)) / "data"


def _pydicom_dir() -> Path:
    from pydicom.data import get_testdata_file

    return Path(str(get_testdata_file("MR_small.dcm"))).parent


def held_out_files() -> list[Path]:
    """Every file whose content is held out (training must not read any of them).

    nibabel's ``example4d.nii.gz`` and ``anatomical.nii``; pydicom's ``CT_small.dcm`` and
    ``MR_small*.dcm`` (all its encodings); pydicom-data's ``693_*``, ``MR2_*`` and
    ``MR-SIEMENS-*`` (every compression of the three scans). The MNI152 template is not listed:
    only its axial slices outside the training band are held out (``--train-band``).
    """
    nd, pd_dir, store = _nibabel_dir(), _pydicom_dir(), _pydicom_data_dir()
    files = [nd / "example4d.nii.gz", nd / "anatomical.nii", pd_dir / "CT_small.dcm"]
    files += sorted(pd_dir.glob("MR_small*.dcm"))
    for _, prefix in PYDICOM_DATA_HELD_OUT:
        files += sorted(store.glob(f"{prefix}*"))
    return files


def _block2(a: np.ndarray) -> np.ndarray:
    nx, ny = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    return a[:nx, :ny].reshape(nx // 2, 2, ny // 2, 2).mean(axis=(1, 3)).astype(np.float32)


def test_images(band: tuple[int, int]) -> list[tuple[str, str, np.ndarray]]:
    """``(name, source, 2D slice)`` for every held-out test slice (:func:`modality` of source).

    nibabel example4d (first volume) z 8/12/16 and anatomical z 10/13/16, pydicom MR_small and
    CT_small, MNI152 1 mm axial slices outside ``band``, and pydicom-data's 693_UNCR (CT, HU),
    MR2_UNCR (block-averaged by 2: 512x512) and MR-SIEMENS-DICOM-WithOverlays, in their own units.
    """
    from pydicom.data import get_testdata_file

    from medgen.io import load

    out: list[tuple[str, str, np.ndarray]] = []
    ndir = _nibabel_dir()
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
    store = _pydicom_data_dir()
    for fname, _ in PYDICOM_DATA_HELD_OUT:
        img = np.asarray(load(store / fname)[0])[..., 0].astype(np.float32)
        if fname.startswith("MR2_"):
            img = _block2(img)
        stem = fname[:-4] if not fname.startswith("MR-SIEMENS") else "MR-SIEMENS"
        out.append((stem, f"pydicom-data {stem}", img))
    return out


def test_volumes(band: tuple[int, int]) -> list[tuple[str, str, np.ndarray]]:
    """``(name, source, volume (X, Y, Z))`` held out for through-plane SR, Z a multiple of 4.

    nibabel's ``anatomical.nii`` (2 mm, first 24 of its 25 slices) and the MNI152 1 mm template's
    axial slices ``band[0] - 36 .. band[0] - 5`` and ``band[1] + 4 .. band[1] + 35`` (32 each,
    4 slices away from the training band), cropped in plane to the head's bounding box.
    """
    from medgen.io import load

    anat = np.asarray(load(_nibabel_dir() / "anatomical.nii")[0], dtype=np.float32)
    out = [("anatomical", "nibabel anatomical", anat[..., : anat.shape[-1] // 4 * 4])]
    mni = _mni()
    head = np.argwhere(mni.max(axis=2) > 0.05 * float(mni.max()))
    (x0, y0), (x1, y1) = head.min(axis=0), head.max(axis=0) + 1
    lo, hi = band
    for z0 in (max(lo - 36, 0), hi + 4):
        vol = mni[x0:x1, y0:y1, z0 : z0 + 32]
        if vol.shape[-1] == 32:
            out.append((f"mni_z{z0}-{z0 + 31}", "MNI outside band", np.ascontiguousarray(vol)))
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


# ---------------------------------------------------------------------------------- --pretrained
#: the shipped restoration models: name -> (task, scale, axes)
PRETRAINED: dict[str, tuple[str, int | None, str | None]] = {
    "mri": ("denoise", None, None),
    "ct": ("denoise", None, None),
    "x2": ("superres", 2, "inplane"),
    "x4": ("superres", 4, "inplane"),
    "through_x4": ("superres", 4, "through"),
}
#: the pretrained denoiser of each modality (the ``pretrained`` row)
DENOISER_FOR = {"mr": "mri", "ct": "ct"}
#: denoising settings: name, noise, sigma (of the range), modalities, metric of the targets
DENOISE_SETTINGS: tuple[tuple[str, str, float, tuple[str, ...], str], ...] = (
    ("gaussian 0.05", "gaussian", 0.05, ("mr", "ct"), "psnr"),
    ("gaussian 0.1", "gaussian", 0.1, ("mr", "ct"), "psnr"),
    ("rician 0.05", "rician", 0.05, ("mr",), "psnr_fg"),
    ("rician 0.1", "rician", 0.1, ("mr",), "psnr_fg"),
    ("low-dose CT", "poisson_gaussian", 0.0, ("ct",), "psnr"),
)
#: SR settings: name, pretrained model, baseline the targets use, other baselines, dB target
SR_SETTINGS: tuple[tuple[str, str, str, tuple[str, ...], float], ...] = (
    ("SR x2", "x2", "bicubic", (), 1.5),
    ("SR x4", "x4", "bicubic", (), 1.5),
    ("through-plane x4", "through_x4", "cubic_z", ("linear_z",), 1.0),
)
SOFT_TISSUE_HU = (-100.0, 100.0)


def load_pretrained_models(overrides: list[str]) -> dict[str, Any]:
    """The pretrained models by name: ``load("pretrained:NAME")``, or the run folder of a
    ``NAME=RUN_DIR`` override. A model that does not load is reported and left out."""
    from medgen.generative import load

    paths: dict[str, str] = {}
    for item in overrides:
        name, sep, path = item.partition("=")
        if not sep or name not in PRETRAINED or not path:
            raise SystemExit(
                f"--model {item!r}: expected NAME=RUN_DIR with NAME one of {list(PRETRAINED)}"
            )
        paths[name] = path
    models: dict[str, Any] = {}
    for name, (task, scale, axes) in PRETRAINED.items():
        src = paths.get(name, f"pretrained:{name}")
        try:
            model = load(src)
        except Exception as err:  # a missing model drops its rows; the others still run
            print(f"{name}: not loaded from {src} ({type(err).__name__}: {err}); rows skipped")
            continue
        got = (model.task, getattr(model, "scale", None), getattr(model, "axes", None))
        if got != (task, scale, axes):
            raise SystemExit(
                f"--model {name}={src}: holds a {got} model, not the {name} model "
                f"{(task, scale, axes)} (task, scale, axes)"
            )
        models[name] = model
        print(f"{name}: {src}: {model!r}, {model.steps_trained} steps")
    return models


def ct_dose(image: np.ndarray, noise_hu: float, electronic_hu: float) -> tuple[float, float]:
    """``(sigma, photons)`` of :func:`medgen.simulate.degrade` ``"poisson_gaussian"`` giving a CT
    slice in HU ``noise_hu`` s.d. at 40 HU, ``electronic_hu`` of it Gaussian.

    degrade's Poisson s.d. is ``sqrt(range * (x - min) / photons)`` in image units and its
    Gaussian s.d. ``sigma * range``, with ``range = max - min`` of the clean slice.
    """
    lo, hi = float(image.min()), float(image.max())
    width = hi - lo
    poisson_var = noise_hu**2 - electronic_hu**2
    if poisson_var <= 0 or electronic_hu < 0 or width <= 0 or lo >= 40.0:
        raise SystemExit(
            f"low-dose CT: need --ct-noise-hu > --ct-electronic-hu >= 0 and a slice in HU "
            f"spanning 40 HU (got {noise_hu}, {electronic_hu}, range {lo}..{hi})"
        )
    return electronic_hu / width, width * (40.0 - lo) / poisson_var


def _evaluated(
    model: Any, image: np.ndarray, method: str, ensemble: bool = False, **kw: Any
) -> pd.DataFrame:
    """The model's row of ``evaluate`` on one image, named ``method``."""
    from medgen.generative import evaluate

    was = model.config.self_ensemble
    model.config.self_ensemble = ensemble
    try:
        t = evaluate(model, [image], baselines=[], progress=False, **kw)
    finally:
        model.config.self_ensemble = was
    t = t[t.method == "model"].copy()
    t["method"] = method
    return t


def _warm_up(models: dict[str, Any], bm3d: bool) -> None:
    """One call of every model (and BM3D) before anything is timed."""
    from medgen.generative.baselines import denoise_baseline

    rng = np.random.default_rng(0)
    for m in models.values():
        shape = (32, 32, 32) if m.config.spatial_dims == 3 else (64, 64)
        m.apply(rng.random(shape, dtype=np.float32))
    denoise_baseline(rng.random((32, 32)), "nl_means")
    if bm3d:
        denoise_baseline(rng.random((32, 32)), "bm3d")


def _summary(df: pd.DataFrame, ref: str, metric: str) -> pd.DataFrame:
    """Mean metrics per method, dB of ``metric`` vs ``ref``, speed vs BM3D (when present)."""
    g = df.groupby("method")[["psnr", "psnr_fg", "ssim", "ssim_fg", "seconds_per_slice"]].mean()
    g["n_images"] = df.groupby("method")["image_id"].nunique()
    g[f"dB_vs_{ref}"] = g[metric] - g.loc[ref, metric]
    if "bm3d" in g.index:
        g["speed_vs_bm3d"] = g.loc["bm3d", "seconds_per_slice"] / g["seconds_per_slice"].replace(
            0, np.nan
        )
    return g.sort_values(metric)


def _by_source(df: pd.DataFrame, ref: str, metric: str) -> pd.DataFrame:
    """``metric`` per held-out source and method, and each learned row's dB vs ``ref``."""
    p = df.pivot_table(index="source", columns="method", values=metric, aggfunc="mean")
    for m in [c for c in ("pretrained", "pretrained_x8", "scratch") if c in p.columns]:
        p[f"{m}-{ref}"] = p[m] - p[ref]
    p.columns.name = None
    return p


def run_pretrained(args: argparse.Namespace) -> None:
    """``--pretrained``: the shipped models against the classical baselines on the held-out set."""
    import torch

    from medgen.generative import evaluate
    from medgen.generative.baselines import bm3d_available
    from medgen.simulate import degrade

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    t_start = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    band = (int(args.train_band[0]), int(args.train_band[1]))
    slices = test_images(band)
    volumes = test_volumes(band)
    settings = [] if args.skip_denoise else list(DENOISE_SETTINGS)
    sr_settings = [] if args.skip_sr else list(SR_SETTINGS)
    if args.quick:
        keep = {"example4d_z8", "MR_small", "CT_small", f"mni_z{band[0] - 25}"}
        slices = [s for s in slices if s[0] in keep]
        volumes = volumes[:1]
        settings = [s for s in settings if s[0] in ("gaussian 0.1", "rician 0.1", "low-dose CT")]
        args.scratch_budget = min(args.scratch_budget, 10.0)
    bm3d = bm3d_available()
    ref_den = "bm3d" if bm3d else "nl_means"
    base_methods = ["nl_means", "bm3d"] if bm3d else ["nl_means"]
    print(
        f"held out: {len(slices)} slices ({', '.join(s[0] for s in slices)}); "
        f"{len(volumes)} volumes ({', '.join(f'{n} {v.shape}' for n, _, v in volumes)})"
    )
    print(f"bm3d installed: {bm3d}; torch threads: {args.threads}")
    if not bm3d:
        print("  (pip install bm3d for the BM3D rows; the denoising targets then use NL-means)")

    scratch = None
    if not args.skip_scratch:
        run = out / "scratch_denoise"
        if args.evaluate_only:
            from medgen.generative import Denoiser

            scratch = Denoiser.load(run)
        else:
            t0 = time.perf_counter()
            scratch = _den_model(args, "unet")
            scratch.fit(
                _den_train(_train_set(band), args.natural),
                run_dir=run,
                config=_engine_config(args, args.scratch_budget),
                overwrite=True,
                progress=False,
            )
            print(
                f"scratch denoiser: {scratch.steps_trained} steps in "
                f"{time.perf_counter() - t0:.0f} s (--scratch-budget {args.scratch_budget:g})"
            )
    models = load_pretrained_models(args.model)  # after the scratch row's training
    _warm_up(models, bm3d)
    print()

    # ------------------------------------------------ denoising
    den_rows, summaries, by_source, ct_noise = [], [], [], []
    for setting, noise, sigma, modalities, metric in settings:
        t0 = time.perf_counter()
        frames = []
        for idx, (name, source, img) in enumerate(slices):
            mod = modality(source)
            if mod not in modalities:
                continue
            kw: dict[str, Any] = {"noise": noise, "sigma": sigma, "seed": idx}
            if noise == "poisson_gaussian":
                kw["sigma"], kw["photons"] = ct_dose(img, args.ct_noise_hu, args.ct_electronic_hu)
                noisy = np.asarray(degrade(img, **kw).degraded)
                soft = (img > SOFT_TISSUE_HU[0]) & (img < SOFT_TISSUE_HU[1])
                ct_noise.append(
                    {
                        "image_id": name,
                        "photons": kw["photons"],
                        "sigma": kw["sigma"],
                        "noise_sd_soft_tissue_hu": float(np.std((noisy - img)[soft])),
                        "soft_tissue_pixels": int(soft.sum()),
                    }
                )
            parts = [
                evaluate(None, [img], task="denoise", baselines=base_methods, progress=False, **kw)
            ]
            model = models.get(DENOISER_FOR[mod])
            if model is not None:
                parts.append(_evaluated(model, img, "pretrained", **kw))
                parts.append(_evaluated(model, img, "pretrained_x8", ensemble=True, **kw))
            for mname in DENOISER_FOR.values() if args.cross_modality else ():
                if mname in models:
                    parts.append(_evaluated(models[mname], img, f"pretrained:{mname}", **kw))
            if scratch is not None:
                parts.append(_evaluated(scratch, img, "scratch", **kw))
            df = pd.concat(parts, ignore_index=True)
            df["image_id"], df["source"], df["modality"] = name, source, mod
            frames.append(df)
        df = pd.concat(frames, ignore_index=True)
        df["setting"] = setting
        den_rows.append(df)
        print(
            f"== denoise {setting} ({len(frames)} held-out slices, {'/'.join(modalities)}; "
            f"metric {metric}; {time.perf_counter() - t0:.0f} s) =="
        )
        if noise == "poisson_gaussian" and ct_noise:
            print(
                "   noise s.d. in soft tissue (HU): "
                + ", ".join(
                    f"{r['image_id']} {r['noise_sd_soft_tissue_hu']:.1f} "
                    f"(photons {r['photons']:.0f})"
                    for r in ct_noise
                )
            )
        s = _summary(df, ref_den, metric)
        print(s.round(3).to_string())
        src = _by_source(df, ref_den, metric)
        print(f"-- {metric} per held-out source --")
        print(src.round(2).to_string() + "\n")
        summaries.append(s.reset_index().assign(setting=setting, metric=metric))
        by_source.append(src.reset_index().assign(setting=setting, metric=metric))

    # ------------------------------------------------ super-resolution
    sr_rows = []
    for setting, mname, ref, others, _ in sr_settings:
        t0 = time.perf_counter()
        through = mname == "through_x4"
        items = volumes if through else slices
        model = models.get(mname)
        frames = []
        for name, source, img in items:
            if model is not None:
                df = evaluate(model, [img], baselines=[ref, *others], progress=False)
                df.loc[df.method == "model", "method"] = "pretrained"
                df = pd.concat(
                    [df, _evaluated(model, img, "pretrained_x8", ensemble=True)],
                    ignore_index=True,
                )
            else:
                _, scale, axes = PRETRAINED[mname]
                df = evaluate(
                    None,
                    [img],
                    task="superres",
                    scale=scale,
                    axes=axes,
                    baselines=[ref, *others],
                    progress=False,
                )
            df["image_id"], df["source"], df["modality"] = name, source, modality(source)
            frames.append(df)
        df = pd.concat(frames, ignore_index=True)
        df["setting"] = setting
        sr_rows.append(df)
        kind = "volumes" if through else "slices"
        print(f"== {setting} ({len(items)} held-out {kind}; {time.perf_counter() - t0:.0f} s) ==")
        s = _summary(df, ref, "psnr")
        print(s.round(3).to_string())
        src = _by_source(df, ref, "psnr")
        print("-- psnr per held-out source --")
        print(src.round(2).to_string() + "\n")
        summaries.append(s.reset_index().assign(setting=setting, metric="psnr"))
        by_source.append(src.reset_index().assign(setting=setting, metric="psnr"))

    # ------------------------------------------------ targets
    targets = _targets(den_rows, sr_rows, settings, sr_settings, ref_den)
    print("== targets ==")
    print(targets.astype(object).where(targets.notna(), "").to_string(index=False))
    if den_rows:
        den = pd.concat(den_rows, ignore_index=True)
        den.to_csv(out / "pretrained_denoise_per_image.csv", index=False)
    if sr_rows:
        sr_table = pd.concat(sr_rows, ignore_index=True)
        sr_table.to_csv(out / "pretrained_sr_per_image.csv", index=False)
    pd.concat(summaries, ignore_index=True).to_csv(out / "pretrained_summary.csv", index=False)
    pd.concat(by_source, ignore_index=True).to_csv(out / "pretrained_by_source.csv", index=False)
    targets.to_csv(out / "pretrained_targets.csv", index=False)
    pd.DataFrame(ct_noise).to_csv(out / "pretrained_ct_noise.csv", index=False)
    print(f"\ntables (CSV) in {out}; {time.perf_counter() - t_start:.0f} s in all")


def _targets(
    den_rows: list[pd.DataFrame],
    sr_rows: list[pd.DataFrame],
    settings: list[tuple[str, str, float, tuple[str, ...], str]],
    sr_settings: list[tuple[str, str, str, tuple[str, ...], float]],
    ref_den: str,
) -> pd.DataFrame:
    """The targets of the shipped models, one row each: value, threshold, met; the
    self-ensemble's value beside it; for per-source targets the worst source."""
    rows: list[dict[str, Any]] = []

    def add(target: str, setting: str, metric: str, value: float, need: float, **kw: Any) -> None:
        met = bool(np.isfinite(value) and value >= need)
        rows.append(
            {
                "target": target,
                "setting": setting,
                "metric": metric,
                "value": round(value, 3),
                "threshold": need,
                "met": met if np.isfinite(value) else "not evaluated",
                **kw,
            }
        )

    nan = float("nan")
    den_time = {"pretrained": 0.0, ref_den: 0.0}
    n_timed = 0  # (setting, slice) pairs timed
    for df, (setting, _, _, _, metric) in zip(den_rows, settings, strict=True):
        # on the slices the pretrained rows cover (all, unless a model did not load)
        covered = df.loc[df.method == "pretrained", "image_id"]
        sub = df[df.image_id.isin(covered)] if len(covered) else df
        g = sub.groupby("method")[metric].mean()
        x8 = g.get("pretrained_x8", nan) - g[ref_den]
        add(
            f"pretrained denoiser >= {ref_den} + 0.3 dB (mean)",
            setting,
            metric,
            g.get("pretrained", nan) - g[ref_den],
            0.3,
            x8=round(x8, 3),
            n_images=int(sub.image_id.nunique()),
        )
        if len(covered):
            n_timed += len(covered)
            both = sub[sub.method.isin(["pretrained", ref_den])]
            for m, secs in both.groupby("method")["seconds"].sum().items():
                den_time[str(m)] += float(secs)
    speed = den_time[ref_den] / den_time["pretrained"] if den_time["pretrained"] else nan
    add(
        f"pretrained denoiser >= 10x {ref_den} speed (one pass)",
        "all denoising",
        "speed",
        speed,
        10.0,
        n_images=n_timed,
    )
    for df, (setting, mname, ref, _, need) in zip(sr_rows, sr_settings, strict=True):
        per = df.pivot_table(index="source", columns="method", values="psnr", aggfunc="mean")
        for col, label in (("pretrained", "value"), ("pretrained_x8", "x8")):
            per[label] = per[col] - per[ref] if col in per.columns else nan
        worst = per["value"].idxmin() if per["value"].notna().any() else None
        add(
            f"pretrained:{mname} >= {ref} + {need} dB (every source)",
            setting,
            "psnr",
            float(per["value"].min()),
            need,
            x8=round(float(per["x8"].min()), 3),
            n_images=int(df.image_id.nunique()),
            worst_source=worst,
        )
    return pd.DataFrame(rows)


def _train_set(band: tuple[int, int]) -> list[np.ndarray]:
    """The MNI152 training band (axial slices ``band``) at 1, 2 and 3 mm in plane."""
    from medgen.simulate import degrade

    train_vol = _mni()[..., band[0] : band[1]]
    # the same slices at 1, 2 and 3 mm in plane (block averages): unseen clinical images are
    # coarser than the 1 mm template; in a 70-s trial this lifted mean PSNR by ~0.3 dB
    train_set = [train_vol]
    for f in (2, 3):
        nx, ny = (s - s % f for s in train_vol.shape[:2])
        train_set.append(np.asarray(degrade(train_vol[:nx, :ny], downsample=f, seed=0).degraded))
    return train_set


def _engine_config(
    args: argparse.Namespace, budget: float, seed: int = 0, sr: bool = False
) -> dict[str, object]:
    """The benchmark's training recipe (``fit(config=...)``) for ``budget`` seconds."""
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


def _den_model(args: argparse.Namespace, kind: str) -> Any:
    """A fresh denoiser of the benchmark's recipe (``kind``: ``"unet"`` or ``"vae"``)."""
    from medgen.generative import Denoiser

    channels = tuple(int(c) for c in args.channels.split(","))
    return Denoiser(
        model=kind,
        channels=channels if kind == "unet" else channels[:3],
        patch_size=args.patch_size,
        noise=["gaussian", "rician"],
        sigma=(0.03, 0.12),
    )


def _den_train(train_set: list[np.ndarray], natural: int) -> list[np.ndarray]:
    """The denoiser's training pool: ``train_set`` plus the sample images ``natural`` times."""
    return list(train_set) + (natural_images() * natural if natural > 0 else [])


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
        "--skip-denoise",
        action="store_true",
        help="--pretrained: no denoising part (with --skip-scratch: the SR rows only)",
    )
    ap.add_argument(
        "--evaluate-only",
        action="store_true",
        help="no training: evaluate the models a previous run saved in --out",
    )
    ap.add_argument("--quick", action="store_true", help="tiny budgets (smoke test)")
    pre = ap.add_argument_group("shipped pretrained models (--pretrained)")
    pre.add_argument(
        "--pretrained",
        action="store_true",
        help="evaluate the shipped pretrained models on the held-out set (no training but the "
        "scratch row)",
    )
    pre.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=RUN_DIR",
        help=f"evaluate the model in RUN_DIR as pretrained:NAME ({', '.join(PRETRAINED)}); "
        "repeatable",
    )
    pre.add_argument(
        "--scratch-budget",
        type=float,
        default=900.0,
        help="s of training for the 'scratch' denoiser row (this benchmark's recipe)",
    )
    pre.add_argument("--skip-scratch", action="store_true", help="no 'scratch' row")
    pre.add_argument(
        "--ct-noise-hu",
        type=float,
        default=30.0,
        help="low-dose CT: noise s.d. (HU) at 40 HU, Poisson and Gaussian parts together",
    )
    pre.add_argument(
        "--ct-electronic-hu",
        type=float,
        default=10.0,
        help="low-dose CT: the Gaussian (electronic) part of --ct-noise-hu, HU",
    )
    pre.add_argument(
        "--cross-modality",
        action="store_true",
        help="also run each pretrained denoiser on every slice (rows pretrained:mri, "
        "pretrained:ct)",
    )
    args = ap.parse_args()
    if args.pretrained:
        run_pretrained(args)
        return

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
    train_set = _train_set(band)
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
        return _engine_config(args, budget, seed, sr)

    conditions = [("gaussian", 0.05), ("gaussian", 0.1), ("rician", 0.05), ("rician", 0.1)]
    if args.quick:
        conditions = [("gaussian", 0.1)]
        images, names = images[:8], names[:8]

    # ------------------------------------------------ U-Net vs VAE at the same short budget
    def den_model(kind: str) -> Denoiser:
        return _den_model(args, kind)  # type: ignore[no-any-return]

    den_train = _den_train(train_set, args.natural)
    if args.natural > 0:
        print(
            f"denoiser also trains on {len(natural_images())} scikit-image sample images x "
            f"{args.natural}"
        )
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
