"""The simulator: draw the cohort table, render each subject, stream images and masks to disk."""

from __future__ import annotations

import dataclasses
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
    cfg: SimulationConfig,
    row: Mapping[Any, Any],
    index: int,
    seed: int | Sequence[int],
    *,
    site: str | None = None,
    contrast: str | None = None,
    severity: float | None = None,
) -> SimulatedSubject:
    """Render one subject of the cohort table (a row of :func:`draw_cohort`'s table).

    ``index`` is the subject's number: its label in the table's index (``sim<index>``), not its
    position, so leaving subjects out (``scarce_positives``) does not change anyone else's image.
    Deterministic given ``(cfg, row, index, seed)``: the subject's generator is
    ``numpy.random.default_rng([seed, 1, index])``, independent of every other subject (``seed``
    may be an entropy key, a sequence of ints, as for :func:`draw_cohort`).

    ``site``: render the subject as scanned at this site instead of ``row["site"]`` (a
    counterfactual): the same generator, anatomy, tissue jitter, lesions, mask and 2D slice
    geometry (partial volume over the factual site's ``slice_thickness_mm``); the site's
    contrast, bias field, blur, noise and intensity units. ``None`` (or the row's own site) is
    the factual render, unchanged.

    ``contrast``: render it with this tissue contrast (``"t1"``, ``"t2"``, ``"flair"``) at its
    site instead of the site's own (a contrast counterfactual): everything else as the factual
    render, the same noise and bias field included.

    ``severity``: render it at this disease severity (0..1; 0 = healthy) instead of
    ``row["severity"]`` (a severity counterfactual, disease progression): the same anatomy,
    noise, bias field and site. Lesions keep their centres; their radii scale with severity as
    the simulator's radius range does, and their contrast follows the severity; at 0 there are
    none. A subject healthy in fact gets the lesions a second stream of its own generator draws
    at severity 1 (``default_rng([seed, 1, index, 1])``), scaled likewise, so its renders at
    several severities are nested. Atrophy follows the severity directly. The record's
    ``severity`` is the new value and ``label`` = ``label_true`` = ``severity > 0``; the
    shortcut marker (an artefact of the recorded label) stays as in the factual image.
    """
    rng = np.random.default_rng([*seed_key(seed), 1, int(index)])
    an = cfg.anatomy
    geometry = next(s for s in cfg.sites if s.name == row["site"])
    if site is None or site == row["site"]:
        site_cfg = geometry
    else:
        found = [s for s in cfg.sites if s.name == site]
        if not found:
            raise ConfigError(
                f"render_subject: site {site!r} is not a site of the config; its sites are "
                f"{[s.name for s in cfg.sites]}."
            )
        site_cfg = found[0]
    if contrast is not None and contrast != site_cfg.contrast:
        from medgen.simulate._config import CONTRASTS

        if contrast not in CONTRASTS:
            raise ConfigError(
                f"render_subject: contrast {contrast!r} is not a contrast of the simulator; "
                f"its contrasts are {list(CONTRASTS)}."
            )
        site_cfg = dataclasses.replace(site_cfg, contrast=contrast)
    params = _anatomy.AnatomyParams.draw(an, float(row["age"]), rng)
    factual_severity = float(row["severity"])
    if severity is not None and (
        isinstance(severity, bool)
        or not isinstance(severity, int | float)
        or not 0.0 <= float(severity) <= 1.0
    ):
        raise ConfigError(f"render_subject: severity must be a number in [0, 1], not {severity!r}.")
    sev = factual_severity if severity is None else float(severity)
    presentation = float(row["presentation"])

    if an.mode == "2d":
        z_mm = float(rng.uniform(*an.slice_band_mm))
        shape, affine = _anatomy.output_grid(an, z_mm)
        t = geometry.slice_thickness_mm
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
        region_loss=cfg.disease.atrophy_strength * sev * presentation,
        regular_grid=an.mode == "3d",
    )
    base = _site.TISSUE_INTENSITIES[site_cfg.contrast]
    jitter = {k: float(1.0 + an.intensity_jitter * rng.standard_normal()) for k in base}
    inten = {k: base[k] * jitter[k] for k in base}
    image = tissues.gm * inten["gm"] + tissues.wm * inten["wm"] + tissues.csf * inten["csf"]

    lesions: list[_disease.Lesion] = []
    occupancy = np.zeros(image.shape)
    if cfg.disease.effect == "lesions" and (factual_severity > 0 or sev > 0):
        mid = points[len(points) // 2] if an.mode == "2d" else points
        wm_mid = tissues.wm[len(points) // 2] if an.mode == "2d" else tissues.wm
        candidates = mid[wm_mid > 0.7]
        z_jitter = max(geometry.slice_thickness_mm, 2.0) if an.mode == "2d" else 0.0
        if factual_severity > 0:  # drawn as in fact: the generator's stream stays the same
            lesions = _disease.draw_lesions(
                cfg.disease, factual_severity, presentation, candidates, rng, z_jitter_mm=z_jitter
            )
            drawn_at = factual_severity
        else:  # healthy in fact: the lesions of a second stream of the subject's generator
            side = np.random.default_rng([*seed_key(seed), 1, int(index), 1])
            lesions = _disease.draw_lesions(
                cfg.disease, 1.0, presentation, candidates, side, z_jitter_mm=z_jitter
            )
            drawn_at = 1.0
        if sev != drawn_at:
            lesions = _disease.scale_lesions(cfg.disease, lesions, drawn_at, sev)
    if lesions:
        tissue = np.clip(2.0 * tissues.wm + 0.3 * tissues.gm, 0.0, 1.0)
        occupancy = _disease.render_lesions(
            points, lesions, edge_mm=0.25 * min(spacing), tissue=tissue
        )
        strength = cfg.disease.lesion_contrast * (0.4 + 0.6 * sev) * presentation
        image = image * (1.0 - strength * occupancy) + strength * occupancy * inten["lesion"]
    if an.mode == "2d":  # partial volume through the slice thickness
        image = image.mean(axis=0)
        occupancy = occupancy.mean(axis=0)
        region = None if tissues.region is None else tissues.region[len(points) // 2]
    else:
        region = tissues.region
    if atrophy_disease:
        mask = (
            (region > 0.5) & (sev > 0) if region is not None else np.zeros(image.shape, dtype=bool)
        )
    else:
        mask = occupancy > 0.5

    coeffs = _site.draw_bias_coefficients(site_cfg, image.ndim, rng)
    if site_cfg.bias_field > 0:
        image = image * _site.bias_field(image.shape, coeffs)
    fwhm = (site_cfg.blur_fwhm_mm,) * image.ndim
    if an.mode == "3d" and site_cfg.slice_thickness_mm > an.spacing_mm:
        fwhm = (site_cfg.blur_fwhm_mm, site_cfg.blur_fwhm_mm, site_cfg.slice_thickness_mm)
    image = _site.blur(image, fwhm, spacing)

    marker_params: dict[str, Any] = {}
    if int(row["marker"]):
        shortcut = next(b for b in cfg.biases if b.mechanism == "shortcut")
        m = int(shortcut.params.get("marker_size", 3))
        value = float(shortcut.params.get("marker_intensity", 1.5))
        image[2 : 2 + m, -2 - m : -2, ...] = value
        marker_params = {"marker_size": m, "marker_intensity": value, "corner": "low-x high-y"}
    image = _site.rician(image, site_cfg.noise_sigma, rng)
    image = image * site_cfg.intensity_scale + site_cfg.intensity_offset

    record = dict(row)
    if severity is not None:
        record.update({"severity": sev, "label": int(sev > 0), "label_true": int(sev > 0)})
    record.update(
        {
            "site": site_cfg.name,
            "contrast": site_cfg.contrast,
            "manufacturer": site_cfg.manufacturer,
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
    subject_id: str | None = None,
) -> dict[str, Any]:
    """Write one rendered subject into ``out``: ``images/<name>.nii.gz`` (or the DICOM series
    ``images/<name>/``, ``PatientID = name``), marked synthetic with ``description``, and the mask
    ``masks/<name>_mask.nii.gz``; return its manifest record (``subj.record`` with
    ``subject_id = name``, ``image_id = <name>-0``, the relative paths and ``source``).
    ``subject_id`` (default ``name``) names the person when the files are named otherwise (a
    counterfactual render): the record's ``subject_id`` and the DICOM ``PatientID``.

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
            "PatientID": name if subject_id is None else subject_id,
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
            "subject_id": name if subject_id is None else subject_id,
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
    if cfg.disease.grades:  # the graded label, only when asked (the default output is unchanged)
        from medgen.simulate._disease import grade_of

        manifest["grade"] = grade_of(cfg.disease, manifest["severity"].to_numpy(dtype=float))
        first.append("grade")
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
                "settings (config, seed, format or counterfactual differ). Rerun with those "
                "settings to finish it, or pass overwrite=True (CLI: --overwrite) to replace it."
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
    counterfactual: str | Sequence[str] = (),
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
        counterfactual: attributes to render counterfactuals of; ``("site",)`` (or ``"site"``)
            renders every subject additionally at every other site of the config: same
            anatomy, lesions, mask and subject seed, that site's contrast and scanner effects
            (:func:`render_subject` with ``site=``). Each is an extra manifest row
            (``source = simulated``, the same ``subject_id`` and ``split``, the render's
            ``site``, ``image_id = <subject>-cf-<site>``) whose ``counterfactual_of`` column
            names the factual ``image_id`` (empty on factual rows). Counterfactual rows are
            ground truth for evaluating translation, not training data:
            ``cohort.select(counterfactual_of=None)`` is the factual cohort. The default
            ``()`` writes exactly what earlier versions wrote (no extra column).
            ``"contrast"`` renders every subject at its own site with every other tissue
            contrast (``t1``, ``t2``, ``flair``; ``image_id = <subject>-cf-contrast-<c>``);
            ``"severity"`` at every severity of :data:`SEVERITY_LEVELS` (0, 0.5, 1) but its
            own, with its lesions scaled (none at 0) and ``label`` = ``label_true`` =
            ``severity > 0`` (``<subject>-cf-severity-<s>``): disease progression on the same
            anatomy (:func:`render_subject`). Several attributes give the renders of each,
            not their combinations.

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
    attrs = _counterfactual_attributes(counterfactual)
    out = pathlib.Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise MedgenValueError(f"simulate: out_dir {str(out)!r} exists and is not a directory.")
    fingerprint: dict[str, Any] = {"config": cfg.to_dict(), "seed": seed, "format": format}
    if attrs:  # absent by default: fingerprints of earlier versions stay valid
        fingerprint["counterfactual"] = list(attrs)
    if out.is_dir() and any(out.iterdir()) and not _holds_simulation(out):
        # refused before the lock file is made: a folder that is not ours stays untouched
        _prepare_out_dir(out, overwrite=overwrite, fingerprint=fingerprint)
    with run_lock(out, what="simulation"):
        _prepare_out_dir(out, overwrite=overwrite, fingerprint=fingerprint)
        write_text_atomic(out / _STARTED, json.dumps(fingerprint, indent=1, default=_json_default))
        return _write_simulation(
            cfg, out, seed=seed, format=format, progress=progress, counterfactual=attrs
        )


#: the attributes :func:`simulate` can render counterfactuals of
COUNTERFACTUAL_ATTRIBUTES = ("site", "contrast", "severity")
#: the severities a ``severity`` counterfactual renders every subject at (but its own)
SEVERITY_LEVELS = (0.0, 0.5, 1.0)
#: what each kind of counterfactual keeps and changes (``simulation.json``)
_CF_EFFECTS = {
    "site": {
        "kept": "anatomy, tissue jitter, lesions, mask, 2D slice geometry",
        "changed": "contrast, bias field, blur, noise, intensity units (the other site's)",
    },
    "contrast": {
        "kept": "site, anatomy, tissue jitter, lesions, mask, bias field, blur, noise",
        "changed": "tissue contrast (t1, t2, flair: every one but the site's)",
    },
    "severity": {
        "kept": "site, anatomy, tissue jitter, lesion centres, bias field, blur, noise, marker",
        "changed": (
            f"severity (each of {list(SEVERITY_LEVELS)} but the subject's own): lesion radii "
            "and contrast (none at 0), atrophy; mask, label and label_true follow"
        ),
    },
}


def _counterfactual_attributes(value: Any) -> tuple[str, ...]:
    """``simulate``'s ``counterfactual`` argument as a tuple of known attribute names."""
    from medgen._internal.suggest import did_you_mean

    items = [value] if isinstance(value, str) else value
    try:
        attrs = tuple(items)
    except TypeError:
        raise ConfigError(
            f"simulate: counterfactual must be a sequence of attribute names such as "
            f"('site',), not {value!r}."
        ) from None
    for a in attrs:
        if a not in COUNTERFACTUAL_ATTRIBUTES:
            hint = did_you_mean(str(a), COUNTERFACTUAL_ATTRIBUTES) if isinstance(a, str) else ""
            raise ConfigError(
                f"simulate: counterfactual attribute {a!r} is not supported; supported: "
                f"{list(COUNTERFACTUAL_ATTRIBUTES)}.{hint}"
            )
    return tuple(dict.fromkeys(attrs))


def _write_simulation(
    cfg: SimulationConfig,
    out: pathlib.Path,
    *,
    seed: int,
    format: str,
    progress: bool,
    counterfactual: tuple[str, ...] = (),
) -> pathlib.Path:
    """The body of :func:`simulate`, in a prepared and locked ``out``."""
    from tqdm.auto import tqdm

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    table, ground_truth = draw_cohort(cfg, seed)
    rows = []
    extra: list[dict[str, Any]] = []  # counterfactual rows, after the factual ones
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
        if "site" in counterfactual:
            extra.extend(_site_counterfactuals(cfg, row, int(i), seed, out, rows[-1], format))
        for attribute in ("contrast", "severity"):
            if attribute in counterfactual:
                extra.extend(
                    _other_counterfactuals(
                        cfg, row, int(i), seed, out, rows[-1], format, attribute=attribute
                    )
                )
    elapsed = time.perf_counter() - t0

    if counterfactual:
        for rec in rows:
            rec["counterfactual_of"] = None
    n_factual = len(rows)
    manifest = manifest_table(cfg, rows + extra)
    manifest_path = out / "manifest.csv"
    write_text_atomic(manifest_path, manifest.to_csv(index=False))

    sidecar = {
        "generator": "medgen.simulate",
        "config": cfg.to_dict(),
        "seed": seed,
        "format": format,
        "n_subjects": n_factual,
        "versions": package_versions(),
        "ground_truth": {
            "biases": ground_truth,
            "prevalence": {
                "requested": cfg.disease.prevalence,
                "requested_by": cfg.disease.prevalence_by,
                "realised": float(manifest["label_true"].iloc[:n_factual].mean()),
            },
            "columns": {
                "label": "recorded diagnosis (after under_diagnosis)",
                "label_true": "true disease status",
                "severity": "disease severity in [0, 1] (0 = healthy)",
                **(
                    {
                        "grade": f"graded disease {list(cfg.disease.grades)} from severity "
                        f"(thresholds {list(cfg.disease.grade_thresholds)}; 0 = "
                        f"{cfg.disease.grades[0]!r})"
                    }
                    if cfg.disease.grades
                    else {}
                ),
                "presentation": "lesion size/contrast factor from presentation bias (1 = none)",
                "marker": "1 where the shortcut marker was burned into the image",
            },
        },
        **(
            {
                "counterfactual": {
                    "attributes": list(counterfactual),
                    "n_images": len(extra),
                    "column": "counterfactual_of (the image_id of the factual image)",
                    "kept": "anatomy, tissue jitter, lesions, mask, 2D slice geometry",
                    "changed": "contrast, bias field, blur, noise, intensity units",
                    "by_attribute": {a: _CF_EFFECTS[a] for a in counterfactual},
                }
            }
            if counterfactual
            else {}
        ),
        "manifest_sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "wall_time_s": round(elapsed, 3),
    }
    write_text_atomic(out / "simulation.json", json.dumps(sidecar, indent=2, default=_json_default))
    mark_complete(out, ["manifest.csv", "simulation.json"], kind="simulation")
    (out / _STARTED).unlink(missing_ok=True)
    logger.info("simulated %d subjects into %s in %.1f s", len(manifest), out, elapsed)
    return manifest_path


def _site_counterfactuals(
    cfg: SimulationConfig,
    row: Mapping[str, Any],
    index: int,
    seed: int,
    out: pathlib.Path,
    factual: Mapping[str, Any],
    format: str,
) -> list[dict[str, Any]]:
    """Render and write subject ``index`` at every site but its own; their manifest records."""
    from medgen._internal.paths import safe_file_name

    sid = str(row["subject_id"])
    recs = []
    for site in cfg.sites:
        if site.name == row["site"]:
            continue
        subj = render_subject(cfg, row, index, seed, site=site.name)
        rec = save_subject(
            cfg,
            subj,
            out,
            name=f"{sid}_cf_{safe_file_name(site.name, what='site')}",
            format=format,
            description=f"medgen.simulate {cfg.name} seed={seed} counterfactual site={site.name}",
            source="simulated",
            subject_id=sid,
        )
        rec["image_id"] = f"{sid}-cf-{site.name}"
        rec["counterfactual_of"] = factual["image_id"]
        recs.append(rec)
    return recs


def _other_counterfactuals(
    cfg: SimulationConfig,
    row: Mapping[str, Any],
    index: int,
    seed: int,
    out: pathlib.Path,
    factual: Mapping[str, Any],
    format: str,
    *,
    attribute: str,
) -> list[dict[str, Any]]:
    """Render and write subject ``index`` at every other contrast (``attribute="contrast"``,
    at its own site) or at every :data:`SEVERITY_LEVELS` value but its own
    (``"severity"``); their manifest records (``image_id = <subject>-cf-contrast-<c>`` /
    ``<subject>-cf-severity-<s>``)."""
    from medgen.simulate._config import CONTRASTS

    sid = str(row["subject_id"])
    own_contrast = next(s.contrast for s in cfg.sites if s.name == row["site"])
    values: list[Any]
    if attribute == "contrast":
        values = [c for c in CONTRASTS if c != own_contrast]
    else:
        values = [v for v in SEVERITY_LEVELS if not math.isclose(v, float(row["severity"]))]
    recs = []
    for value in values:
        if attribute == "contrast":
            subj = render_subject(cfg, row, index, seed, contrast=value)
            tag, file_tag = f"contrast-{value}", f"contrast_{value}"
        else:
            subj = render_subject(cfg, row, index, seed, severity=value)
            tag, file_tag = f"severity-{value:g}", f"severity_{round(100 * value):03d}"
        rec = save_subject(
            cfg,
            subj,
            out,
            name=f"{sid}_cf_{file_tag}",
            format=format,
            description=f"medgen.simulate {cfg.name} seed={seed} counterfactual {attribute}="
            f"{value}",
            source="simulated",
            subject_id=sid,
        )
        rec["image_id"] = f"{sid}-cf-{tag}"
        rec["counterfactual_of"] = factual["image_id"]
        recs.append(rec)
    return recs


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
