"""``scan``: walk a folder of DICOM and NIfTI files into a cohort-ready manifest, headers only."""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medgen.errors import DicomError, MedgenValueError
from medgen.io._common import (
    DICOM_SUFFIXES,
    NIFTI_SUFFIXES,
    SYNTHETIC_MARK,
    check_exists,
    has_dicom_preamble,
    has_pixel_data,
)

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

#: manifest columns, in order
MANIFEST_COLUMNS = (
    "image_id",
    "image_path",
    "subject_id",
    "split",
    "source",
    "format",
    "modality",
    "shape",
    "channels",
    "spacing",
    "spacing_x",
    "spacing_y",
    "spacing_z",
    "n_files",
    "sex",
    "age",
    "manufacturer",
    "scanner",
    "site",
    "series_description",
    "series_uid",
    "geometry_warning",
)
#: files never considered images
_SKIP_SUFFIXES = (
    ".txt",
    ".json",
    ".csv",
    ".tsv",
    ".md",
    ".xml",
    ".html",
    ".py",
    ".yaml",
    ".yml",
    ".parquet",
)

_AGE_RE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_AGE_UNITS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25, "": 1.0}


def parse_age(value: Any) -> float | None:
    """DICOM PatientAge (``"045Y"``, ``"006M"``, ``"010W"``, ``"003D"``) in years; None if absent/invalid.

    Example:
        >>> parse_age("045Y"), parse_age("006M"), parse_age(""), parse_age("abc")
        (45.0, 0.5, None, None)
    """
    if value is None:
        return None
    m = _AGE_RE.match(str(value))
    if not m:
        return None
    return round(int(m.group(1)) * _AGE_UNITS[m.group(2).upper()], 4)


def _age_from_dates(ds: Any) -> float | None:
    birth, study = str(ds.get("PatientBirthDate", "") or ""), str(ds.get("StudyDate", "") or "")
    try:
        b = _dt.datetime.strptime(birth[:8], "%Y%m%d")
        s = _dt.datetime.strptime(study[:8], "%Y%m%d")
    except ValueError:
        return None
    years = (s - b).days / 365.25
    return round(years, 4) if years >= 0 else None


def _hash(text: str, n: int = 12) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def _subject_from_path(rel: str) -> str:
    """A BIDS ``sub-<label>`` folder names the subject; else a hash of the file stem."""
    for part in Path(rel).parts:
        if part.startswith("sub-") and len(part) > 4 and "." not in part:
            return part
    stem = Path(rel).name
    for suf in NIFTI_SUFFIXES:
        if stem.lower().endswith(suf):
            stem = stem[: -len(suf)]
    return f"sub-{_hash(stem)}"


def _is_candidate(path: Path) -> str | None:
    """``"nifti"``, ``"dicom"`` or None (not an image file medgen would read)."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(_SKIP_SUFFIXES) or name == "dicomdir":
        return None
    if path.suffix.lower() in DICOM_SUFFIXES or has_dicom_preamble(path):
        return "dicom"
    return None


def _nifti_row(path: Path, rel: str) -> dict[str, Any]:
    import nibabel as nib

    if path.stat().st_size == 0:
        raise MedgenValueError("the file is empty (0 bytes)")
    try:
        img: Any = nib.load(path)
        shape = tuple(int(s) for s in img.shape)
        affine = np.asarray(img.affine)
        descrip = bytes(np.asarray(img.header.get("descrip", b""))).decode("latin-1")
    except Exception as err:
        raise MedgenValueError(
            f"not a readable NIfTI header ({type(err).__name__}: {err})"
        ) from err
    spatial = shape[:3] if len(shape) >= 3 else shape
    channels = int(np.prod(shape[3:])) if len(shape) > 3 else 1
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, : len(spatial)], axis=0))
    return {
        "image_path": rel,
        "subject_id": _subject_from_path(rel),
        "format": "nifti",
        "shape": "x".join(str(s) for s in spatial),
        "channels": channels,
        "spacing": spacing,
        "n_files": 1,
        "synthetic": SYNTHETIC_MARK in descrip,
    }


def _dicom_rows(
    items: list[tuple[Path, Any]], folder: Path, root: Path, single_series_dir: bool
) -> dict[str, Any]:
    """One manifest row for one series inside one directory."""
    from medgen.io._dicom import frames_of, is_synthetic, stack_geometry

    path0, ds = items[0]
    frames = []
    for p, d in items:
        fs = frames_of(d, p)
        if len(items) > 1 and len(fs) > 1:
            raise DicomError(f"series mixes multi-frame files ({p.name}) with other files")
        frames.extend(fs)
    uid = str(ds.get("SeriesInstanceUID", "") or "")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        geom = stack_geometry(frames, where=str(folder if len(items) > 1 else path0))
    image = path0 if len(items) == 1 else folder
    rel = image.relative_to(root).as_posix() if image != root else "."
    pid = str(ds.get("PatientID", "") or "").strip()
    if pid:
        subject = f"sub-{_hash(pid)}"
    else:
        study = str(ds.get("StudyInstanceUID", "") or "")
        subject = f"sub-{_hash('study:' + study if study else 'series:' + uid + '|' + rel)}"
    age = parse_age(ds.get("PatientAge"))
    if age is None:
        age = _age_from_dates(ds)
    sex = str(ds.get("PatientSex", "") or "").strip().upper() or None

    def text(kw: str) -> str | None:
        v = str(ds.get(kw, "") or "").strip()
        return v or None

    return {
        "image_path": rel,
        "subject_id": subject,
        "format": "dicom",
        "modality": text("Modality"),
        "shape": f"{int(ds.Columns)}x{int(ds.Rows)}x{len(frames)}",
        "channels": int(ds.get("SamplesPerPixel", 1) or 1),
        "spacing": geom.spacing,
        "n_files": len(items),
        "sex": sex,
        "age": age,
        "manufacturer": text("Manufacturer"),
        "scanner": text("ManufacturerModelName"),
        "site": text("InstitutionName"),
        "series_description": text("SeriesDescription"),
        "synthetic": is_synthetic(ds),
        # a folder with several series needs load(path, series=uid); single-series rows need nothing
        "series_uid": uid or None,
        "needs_series": len(items) > 1 and not single_series_dir,
        "geometry_warning": "; ".join(str(w.message) for w in caught) or None,
    }


def scan(
    root: str | os.PathLike[str], *, progress: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Walk ``root`` for NIfTI files and DICOM series, reading headers only.

    Args:
        root: folder to walk (recursively; hidden files and folders are skipped).
        progress: show a tqdm progress bar over files.

    Returns:
        ``(manifest, errors)``. ``manifest`` has one row per image (a NIfTI file, a single DICOM
        file, or a DICOM series = the files of one SeriesInstanceUID in one folder) with the
        columns :data:`MANIFEST_COLUMNS`: ``image_path`` relative to ``root`` (a series row points
        at its folder; when that folder holds several series, pass ``series=row.series_uid`` to
        :func:`medgen.io.load`); ``subject_id`` is ``sub-`` + a SHA-256 prefix of PatientID (a BIDS
        ``sub-*`` folder for NIfTI), never the raw identifier; ``image_id`` is a hash of path and
        series; ``split`` is empty and ``source`` is ``"real"`` (``"synthetic"`` for
        images whose header carries medgen's synthetic mark), so the table starts a cohort
        manifest. ``shape`` is ``"XxYxZ"``; ``spacing_*`` in mm; ``age`` in years (float) from
        PatientAge (or birth and study dates); ``sex``, ``manufacturer``, ``scanner`` (model),
        ``site`` (institution) from the headers. ``errors`` has columns ``path`` (relative to
        ``root``) and ``reason``, one row per file or series that could not be read. One bad
        file never stops a scan.

    Raises:
        MedgenFileNotFoundError: ``root`` does not exist.
        MedgenValueError: ``root`` is a file.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from medgen.io._dicom import read_dataset

    root_p = check_exists(root).resolve()
    if not root_p.is_dir():
        raise MedgenValueError(f"scan: {root_p} is a file; pass the folder that holds the images.")
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root_p):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))

    rows: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    # directory -> series uid -> [(path, header)]
    dicom: dict[Path, dict[str, list[tuple[Path, Any]]]] = {}
    skipped = 0
    for path in tqdm(files, desc="scan", unit="file", disable=not progress):
        rel = path.relative_to(root_p).as_posix()
        kind = _is_candidate(path)
        if kind is None:
            skipped += 1
            continue
        try:
            if kind == "nifti":
                rows.append(_nifti_row(path, rel))
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ds = read_dataset(path, stop_before_pixels=True)
            for w in caught:
                logger.debug("%s: %s", rel, w.message)
            if not has_pixel_data(ds, header_only=True):
                raise DicomError("DICOM object without an image")
            # files without a SeriesInstanceUID cannot be grouped safely: one image each
            uid = str(ds.get("SeriesInstanceUID", "") or "") or f"<no uid: {path.name}>"
            dicom.setdefault(path.parent, {}).setdefault(uid, []).append((path, ds))
        except Exception as err:
            errors.append({"path": rel, "reason": _reason(err, path)})
    for folder, by_series in dicom.items():
        for uid, items in by_series.items():
            try:
                rows.append(
                    _dicom_rows(items, folder, root_p, single_series_dir=len(by_series) == 1)
                )
            except Exception as err:
                where = folder.relative_to(root_p).as_posix() if folder != root_p else "."
                errors.append({"path": where, "reason": f"series {uid}: {_reason(err, folder)}"})
    logger.info(
        "scan %s: %d images, %d errors, %d non-image files skipped",
        root_p,
        len(rows),
        len(errors),
        skipped,
    )
    manifest = pd.DataFrame(rows)
    if manifest.empty:
        manifest = pd.DataFrame(columns=[*MANIFEST_COLUMNS, "needs_series"])
    else:
        sp = manifest["spacing"].map(lambda t: tuple(t) + (np.nan,) * (3 - len(t)))
        manifest["spacing_x"] = sp.map(lambda t: t[0]).astype(float)
        manifest["spacing_y"] = sp.map(lambda t: t[1]).astype(float)
        manifest["spacing_z"] = sp.map(lambda t: t[2]).astype(float)
        manifest["spacing"] = manifest["spacing"].map(lambda t: "x".join(f"{v:.6g}" for v in t))
        manifest["image_id"] = [
            f"img-{_hash(p + '|' + str(u or ''), 16)}"
            for p, u in zip(
                manifest["image_path"],
                manifest.get("series_uid", [None] * len(manifest)),
                strict=True,
            )
        ]
        manifest["split"] = ""
        # images medgen wrote with synthetic=True say so in their headers; everything else is real
        synthetic = manifest["synthetic"].fillna(False).astype(bool)
        manifest["source"] = np.where(synthetic, "synthetic", "real")
        for col in (*MANIFEST_COLUMNS, "needs_series"):
            if col not in manifest:
                manifest[col] = None
        manifest["needs_series"] = manifest["needs_series"].fillna(False).astype(bool)
        manifest["age"] = manifest["age"].astype(float)
        manifest = manifest[[*MANIFEST_COLUMNS, "needs_series"]].sort_values(
            "image_path", kind="stable"
        )
        manifest = manifest.reset_index(drop=True)
    errors_df = pd.DataFrame(errors, columns=["path", "reason"])
    return manifest, errors_df


def _reason(err: Exception, path: Path) -> str:
    """The error message without the absolute path (the table already names the file)."""
    msg = str(err).replace(f"Cannot read {path}: ", "").replace(f"Cannot load {path}: ", "")
    return msg.replace(str(path), path.name)
