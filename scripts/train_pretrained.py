"""Train the restoration models medgen ships (``medgen/data/pretrained``) and write their cards.

Every model is trained from scratch by this script, offline, from images that ship inside
installed packages (nothing is downloaded):

- **MR-like** slices: nilearn's MNI152 T1 template (1 mm) in axial slices of the band
  z = 60..129 and in coronal and sagittal slices cropped to z = 55..134 (the benchmark holds out
  the axial slices outside the band, so no training slice shows them), at 1 and 2 mm in plane;
  T2-, PD- and FLAIR-like contrasts rendered from the MNI152 tissue maps on the same band with
  :data:`medgen.simulate._site.TISSUE_INTENSITIES`; the b0 volume of nibabel's Siemens mosaic
  (``nicom/tests/data/siemens_dwi_0.dcm.gz``); pydicom-data's ``emri_small`` frames.
- **CT** slices in HU from pydicom-data: ``eCT_Supplemental`` (2 frames), ``explicit_VR-UN``,
  ``bad_sequence``; nuclear-medicine ``JPEG2000_UNC`` and the radiograph ``RG1_UNCR``
  (block-averaged by 4) as more X-ray-like texture.
- **Natural images**: scikit-image's 14 bundled grey-level images (``benchmarks/restoration.py``'s
  ``natural_images``).

Held out (never trained on): everything ``benchmarks/restoration.py``'s ``test_images`` and
``held_out_files`` list (nibabel's example4d and anatomical, pydicom's MR_small and CT_small,
the MNI axial slices outside the band, pydicom-data's 693_*, MR2_* and MR-SIEMENS-* files in
every compression); the script checks it by hashing every training slice against them.

Models (``--models``, default all): ``mri`` (blind noise-map U-Net denoiser, Gaussian + Rician
noise, sigma 0.01-0.2 of the range), ``ct`` (the same network fine-tuned from ``mri`` on
Poisson-Gaussian low-dose noise in HU plus Gaussian), ``x2`` and ``x4`` (2D in-plane
super-resolution, block-average down-sampling; ``x4`` starts from ``x2``) and ``through_x4``
(2D through-plane x4 super-resolution of volumes, 4 slices averaged into one along Z; it
fine-tunes from ``x4`` on the ``planes`` set: the 2D images above with either axis playing Z,
plus the (Y, Z) and (X, Z) planes of the MNI band volumes at each contrast, at 1, 2 and 3 mm, and
of the nicom b0 volume). An earlier 3D through-plane model (1,569 steps in 25 minutes) never
left its linear-in-Z input, so the shipped one is 2D.

Each model trains into ``--runs/NAME`` (resumable: run the script again to train another
``--budget`` seconds: the run continues where it stopped), then with ``--export`` it is
evaluated on the held-out slices and exported with its card (``card.md``, ``card.json``) into
``medgen/data/pretrained`` (or ``--target``).

Usage (CPU, 1 torch thread per process; the figures in the cards name the hardware)::

    python scripts/train_pretrained.py --models mri,ct --budget mri=4800,ct=1800 --export
    python scripts/train_pretrained.py --models x2,x4 --budget x2=2400,x4=1800 --export
    python scripts/train_pretrained.py --models through_x4 --budget through_x4=4500 --export

The shipped models were trained so (2026-12-01, AMD EPYC, two such processes side by side on
2 cores, each 1 thread, with other jobs on the machine); each card names its steps and hours.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

#: the axial band of the MNI152 1 mm template that training may use (the benchmark's default)
BAND = (60, 130)

#: the models trained and exported by default
SHIPPED = ("mri", "ct", "x2", "x4", "through_x4")

#: default training seconds per model (``--budget NAME=S`` overrides)
BUDGETS = {"mri": 4800.0, "ct": 1800.0, "x2": 2400.0, "x4": 1800.0, "through_x4": 4500.0}

#: constructor options of each shipped model
MODELS: dict[str, dict[str, Any]] = {
    "mri": {
        "kind": "denoise",
        "data": "mr",
        "options": {
            "noise": ("gaussian", "rician"),
            "sigma": (0.01, 0.2),
            "noise_map": True,
            "augment": True,
        },
        "summary": "2D blind denoiser for MR (Gaussian and Rician noise, sigma 0.01-0.2 of the "
        "range), noise-level map input",
    },
    "ct": {
        "kind": "denoise",
        "data": "ct",
        "init": "mri",
        "options": {
            "noise": ("poisson_gaussian", "gaussian"),
            "sigma": (0.002, 0.03),
            "photons": (500.0, 20000.0),
            "noise_map": True,
            "augment": True,
        },
        "summary": "2D blind denoiser for CT in HU (Poisson-Gaussian low-dose and Gaussian "
        "noise), noise-level map input",
    },
    "x2": {
        "kind": "superres",
        "data": "all",
        "options": {"scale": 2},
        "summary": "2D in-plane x2 super-resolution (block-average down-sampling)",
    },
    "x4": {
        "kind": "superres",
        "data": "all",
        "init": "x2",
        "options": {"scale": 4},
        "summary": "2D in-plane x4 super-resolution (block-average down-sampling)",
    },
    "through_x4": {
        "kind": "superres",
        "data": "planes",
        "init": "x4",
        "options": {"scale": 4, "axes": "through", "spatial_dims": 2},
        "summary": "2D through-plane x4 super-resolution of volumes (thick slices: 4 slices "
        "averaged into one along Z; the (Y, Z) and (X, Z) planes restored and averaged)",
    },
}


# ---------------------------------------------------------------------------------- data
def _block(a: np.ndarray, f: int) -> np.ndarray:
    nx, ny = a.shape[0] // f * f, a.shape[1] // f * f
    return a[:nx, :ny].reshape(nx // f, f, ny // f, f).mean(axis=(1, 3)).astype(np.float32)


def _mni_volumes() -> dict[str, np.ndarray]:
    """The MNI152 1 mm T1 template and three contrasts rendered from its tissue maps."""
    from nilearn import datasets

    from medgen.simulate._site import TISSUE_INTENSITIES

    t1 = np.asarray(datasets.load_mni152_template(resolution=1).get_fdata(), dtype=np.float32)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).get_fdata(), dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(), dtype=np.float32)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).get_fdata(), dtype=np.float32)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    out = {"t1": t1}
    pd_like = {"csf": 0.9, "gm": 0.8, "wm": 0.7}
    for name, tab in (
        ("t2", TISSUE_INTENSITIES["t2"]),
        ("flair", TISSUE_INTENSITIES["flair"]),
        ("pd", pd_like),
    ):
        out[name] = (tab["csf"] * csf + tab["gm"] * gm + tab["wm"] * wm).astype(np.float32)
    return out


def mr_slices() -> list[np.ndarray]:
    """MR-like training slices (see the module docstring)."""
    import nibabel as nib

    from medgen.io import load

    lo, hi = BAND
    out: list[np.ndarray] = []
    for name, vol in _mni_volumes().items():
        step = 1 if name == "t1" else 3
        for z in range(lo, hi, step):
            s = vol[..., z]
            out.append(s)
            if name == "t1" and z % 2 == 0:
                out.append(_block(s, 2))
        band = vol[..., lo - 5 : hi + 5]
        for y in range(40, vol.shape[1] - 40, 8):  # coronal, cropped to the band's z range
            out.append(np.ascontiguousarray(band[:, y, :]))
        for x in range(40, vol.shape[0] - 40, 8):  # sagittal
            out.append(np.ascontiguousarray(band[x, :, :]))
    ndir = Path(nib.__file__).parent / "nicom" / "tests" / "data"
    dwi = np.asarray(load(_gunzip(ndir / "siemens_dwi_0.dcm.gz"))[0])
    out.extend(dwi[..., k] for k in range(8, dwi.shape[-1] - 6, 2))
    emri = np.asarray(load(_pydicom_data("emri_small.dcm"))[0])
    out.extend(emri[..., k] for k in range(emri.shape[-1]))
    return [np.ascontiguousarray(s, dtype=np.float32) for s in out if float(np.ptp(s)) > 0]


def ct_slices() -> list[np.ndarray]:
    """CT (HU) and X-ray-like training slices from pydicom-data."""
    from medgen.io import load

    out: list[np.ndarray] = []
    for name in ("eCT_Supplemental.dcm", "explicit_VR-UN.dcm", "bad_sequence.dcm"):
        vol = np.asarray(load(_pydicom_data(name))[0])
        out.extend(vol[..., k] for k in range(vol.shape[-1]))
    nm = np.asarray(load(_pydicom_data("JPEG2000_UNC.dcm"))[0])[..., 0]
    out.append(nm)
    rg = np.asarray(load(_pydicom_data("RG1_UNCR.dcm"), spacing=(1.0, 1.0))[0])[..., 0]
    out.append(_block(rg, 4))
    return [np.ascontiguousarray(s, dtype=np.float32) for s in out]


def _mni_band_volumes() -> list[np.ndarray]:
    """The MNI band (each contrast of :func:`_mni_volumes`) as volumes, Z a multiple of 4."""
    lo, hi = BAND
    return [
        np.ascontiguousarray(v[20:-20, 20:-20, lo : lo + (hi - lo) // 4 * 4], dtype=np.float32)
        for v in _mni_volumes().values()
    ]


def _dwi_volume() -> np.ndarray:
    """The b0 volume of nibabel's Siemens mosaic, Z a multiple of 4."""
    import nibabel as nib

    from medgen.io import load

    ndir = Path(nib.__file__).parent / "nicom" / "tests" / "data"
    dwi = np.asarray(load(_gunzip(ndir / "siemens_dwi_0.dcm.gz"))[0])
    return np.ascontiguousarray(dwi[..., : dwi.shape[-1] // 4 * 4], dtype=np.float32)


def training_volumes() -> list[np.ndarray]:
    """3D volumes for through-plane SR: the MNI band (each contrast) and the nicom b0 volume."""
    return [*_mni_band_volumes(), _dwi_volume()]


def coarse_volumes(volumes: list[np.ndarray]) -> list[np.ndarray]:
    """``volumes`` block-averaged by 2 and by 3 in every axis: the MNI band at 2 and 3 mm, since
    coarse scans such as nibabel's anatomical.nii need coarse training planes; Z cut to a
    multiple of 4. (The mean is taken in float32, as for the shipped ``through_x4``; the same
    block mean through ``medgen.simulate.degrade`` works in float64 and differs by up to
    2.4e-7, which would change the run's recorded data hash.)"""
    out = []
    for v in volumes:
        for f in (2, 3):
            n = [s // f * f for s in v.shape]
            c = v[: n[0], : n[1], : n[2]].reshape(n[0] // f, f, n[1] // f, f, n[2] // f, f)
            c = c.mean(axis=(1, 3, 5))
            out.append(np.ascontiguousarray(c[..., : c.shape[-1] // 4 * 4], dtype=np.float32))
    return out


#: every file the training sets read (besides the MNI152 template and scikit-image's images)
TRAINING_FILES: list[str] = []


def _pydicom_data(name: str) -> Path:
    import data_store

    path = Path(data_store.__file__).parent / "data" / name
    TRAINING_FILES.append(str(path.resolve()))
    return path


def _gunzip(path: Path) -> Path:
    """An un-gzipped copy of ``path`` in the script's cache (medgen reads ``.dcm``)."""
    import gzip

    TRAINING_FILES.append(str(path.resolve()))
    cache = ROOT / ".cache" / "train_pretrained"
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / path.name.removesuffix(".gz")
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(gzip.decompress(path.read_bytes()))
        tmp.replace(out)
    return out


def training_set(which: str) -> list[np.ndarray]:
    """The clean training images of a model's ``data`` entry."""
    from restoration import natural_images

    nat = natural_images()
    if which == "mr":
        return mr_slices() + nat * 3
    if which == "ct":
        ct = ct_slices()
        return ct * 20 + mr_slices()[::4] + nat
    if which == "all":
        return mr_slices() + ct_slices() * 5 + nat * 3
    if which == "volumes":
        return training_volumes()
    if which == "planes":  # 2D images (either axis plays Z) and the volumes' planes through Z
        mni = _mni_band_volumes()
        return mr_slices() + ct_slices() * 5 + nat * 3 + mni + [_dwi_volume()] + coarse_volumes(mni)
    raise ValueError(which)


def check_held_out(images: list[np.ndarray]) -> None:
    """Refuse training data read from a held-out file, or containing a held-out slice (by
    exact content hash)."""
    import restoration

    held_files = {str(p.resolve()) for p in restoration.held_out_files()}
    clash = sorted(held_files & set(TRAINING_FILES))
    if clash:
        raise SystemExit(f"training reads held-out files {clash}")

    def h(a: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()

    held = {h(img) for _, _, img in restoration.test_images(BAND)}
    bad = [i for i, a in enumerate(images) if a.ndim == 2 and h(a) in held]
    if bad:
        raise SystemExit(f"training images {bad} are held-out test slices")


# ---------------------------------------------------------------------------------- models
def build(name: str) -> Any:
    from medgen.generative import Denoiser, SuperResolver

    spec = MODELS[name]
    cls = Denoiser if spec["kind"] == "denoise" else SuperResolver
    return cls(**spec["options"])


def train(name: str, runs: Path, budget: float, seed: int) -> Any:
    """Train (or continue) model ``name`` into ``runs/name`` for ``budget`` more seconds."""
    spec = MODELS[name]
    images = training_set(spec["data"])
    check_held_out(images)
    model = build(name)
    run = runs / name
    config = {
        "epochs": 10_000,
        "steps_per_epoch": 100,
        "batch_size": spec.get("batch_size", 16),
        "time_budget_s": budget,
        "seed": seed,
        "ema_decay": 0.999,
    }
    init = spec.get("init")
    kwargs: dict[str, Any] = {}
    resume = any((run / f).exists() for f in ("train_state.json", "checkpoint.pt"))
    if init:  # the run records it; a resume must name the same one
        # the init's run of this script when it is there, else the model this script shipped
        kwargs["init"] = str(runs / init) if (runs / init).is_dir() else f"pretrained:{init}"
    t0 = time.time()
    model.fit(images, run_dir=run, config=config, resume=resume, progress=False, **kwargs)
    print(f"{name}: {model.steps_trained} steps, {time.time() - t0:.0f} s this call", flush=True)
    return model


def evaluate_card(name: str, model: Any) -> dict[str, Any]:
    """Held-out figures for the card: mean PSNR per setting against the classical baseline, and
    the one-image figure the tests check (pydicom MR_small / CT_small, seed 0)."""
    import restoration

    from medgen.generative import evaluate

    spec = MODELS[name]
    slices = restoration.test_images(BAND)
    figures: dict[str, Any] = {"held_out_sources": sorted({s for _, s, _ in slices})}
    if spec["kind"] == "denoise":
        if name == "ct":
            imgs = [img for _, src, img in slices if restoration.modality(src) == "ct"]
            settings = [("poisson_gaussian", 0.005, 5000.0)]
            one = ("CT_small", "poisson_gaussian", 0.005, 5000.0)
        else:
            imgs = [img for _, _, img in slices]
            settings = [("gaussian", 0.05, None), ("gaussian", 0.1, None), ("rician", 0.1, None)]
            one = ("MR_small", "gaussian", 0.1, None)
        for noise, sigma, photons in settings:
            kw = {"photons": photons} if photons else {}
            t = evaluate(
                model, imgs, noise=noise, sigma=sigma, baselines=["nl_means"], progress=False, **kw
            )
            g = t.groupby("method")[["psnr", "psnr_fg"]].mean()
            figures[f"{noise}_{sigma}"] = {
                "psnr_model": round(float(g.loc["model", "psnr"]), 3),
                "psnr_nl_means": round(float(g.loc["nl_means", "psnr"]), 3),
                "psnr_fg_model": round(float(g.loc["model", "psnr_fg"]), 3),
                "n_images": len(imgs),
            }
        img = next(img for n, _, img in slices if n == one[0])
        kw = {"photons": one[3]} if one[3] else {}
        t = evaluate(model, [img], noise=one[1], sigma=one[2], baselines=[], progress=False, **kw)
        figures["check"] = {
            "image": f"pydicom {one[0]}",
            "noise": one[1],
            "sigma": one[2],
            "photons": one[3],
            "seed": 0,
            "psnr": round(float(t.loc[t.method == "model", "psnr"].iloc[0]), 4),
        }
    elif MODELS[name]["options"].get("axes") == "through":
        vols = restoration.test_volumes(BAND)
        figures["held_out_sources"] = sorted({s for _, s, _ in vols})  # volumes, not slices
        t = evaluate(model, [v for _, _, v in vols], baselines=["cubic_z"], progress=False)
        g = t.groupby("method")["psnr"].mean()
        figures["through_x4"] = {k: round(float(v), 3) for k, v in g.items()}
        figures["check"] = {
            "image": "nibabel anatomical.nii, slices 0..23",
            "scale": model.scale,
            "psnr": round(_through_check(model), 4),
        }
    else:
        imgs = [img for _, _, img in slices]
        t = evaluate(model, imgs, baselines=["bicubic"], progress=False)
        g = t.groupby("method")["psnr"].mean()
        figures[f"x{model.scale}"] = {k: round(float(v), 3) for k, v in g.items()}
        img = next(img for n, _, img in slices if n == "MR_small")
        t = evaluate(model, [img], baselines=[], progress=False)
        figures["check"] = {
            "image": "pydicom MR_small",
            "scale": model.scale,
            "psnr": round(float(t.loc[t.method == "model", "psnr"].iloc[0]), 4),
        }
    return figures


def _through_check(model: Any) -> float:
    """PSNR of ``model`` on nibabel's anatomical.nii (first 24 slices) down-sampled by it."""
    import nibabel as nib

    from medgen.generative import evaluate
    from medgen.io import load

    path = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
    vol = np.asarray(load(path)[0])[..., :24]
    t = evaluate(model, [vol], baselines=[], progress=False)
    return float(t.loc[t.method == "model", "psnr"].iloc[0])


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measured_text(spec: dict[str, Any]) -> str:
    """What a card's figures are means of, for the model's kind."""
    check = "`check`: the one image the tests recompute (tolerance 0.05 dB)."
    if spec["kind"] == "denoise":
        return (
            "Mean PSNR (dB) over the held-out slices, the model blind (noise level estimated), "
            f"noise seed = image index; {check}"
        )
    scale = spec["options"]["scale"]
    if spec["options"].get("axes") == "through":
        return (
            "Mean PSNR (dB) over the held-out volumes, each restored from its thick-slice "
            f"version (every {scale} slices averaged into one along Z), against cubic B-spline "
            f"interpolation along Z (`cubic_z`); {check}"
        )
    return (
        f"Mean PSNR (dB) over the held-out slices, each restored from its x{scale} "
        f"block-averaged version, against bicubic interpolation; {check}"
    )


def card_text(name: str, model: Any, figures: dict[str, Any], seconds: float) -> str:
    spec = MODELS[name]
    lines = [
        f"# medgen pretrained `{name}`",
        "",
        spec["summary"] + ".",
        "",
        f"- **Load:** `{'Denoiser' if spec['kind'] == 'denoise' else 'SuperResolver'}"
        f".pretrained({name!r})`, CLI `pretrained:{name}`.",
        f"- **Network:** {model!r}",
        f"- **Training data:** `{spec['data']}` set of `scripts/train_pretrained.py` (its module "
        "docstring lists every image; it refuses held-out files and, by hash, held-out slices).",
        f"- **Initialised from:** {spec.get('init') or 'scratch'}",
        f"- **Steps:** {model.steps_trained} (batch {spec.get('batch_size', 16)}), "
        f"{seconds / 3600:.2f} h of training",
        f"- **Hardware:** {_cpu_name()}, "
        f"{os.environ.get('OMP_NUM_THREADS', '?')} torch thread(s), shared with other jobs",
        "- **Reproduce:** `python scripts/train_pretrained.py --models "
        f"{name} --budget {name}={seconds:.0f} --export`",
        "",
        "## Measured on the held-out set (`benchmarks/restoration.py --pretrained` for all rows)",
        "",
        measured_text(spec),
        "",
        "```json",
        json.dumps(figures, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default=",".join(SHIPPED))
    ap.add_argument("--budget", default="", help="NAME=SECONDS,... (per model, this call)")
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "pretrained")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--export", action="store_true", help="evaluate and export with cards")
    ap.add_argument("--export-only", action="store_true", help="export the runs as they are")
    ap.add_argument("--target", type=Path, default=None, help="registry folder (default: package)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    budgets = dict(BUDGETS)
    for part in filter(None, args.budget.split(",")):
        k, v = part.split("=")
        budgets[k] = float(v)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; known: {list(MODELS)}")
    from medgen.generative import export_pretrained, load

    for name in names:
        if args.export_only:
            model = load(args.runs / name)
        else:
            model = train(name, args.runs, budgets[name], args.seed)
        if args.export or args.export_only:
            seconds = float(sum(h.get("seconds", 0.0) for h in model.history)) or budgets[name]
            figures = evaluate_card(name, model)
            figures["steps"] = model.steps_trained
            out = export_pretrained(
                model,
                name,
                card=card_text(name, model, figures, seconds),
                figures=figures,
                summary=MODELS[name]["summary"],
                directory=args.target,
            )
            print(f"exported {name} -> {out}: {json.dumps(figures)}", flush=True)


if __name__ == "__main__":
    main()
