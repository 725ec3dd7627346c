"""``scan``: walk a folder of DICOM and NIfTI files into a cohort-ready manifest, headers only."""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medgen._internal.deid import allowed_keywords, keyed_id, project_secret, remap_uid
from medgen.errors import DicomError, DicomReadWarning, MedgenValueError
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
    "part",
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
_AGE_UNITS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


def parse_age(value: Any, *, warn: bool = False, where: str = "") -> float | None:
    """DICOM PatientAge (``"045Y"``, ``"006M"``, ``"010W"``, ``"003D"``) in years.

    None when absent or invalid. A number without its unit (``"99"``) is not guessed: it could be
    years, months, weeks or days, so it is missing too (with a :class:`DicomReadWarning` naming
    ``where`` when ``warn``).

    Example:
        >>> parse_age("045Y"), parse_age("006M"), parse_age(""), parse_age("abc"), parse_age("99")
        (45.0, 0.5, None, None, None)
    """
    if value is None:
        return None
    text = str(value).strip()
    m = _AGE_RE.match(text)
    if not m:
        if text and warn:
            warnings.warn(
                f"{where}: PatientAge {text!r} is not a DICOM age (nnnY/M/W/D); age left missing.",
                DicomReadWarning,
                stacklevel=2,
            )
        return None
    unit = m.group(2).upper()
    if not unit:
        if warn:
            warnings.warn(
                f"{where}: PatientAge {text!r} has no unit (Y, M, W or D); it is not taken as "
                "years: age left missing.",
                DicomReadWarning,
                stacklevel=2,
            )
        return None
    return round(int(m.group(1)) * _AGE_UNITS[unit], 4)


#: PatientSex values kept (DICOM's defined terms); anything else is missing
SEX_VALUES = ("F", "M", "O")


def normalise_sex(value: Any) -> str | None:
    """DICOM PatientSex as ``"F"``, ``"M"`` or ``"O"``; None for empty or anything else
    (``"N/A"``, ``"U"``, ``"unknown"``). Full words (``"female"``, ``"male"``, ``"other"``) map to
    their letter.

    Example:
        >>> normalise_sex("f"), normalise_sex(" M "), normalise_sex("Female"), normalise_sex("N/A")
        ('F', 'M', 'F', None)
    """
    if value is None:
        return None
    text = str(value).strip().upper()
    text = {"FEMALE": "F", "MALE": "M", "OTHER": "O"}.get(text, text)
    return text if text in SEX_VALUES else None


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


def _subject_from_path(rel: str, secret: bytes) -> str:
    """A BIDS ``sub-<label>`` folder names the subject; else a keyed hash of the file stem
    (file names may carry patient names)."""
    for part in Path(rel).parts:
        if part.startswith("sub-") and len(part) > 4 and "." not in part:
            return part
    stem = Path(rel).name
    for suf in NIFTI_SUFFIXES:
        if stem.lower().endswith(suf):
            stem = stem[: -len(suf)]
    return keyed_id("file:" + stem, secret=secret)


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


def _nifti_row(path: Path, rel: str, secret: bytes) -> dict[str, Any]:
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
        "subject_id": _subject_from_path(rel, secret),
        "format": "nifti",
        "shape": "x".join(str(s) for s in spatial),
        "channels": channels,
        "spacing": spacing,
        "n_files": 1,
        "synthetic": SYNTHETIC_MARK in descrip,
    }


#: header fields a series row is made from (all other header content is dropped at once)
_ROW_KEYWORDS = (
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "PatientID",
    "PatientAge",
    "PatientBirthDate",
    "StudyDate",
    "PatientSex",
    "Modality",
    "Columns",
    "Rows",
    "SamplesPerPixel",
    "Manufacturer",
    "ManufacturerModelName",
    "InstitutionName",
    "SeriesDescription",
)


@dataclass
class _Series:
    """What ``scan`` keeps of one series while walking its folder: a few header values and the
    geometry of its planes, never the datasets (so memory does not grow with the headers)."""

    header: dict[str, Any]
    synthetic: bool
    first: Path
    frames: list[Any] = field(default_factory=list)
    n_files: int = 0
    n_multiframe: int = 0
    error: str | None = None


def _summarise(ds: Any, path: Path, series: _Series | None) -> _Series:
    """Add the file ``path`` (header ``ds``) to ``series`` (or start one)."""
    import dataclasses

    from pydicom import Dataset

    from medgen.io._dicom import frames_of, is_synthetic

    if series is None:
        header = {kw: ds.get(kw) for kw in _ROW_KEYWORDS if kw in ds}
        series = _Series(header=header, synthetic=is_synthetic(ds), first=path)
    series.n_files += 1
    if series.error is not None:
        return series
    try:
        frames = frames_of(ds, path)
    except Exception as err:
        series.error = _reason(err, path)
        return series
    # the stacker orders plain files by InstanceNumber: keep that, drop the rest of the header
    stub = Dataset()
    for kw in ("InstanceNumber", "Rows", "Columns", "SpacingBetweenSlices"):
        if kw in ds:
            setattr(stub, kw, ds[kw].value)
    series.frames.extend(dataclasses.replace(f, ds=stub) for f in frames)
    series.n_multiframe += len(frames) > 1
    return series


def _dicom_rows(
    series: _Series,
    folder: Path,
    root: Path,
    *,
    single_series_dir: bool,
    secret: bytes,
    retain: tuple[str, ...],
) -> list[dict[str, Any]]:
    """The manifest rows of one series inside one directory (de-identified): one per volume
    (:func:`medgen.io._dicom.series_parts`: echoes/time points, blocks between gaps)."""
    from medgen.io._dicom import series_parts

    if series.error is not None:
        raise DicomError(series.error)
    h = series.header
    n = series.n_files
    if n > 1 and series.n_multiframe:
        raise DicomError("series mixes multi-frame files with other files")
    uid = str(h.get("SeriesInstanceUID") or "")
    where = str(folder if n > 1 else series.first)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parts, notes = series_parts(series.frames, where=where)
    age = parse_age(h.get("PatientAge"), warn=True, where=where)
    image = series.first if n == 1 else folder
    rel = image.relative_to(root).as_posix() if image != root else "."
    pid = str(h.get("PatientID") or "").strip()
    if pid:
        subject = keyed_id(pid, secret=secret)
    else:
        study = str(h.get("StudyInstanceUID") or "")
        subject = keyed_id(
            "study:" + study if study else "series:" + uid + "|" + rel, secret=secret
        )
    if age is None:
        age = _age_from_dates(h)
    sex = normalise_sex(h.get("PatientSex"))

    def text(kw: str) -> str | None:
        v = str(h.get(kw) or "").strip()
        return v or None

    institution = text("InstitutionName")
    if institution is not None and "institution_identity" not in retain:
        institution = keyed_id("site:" + institution, secret=secret, prefix="site-", length=8)
    messages = [*notes, *(str(w.message) for w in caught)]
    rows = []
    for part in parts:
        rows_px, cols_px = part.frames[0].shape
        rows.append(
            {
                "image_path": rel,
                "subject_id": subject,
                "format": "dicom",
                "modality": text("Modality"),
                "shape": f"{cols_px}x{rows_px}x{len(part.frames)}",
                "channels": int(h.get("SamplesPerPixel") or 1),
                "spacing": part.geometry.spacing,
                "n_files": n,
                "sex": sex,
                "age": age,
                "manufacturer": text("Manufacturer"),
                "scanner": text("ManufacturerModelName"),
                "site": institution,
                "series_description": text("SeriesDescription")
                if "descriptors" in retain
                else None,
                "synthetic": series.synthetic,
                # a folder with several series (or a series of several volumes) needs
                # load(path, series=uid, part=part); the UID is a keyed one load() also accepts
                "series_uid": remap_uid(uid, secret=secret) if uid else None,
                "part": part.label or None,
                "needs_series": (n > 1 and not single_series_dir) or len(parts) > 1,
                "geometry_warning": "; ".join(messages) or None,
            }
        )
    return rows


def scan(
    root: str | os.PathLike[str],
    *,
    progress: bool = False,
    retain: Iterable[str] = (),
    secret: bytes | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Walk ``root`` for NIfTI files and DICOM series, reading headers only.

    The walk is streamed folder by folder: of each file it keeps only the few header values its
    row needs and the geometry of its planes, so memory stays flat in the number of files.

    Args:
        root: folder to walk (recursively; hidden files and folders are skipped).
        progress: show a tqdm progress bar over files.
        retain: de-identification retain options (:data:`medgen._internal.deid.RETAIN_OPTIONS`):
            ``"institution_identity"`` keeps InstitutionName as ``site`` (default: a keyed
            pseudonym ``site-...``), ``"descriptors"`` keeps ``series_description`` (default:
            empty, free text may name people).
        secret: the key of the pseudonyms (default: the project secret, see docs/privacy.md).

    Returns:
        ``(manifest, errors)``. ``manifest`` has one row per image (a NIfTI file, a single DICOM
        file, or a DICOM series = the files of one SeriesInstanceUID in one folder) with the
        columns :data:`MANIFEST_COLUMNS`: ``image_path`` relative to ``root`` (a series row points
        at its folder; when that folder holds several series, pass ``series=row.series_uid`` to
        :func:`medgen.io.load`); ``subject_id`` is ``sub-`` + a keyed hash (HMAC-SHA-256 under
        the project secret) of PatientID (a BIDS ``sub-*`` folder for NIfTI), never the raw
        identifier nor a plain hash of it; ``series_uid`` is a keyed replacement of the
        SeriesInstanceUID (the same for the same series within a project); ``image_id`` is a hash
        of path, series and part; ``part`` names one volume of a series that holds several
        (``block=2`` for the second contiguous block of a series with gaps, ``EchoNumbers=2``
        for one echo, ...; empty otherwise) and is passed to ``load(path, series=series_uid,
        part=part)``, with ``needs_series`` true, and ``geometry_warning`` saying why the series
        was split; ``split`` is empty and ``source`` is ``"real"`` (``"synthetic"`` for
        images whose header carries medgen's synthetic mark), so the table starts a cohort
        manifest. ``shape`` is ``"XxYxZ"``; ``spacing_*`` in mm; ``age`` in years (float) from
        PatientAge with its unit (``058Y``, ``006M``, ``010W``, ``003D``; a number without a unit
        is warned about and left missing) or birth and study dates; ``sex`` is PatientSex as
        ``F``, ``M`` or ``O`` (anything else, e.g. ``N/A``, is missing); ``manufacturer``, ``scanner`` (model),
        ``site`` (institution, pseudonymised) from the headers. ``errors`` has columns ``path``
        (relative to ``root``) and ``reason``, one row per file or series that could not be read.
        One bad file never stops a scan.

    Raises:
        MedgenFileNotFoundError: ``root`` does not exist.
        MedgenValueError: ``root`` is a file.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from medgen.io._dicom import read_dataset

    retain = tuple(retain)
    allowed_keywords(retain)  # validates the option names
    key = project_secret() if secret is None else secret
    root_p = check_exists(root).resolve()
    if not root_p.is_dir():
        raise MedgenValueError(f"scan: {root_p} is a file; pass the folder that holds the images.")

    rows: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    skipped = 0
    bar = tqdm(desc="scan", unit="file", disable=not progress)
    for dirpath, dirnames, filenames in os.walk(root_p):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = Path(dirpath)
        by_series: dict[str, _Series] = {}
        for name in sorted(f for f in filenames if not f.startswith(".")):
            bar.update(1)
            path = folder / name
            rel = path.relative_to(root_p).as_posix()
            kind = _is_candidate(path)
            if kind is None:
                skipped += 1
                continue
            try:
                if kind == "nifti":
                    rows.append(_nifti_row(path, rel, key))
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
                by_series[uid] = _summarise(ds, path, by_series.get(uid))
                del ds
            except Exception as err:
                errors.append({"path": rel, "reason": _reason(err, path)})
        for uid, series in by_series.items():
            try:
                rows.extend(
                    _dicom_rows(
                        series,
                        folder,
                        root_p,
                        single_series_dir=len(by_series) == 1,
                        secret=key,
                        retain=retain,
                    )
                )
            except Exception as err:
                where = folder.relative_to(root_p).as_posix() if folder != root_p else "."
                shown = remap_uid(uid, secret=key) if not uid.startswith("<") else uid
                errors.append({"path": where, "reason": f"series {shown}: {_reason(err, folder)}"})
    bar.close()
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
            f"img-{_hash(p + '|' + str(u or '') + ('|' + str(b) if b else ''), 16)}"
            for p, u, b in zip(
                manifest["image_path"],
                manifest.get("series_uid", [None] * len(manifest)),
                manifest.get("part", [None] * len(manifest)),
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
