"""The simulator: draw the cohort table, render each subject, stream images and masks to disk."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import os
import pathlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medgen._internal.files import write_text_atomic
from medgen._internal.provenance import package_versions
from medgen._internal.runs import mark_complete, run_lock
from medgen.errors import ConfigError, MedgenValueError
from medgen.simulate import _anatomy, _disease, _site
from medgen.simulate._bias import draw_cohort, seed_key
from medgen.simulate._config import SimulationConfig

__all__ = ["SimulatedSubject", "iter_subjects", "render_subject", "simulate"]

# save_subject and manifest_table are shared with medgen.simulate._oracle (not public)

logger = logging.getLogger(__name__)

_FORMATS = ("nifti", "dicom")


@dataclass
class SimulatedSubject:
    """One rendered subject.

    ``image``: float32 ``(X, Y)`` (2D) or ``(X, Y, Z)`` (3D), in the site's intensity units.
    ``mask``: uint8 of the same shape (lesions, or the atrophy region; zeros when healthy).
    ``affine``: 4x4 voxel -> RAS mm. ``record``: the subject's manifest fields.
    ``params``: what was drawn for this subject (anatomy, site, lesions).
    """

    image: np.ndarray
    mask: np.ndarray
    affine: np.ndarray
    record: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)


def render_subject(
    cfg: SimulationConfig, row: Mapping[Any, Any], index: int, seed: int | Sequence[int]
) -> SimulatedSubject:
    """Render one subject of the cohort table (a row of :func:`draw_cohort`'s table).

    ``index`` is the subject's number: its label in the table's index (``sim<index>``), not its
    position, so leaving subjects out (``scarce_positives``) does not change anyone else's image.
    Deterministic given ``(cfg, row, index, seed)``: the subject's generator is
    ``numpy.random.default_rng([seed, 1, index])``, independent of every other subject (``seed``
    may be an entropy key, a sequence of ints, as for :func:`draw_cohort`).
    """
    rng = np.random.default_rng([*seed_key(seed), 1, int(index)])
    an = cfg.anatomy
    site = next(s for s in cfg.sites if s.name == row["site"])
    params = _anatomy.AnatomyParams.draw(an, float(row["age"]), rng)
    severity = float(row["severity"])
    presentation = float(row["presentation"])

    if an.mode == "2d":
        z_mm = float(rng.uniform(*an.slice_band_mm))
        shape, affine = _anatomy.output_grid(an, z_mm)
        t = site.slice_thickness_mm
        nz = 1 if t <= 0 else int(min(5, max(1, math.ceil(t / 1.5))))
        z_offsets = (np.arange(nz) + 0.5) / nz * t - t / 2 if nz > 1 else np.zeros(1)
        spacing: tuple[float, ...] = (float(affine[0, 0]), float(affine[1, 1]))
    else:
        z_mm = float("nan")
        shape, affine = _anatomy.output_grid(an)
        z_offsets = np.zeros(1)
        spacing = (an.spacing_mm,) * 3
    points = _anatomy.grid_points(shape, affine, z_offsets)

    atrophy_disease = cfg.disease.effect == "atrophy"
    tissues = _anatomy.sample_anatomy(
        points,
        params,
        fov_mm=an.fov_mm,
        region_center_mm=np.asarray(cfg.disease.atrophy_center_mm) if atrophy_disease else None,
        region_radius_mm=cfg.disease.atrophy_radius_mm,
        region_loss=cfg.disease.atrophy_strength * severity * presentation,
        regular_grid=an.mode == "3d",
    )
    base = _site.TISSUE_INTENSITIES[site.contrast]
    jitter = {k: float(1.0 + an.intensity_jitter * rng.standard_normal()) for k in base}
    inten = {k: base[k] * jitter[k] for k in base}
    image = tissues.gm * inten["gm"] + tissues.wm * inten["wm"] + tissues.csf * inten["csf"]

    lesions: list[_disease.Lesion] = []
    occupancy = np.zeros(image.shape)
    if cfg.disease.effect == "lesions" and severity > 0:
        mid = points[len(points) // 2] if an.mode == "2d" else points
        wm_mid = tissues.wm[len(points) // 2] if an.mode == "2d" else tissues.wm
        candidates = mid[wm_mid > 0.7]
        lesions = _disease.draw_lesions(
            cfg.disease,
            severity,
            presentation,
            candidates,
            rng,
            z_jitter_mm=max(site.slice_thickness_mm, 2.0) if an.mode == "2d" else 0.0,
        )
        tissue = np.clip(2.0 * tissues.wm + 0.3 * tissues.gm, 0.0, 1.0)
        occupancy = _disease.render_lesions(
            points, lesions, edge_mm=0.25 * min(spacing), tissue=tissue
        )
        contrast = cfg.disease.lesion_contrast * (0.4 + 0.6 * severity) * presentation
        image = image * (1.0 - contrast * occupancy) + contrast * occupancy * inten["lesion"]
    if an.mode == "2d":  # partial volume through the slice thickness
        image = image.mean(axis=0)
        occupancy = occupancy.mean(axis=0)
        region = None if tissues.region is None else tissues.region[len(points) // 2]
    else:
        region = tissues.region
    if atrophy_disease:
        mask = (
            (region > 0.5) & (severity > 0)
            if region is not None
            else np.zeros(image.shape, dtype=bool)
        )
    else:
        mask = occupancy > 0.5

    coeffs = _site.draw_bias_coefficients(site, image.ndim, rng)
    if site.bias_field > 0:
        image = image * _site.bias_field(image.shape, coeffs)
    fwhm = (site.blur_fwhm_mm,) * image.ndim
    if an.mode == "3d" and site.slice_thickness_mm > an.spacing_mm:
        fwhm = (site.blur_fwhm_mm, site.blur_fwhm_mm, site.slice_thickness_mm)
    image = _site.blur(image, fwhm, spacing)

    marker_params: dict[str, Any] = {}
    if int(row["marker"]):
        shortcut = next(b for b in cfg.biases if b.mechanism == "shortcut")
        m = int(shortcut.params.get("marker_size", 3))
        value = float(shortcut.params.get("marker_intensity", 1.5))
        image[2 : 2 + m, -2 - m : -2, ...] = value
        marker_params = {"marker_size": m, "marker_intensity": value, "corner": "low-x high-y"}
    image = _site.rician(image, site.noise_sigma, rng)
    image = image * site.intensity_scale + site.intensity_offset

    record = dict(row)
    record.update(
        {
            "contrast": site.contrast,
            "manufacturer": site.manufacturer,
            "slice_z_mm": None if an.mode == "3d" else round(z_mm, 3),
            "lesion_count": len(lesions),
            "lesion_fraction": round(float(mask.mean()), 6),
        }
    )
    drawn = {
        "scale": params.scale,
        "rotation_deg": params.rotation_deg,
        "ventricle_growth": params.ventricle_growth,
        "atrophy": params.atrophy,
        "tissue_intensity": inten,
        "bias_field_coefficients": [float(c) for c in coeffs],
        "lesions": [{"center_mm": les.center_mm, "radius_mm": les.radius_mm} for les in lesions],
        **marker_params,
    }
    return SimulatedSubject(
        image=image.astype(np.float32),
        mask=mask.astype(np.uint8),
        affine=affine,
        record=record,
        params=drawn,
    )


def iter_subjects(
    config: SimulationConfig, *, seed: int | None = None
) -> Iterator[SimulatedSubject]:
    """Yield the cohort's subjects one by one, in memory (nothing is written).

    The same ``(config, seed)`` yields the same subjects as :func:`simulate` writes. Useful for
    probes and tests that do not need files.
    """
    config.validate()
    seed = config.seed if seed is None else seed
    table, _ = draw_cohort(config, seed)
    for i, row in zip(table.index, table.to_dict(orient="records"), strict=True):
        yield render_subject(config, row, int(i), seed)


def save_subject(
    cfg: SimulationConfig,
    subj: SimulatedSubject,
    out: pathlib.Path,
    *,
    name: str,
    format: str,
    description: str,
    source: str,
) -> dict[str, Any]:
    """Write one rendered subject into ``out``: ``images/<name>.nii.gz`` (or the DICOM series
    ``images/<name>/``, ``PatientID = name``), marked synthetic with ``description``, and the mask
    ``masks/<name>_mask.nii.gz``; return its manifest record (``subj.record`` with
    ``subject_id = name``, ``image_id = <name>-0``, the relative paths and ``source``).

    The one writer of the simulator and of :class:`~medgen.simulate.SimulatedGenerator`.
    """
    import medgen.io

    rec = dict(subj.record)
    rel_img = f"images/{name}.nii.gz" if format == "nifti" else f"images/{name}"
    img = (
        subj.image[None]
        if cfg.anatomy.mode == "3d" or format == "nifti"
        else subj.image[None, ..., None]
    )
    tags = None
    if format == "dicom":
        tags = {
            "PatientID": name,
            "PatientSex": str(rec["sex"]) if rec["sex"] in ("F", "M") else "O",
            "PatientAge": f"{min(int(rec['age']), 999):03d}Y",
            "InstitutionName": str(rec["site"]),
            "Manufacturer": rec["manufacturer"],
            "Modality": "MR",
            "SeriesDescription": f"simulated {rec['contrast'].upper()}",
        }
    medgen.io.save(
        img,
        out / rel_img,
        format=format,
        affine=subj.affine,
        dicom_tags=tags,
        synthetic=True,
        derivation_description=description,
    )
    rel_mask = f"masks/{name}_mask.nii.gz"
    medgen.io.save(subj.mask[None], out / rel_mask, format="nifti", affine=subj.affine)
    rec.update(
        {
            "subject_id": name,
            "image_id": f"{name}-0",
            "image_path": rel_img,
            "mask_path": rel_mask,
            "source": source,
        }
    )
    return rec


def manifest_table(cfg: SimulationConfig, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The manifest of :func:`save_subject` records, in the simulator's column order."""
    manifest = pd.DataFrame(rows)
    first = ["image_id", "image_path", "subject_id", "split", "source", "label", "severity"]
    first += ["sex", "age", "age_group", "site"]
    first += list(cfg.population.attributes)
    first += ["mask_path", "label_true", "presentation", "marker"]
    return manifest[first + [c for c in manifest.columns if c not in first]]


_OUTPUTS = ("images", "masks", "manifest.csv", "simulation.json")


#: written before the first image: the settings of the run in progress (an interrupted run with
#: the same settings is restarted cleanly by a rerun; other settings need ``overwrite``)
_STARTED = "simulation.started.json"


def _is_temporary(name: str) -> bool:
    """Leftovers of medgen's atomic writers killed mid-write (``.name.XXXX.tmp...``)."""
    return name.startswith(".") and (".tmp" in name or name.endswith(".old"))


def _holds_simulation(out: pathlib.Path) -> bool:
    from medgen._internal.runs import COMPLETE, LOCK

    return any((out / name).exists() for name in (COMPLETE, LOCK, _STARTED, "simulation.json"))


def _prepare_out_dir(out: pathlib.Path, *, overwrite: bool, fingerprint: dict[str, Any]) -> str:
    """Make ``out`` ready for a simulation; return what was there (``"empty"``, ``"complete"``,
    ``"interrupted"``).

    - a finished simulation is replaced only with ``overwrite``;
    - an interrupted one (killed before it finished) with the same settings is restarted cleanly
      (the simulation is deterministic, so the result equals an uninterrupted run); with other
      settings it needs ``overwrite``;
    - a folder whose files are not a simulation is never touched, ``overwrite`` or not;
    - only the simulation's own outputs are deleted; other files in the folder survive.
    """
    import shutil

    from medgen._internal.runs import COMPLETE, LOCK

    entries = sorted(p.name for p in out.iterdir() if p.name != LOCK) if out.is_dir() else []
    if not entries:
        return "empty"
    shown = ", ".join(entries[:5]) + (f", ... ({len(entries)} entries)" if len(entries) > 5 else "")
    started = out / _STARTED
    finished = (out / COMPLETE).is_file() or (
        (out / "simulation.json").is_file() and not started.is_file()  # written by medgen < 0.2
    )
    if finished:
        state = "complete"
        if not overwrite:
            raise MedgenValueError(
                f"simulate: out_dir {str(out)!r} already holds a simulation ({shown}). Choose a "
                "new folder, or pass overwrite=True (CLI: --overwrite) to replace it."
            )
    elif started.is_file():
        state = "interrupted"
        try:
            before = json.loads(started.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            before = None
        if before != json.loads(json.dumps(fingerprint, default=_json_default)) and not overwrite:
            raise MedgenValueError(
                f"simulate: out_dir {str(out)!r} holds an interrupted simulation with other "
                "settings (config, seed or format differ). Rerun with those settings to finish "
                "it, or pass overwrite=True (CLI: --overwrite) to replace it."
            )
        logger.info("simulate: restarting the interrupted simulation in %s", out)
    else:
        raise MedgenValueError(
            f"simulate: out_dir {str(out)!r} is not empty ({shown}) and holds no previous "
            "simulation (no simulation.json). Choose a new or empty folder."
        )
    for name in (*_OUTPUTS, _STARTED, COMPLETE):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for name in entries:
        if _is_temporary(name):
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    return state


def simulate(
    config: SimulationConfig | dict[str, Any] | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    seed: int | None = None,
    progress: bool = True,
    format: str = "nifti",
    overwrite: bool = False,
) -> pathlib.Path:
    """Simulate a cohort and write it to ``out_dir``; return the manifest path.

    Writes ``images/<subject>.nii.gz`` (or a DICOM series directory ``images/<subject>/`` with
    ``format="dicom"``), ``masks/<subject>_mask.nii.gz`` (uint8: lesions or atrophy region),
    ``manifest.csv`` in the Cohort schema (``image_path``/``mask_path`` relative to ``out_dir``)
    and ``simulation.json`` (full config, seed, package versions, injected-bias ground truth).
    Subjects are rendered and written one at a time: memory stays flat in the cohort size.

    Args:
        config: a :class:`SimulationConfig`, a dict, or a YAML file path.
        out_dir: output folder, created if needed; it must be empty unless ``overwrite``.
        overwrite: replace a previous simulation in ``out_dir`` (its ``images/``, ``masks/``,
            ``manifest.csv`` and ``simulation.json``; other files are left alone). A non-empty
            folder that holds no ``simulation.json`` is never cleared. Without it, a rerun into
            the folder of an *interrupted* simulation with the same settings restarts it cleanly
            (same result as an uninterrupted run); one writer at a time (a second fails at
            once, naming the first).
        seed: overrides ``config.seed`` (recorded in the sidecar).
        progress: show a tqdm progress bar.
        format: ``"nifti"`` or ``"dicom"``.

    Returns:
        ``out_dir / "manifest.csv"``.

    Raises:
        ConfigError: invalid configuration or arguments; nothing is written.
        MedgenValueError: ``out_dir`` is a file, or is not empty and ``overwrite`` is false (or
            holds files that are not a previous simulation); nothing is written or deleted.

    Example:
        >>> import tempfile
        >>> from medgen.simulate import preset, simulate
        >>> cfg = preset("tiny"); cfg.population.n_subjects = 4
        >>> path = simulate(cfg, tempfile.mkdtemp(), progress=False)
        >>> path.name
        'manifest.csv'
    """

    if isinstance(config, SimulationConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = SimulationConfig.from_dict(config)
    elif isinstance(config, str | os.PathLike):
        cfg = SimulationConfig.from_yaml(pathlib.Path(config))
    else:
        raise ConfigError(
            f"simulate: config must be a SimulationConfig, a dict or a YAML path, not "
            f"{type(config).__name__}."
        )
    cfg.validate()
    if format not in _FORMATS:
        raise ConfigError(f"simulate: format must be one of {list(_FORMATS)}, not {format!r}.")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ConfigError(f"simulate: seed must be a non-negative integer, not {seed!r}.")
    seed = cfg.seed if seed is None else seed
    out = pathlib.Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise MedgenValueError(f"simulate: out_dir {str(out)!r} exists and is not a directory.")
    fingerprint = {"config": cfg.to_dict(), "seed": seed, "format": format}
    if out.is_dir() and any(out.iterdir()) and not _holds_simulation(out):
        # refused before the lock file is made: a folder that is not ours stays untouched
        _prepare_out_dir(out, overwrite=overwrite, fingerprint=fingerprint)
    with run_lock(out, what="simulation"):
        _prepare_out_dir(out, overwrite=overwrite, fingerprint=fingerprint)
        write_text_atomic(out / _STARTED, json.dumps(fingerprint, indent=1, default=_json_default))
        return _write_simulation(cfg, out, seed=seed, format=format, progress=progress)


def _write_simulation(
    cfg: SimulationConfig, out: pathlib.Path, *, seed: int, format: str, progress: bool
) -> pathlib.Path:
    """The body of :func:`simulate`, in a prepared and locked ``out``."""
    from tqdm.auto import tqdm

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    table, ground_truth = draw_cohort(cfg, seed)
    rows = []
    iterator = tqdm(
        zip(table.index, table.to_dict(orient="records"), strict=True),
        total=len(table),
        disable=not progress,
        desc=f"simulate {cfg.name}",
        unit="subject",
    )
    description = f"medgen.simulate {cfg.name} seed={seed}"
    for i, row in iterator:
        subj = render_subject(cfg, row, int(i), seed)
        sid = str(row["subject_id"])
        rows.append(
            save_subject(
                cfg, subj, out, name=sid, format=format, description=description, source="simulated"
            )
        )
    elapsed = time.perf_counter() - t0

    manifest = manifest_table(cfg, rows)
    manifest_path = out / "manifest.csv"
    write_text_atomic(manifest_path, manifest.to_csv(index=False))

    sidecar = {
        "generator": "medgen.simulate",
        "config": cfg.to_dict(),
        "seed": seed,
        "format": format,
        "n_subjects": len(manifest),
        "versions": package_versions(),
        "ground_truth": {
            "biases": ground_truth,
            "prevalence": {
                "requested": cfg.disease.prevalence,
                "requested_by": cfg.disease.prevalence_by,
                "realised": float(manifest["label_true"].mean()),
            },
            "columns": {
                "label": "recorded diagnosis (after under_diagnosis)",
                "label_true": "true disease status",
                "severity": "disease severity in [0, 1] (0 = healthy)",
                "presentation": "lesion size/contrast factor from presentation bias (1 = none)",
                "marker": "1 where the shortcut marker was burned into the image",
            },
        },
        "manifest_sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "wall_time_s": round(elapsed, 3),
    }
    write_text_atomic(out / "simulation.json", json.dumps(sidecar, indent=2, default=_json_default))
    mark_complete(out, ["manifest.csv", "simulation.json"], kind="simulation")
    (out / _STARTED).unlink(missing_ok=True)
    logger.info("simulated %d subjects into %s in %.1f s", len(manifest), out, elapsed)
    return manifest_path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
