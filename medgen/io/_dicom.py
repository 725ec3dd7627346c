"""DICOM reading: single files (single- or multi-frame) and series folders, geometry in RAS mm.

Why not MONAI's ``PydicomReader`` for series: MONAI 1.6.1 stacks slices in ``InstanceNumber`` order
and takes the slice spacing from the mean absolute difference of the *z* coordinate of consecutive
``ImagePositionPatient`` values. Both are wrong when InstanceNumber disagrees with position
(shuffled or restarted numbering) and the spacing is wrong for any sagittal/coronal series.
Here slices are sorted by their position projected on the slice normal
(``cross(row direction, column direction)`` from ``ImageOrientationPatient``), the slice step is
taken from the positions, and RescaleSlope/Intercept are applied per slice.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medgen.errors import (
    DicomError,
    MultipleSeriesError,
    SeriesGeometryError,
    SeriesGeometryWarning,
)
from medgen.io._common import LPS_TO_RAS, SYNTHETIC_MARK, has_pixel_data, make_metatensor

if TYPE_CHECKING:
    from monai.data import MetaTensor
    from pydicom import Dataset

logger = logging.getLogger(__name__)

#: header fields copied into ``MetaTensor.meta`` (when present), by DICOM keyword
META_KEYWORDS = (
    "Modality",
    "SOPClassUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "SeriesNumber",
    "SeriesDescription",
    "StudyDescription",
    "StudyDate",
    "ImageType",
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientWeight",
    "Manufacturer",
    "ManufacturerModelName",
    "InstitutionName",
    "StationName",
    "BodyPartExamined",
    "MagneticFieldStrength",
    "SliceThickness",
    "RepetitionTime",
    "EchoTime",
    "KVP",
    "PhotometricInterpretation",
    "ImageComments",
    "DerivationDescription",
    "BurnedInAnnotation",
)


@dataclass
class Frame:
    """One 2D image plane: a single-frame file or one frame of a multi-frame file."""

    path: Path
    ds: Dataset
    index: int | None  # frame number inside a multi-frame file, None for single-frame files
    ipp: np.ndarray | None  # ImagePositionPatient, LPS mm
    iop: np.ndarray | None  # ImageOrientationPatient (row dir, column dir), LPS
    pixel_spacing: tuple[float, float]  # (between rows, between columns), mm
    slope: float
    intercept: float
    slice_step: float | None  # SpacingBetweenSlices / SliceThickness, for single planes


def _plain(value: Any) -> Any:
    """DICOM element value -> plain python (str, int, float, list)."""
    from pydicom.multival import MultiValue
    from pydicom.valuerep import IS, DSfloat, PersonName

    if isinstance(value, MultiValue | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, DSfloat):
        return float(value)
    if isinstance(value, IS):
        return int(value)
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("latin-1", "replace")
    return value


def is_synthetic(ds: Dataset) -> bool:
    """True when ``ds`` carries the marks ``save(..., synthetic=True)`` writes."""
    image_type = ds.get("ImageType") or []
    if isinstance(image_type, str):
        image_type = image_type.split("\\")
    if "SYNTHETIC" in [str(v).upper() for v in image_type]:
        return True
    text = f"{ds.get('ImageComments', '') or ''} {ds.get('DerivationDescription', '') or ''}"
    return SYNTHETIC_MARK in text


def header_meta(ds: Dataset) -> dict[str, Any]:
    """The :data:`META_KEYWORDS` present in ``ds`` as plain python values."""
    out: dict[str, Any] = {}
    for kw in META_KEYWORDS:
        if kw in ds:
            try:
                out[kw] = _plain(ds[kw].value)
            except Exception:  # a malformed optional field never blocks loading
                logger.debug("skipping malformed %s", kw)
    return out


def read_dataset(path: Path, *, stop_before_pixels: bool = False) -> Dataset:
    """Read one DICOM file, translating pydicom's failures into :class:`DicomError`."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        size = path.stat().st_size
    except OSError as err:
        raise DicomError(f"Cannot read {path}: {err}.") from err
    if size == 0:
        raise DicomError(
            f"Cannot read {path}: the file is empty (0 bytes). Re-copy or re-export it."
        )
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
    except InvalidDicomError as err:
        raise DicomError(f"Cannot read {path}: not a DICOM file ({err}).") from err
    except Exception as err:
        raise DicomError(
            f"Cannot read {path}: the DICOM header is corrupt or truncated "
            f"({type(err).__name__}: {err}). Re-copy or re-export the file."
        ) from err
    # force=True accepts files without the 128-byte preamble, but also any bytes at all:
    # a real image has at least Rows and Columns.
    if "Rows" not in ds or "Columns" not in ds:
        what = ds.get("Modality") or ds.get("SOPClassUID")
        raise DicomError(
            f"Cannot read {path}: "
            + (
                f"it is a DICOM object without an image (Modality/SOP class {what})."
                if what
                else "not a DICOM image (no Rows/Columns in the header: random bytes or another format)."
            )
            + " Remove it from the image folder or point medgen at an image file."
        )
    return ds


def _raw_text(ds: Any, keyword: str) -> list[str] | None:
    """Values of a text-VR element (DS, IS) without pydicom's per-value conversion.

    pydicom converts DS strings through validating ``DSfloat`` objects, which costs more than
    decoding the pixels of a small slice; the raw bytes parse with ``float`` directly.
    """
    if ds is None:
        return None
    tag = _TAGS.get(keyword)
    if tag is None:
        from pydicom.datadict import tag_for_keyword

        tag = _TAGS[keyword] = int(tag_for_keyword(keyword) or 0)
    elem = ds.get_item(tag)
    if elem is None:
        return None
    value = elem.value
    if isinstance(value, bytes):
        text = value.decode("ascii", "replace").strip(" \x00")
        return [v.strip(" \x00") for v in text.split("\\")] if text else None
    if value is None or value == "":
        return None
    if isinstance(value, str | int | float):
        return [str(value)]
    return [str(v) for v in value]


_TAGS: dict[str, int] = {}


def _floats(ds: Any, keyword: str, n: int, path: Path) -> np.ndarray | None:
    raw = _raw_text(ds, keyword)
    if raw is None:
        return None
    try:
        vals = np.asarray([float(v) for v in raw], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DicomError(f"{path}: {keyword} {raw!r} is not numeric.") from err
    if vals.shape != (n,) or not np.all(np.isfinite(vals)):
        raise DicomError(f"{path}: {keyword} must hold {n} finite numbers, found {raw}.")
    return vals


def _first_item(ds: Any, *keywords: str) -> Any:
    """Walk nested sequences, taking item 0 of each; None when any is absent."""
    node = ds
    for kw in keywords:
        seq = node.get(kw) if node is not None else None
        if not seq:
            return None
        node = seq[0]
    return node


def _scalar(ds: Any, keyword: str, default: float | None) -> float | None:
    raw = _raw_text(ds, keyword)
    if not raw or raw[0] == "":
        return default
    try:
        return float(raw[0])
    except (TypeError, ValueError):
        return default


def frames_of(ds: Dataset, path: Path) -> list[Frame]:
    """Split a dataset into its image planes with their geometry and rescale parameters."""
    n_frames = int(_scalar(ds, "NumberOfFrames", 1) or 1)
    slope = _scalar(ds, "RescaleSlope", 1.0) or 1.0
    intercept = _scalar(ds, "RescaleIntercept", 0.0) or 0.0
    if "DoseGridScaling" in ds:  # RT Dose stores dose = pixel * DoseGridScaling
        slope *= _scalar(ds, "DoseGridScaling", 1.0) or 1.0
    ps = _floats(ds, "PixelSpacing", 2, path)
    if ps is None:
        ps = _floats(ds, "ImagerPixelSpacing", 2, path)
    step = _scalar(ds, "SpacingBetweenSlices", None) or _scalar(ds, "SliceThickness", None)
    iop = _floats(ds, "ImageOrientationPatient", 6, path)
    ipp = _floats(ds, "ImagePositionPatient", 3, path)

    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame:  # enhanced multi-frame: geometry in functional groups
        shared = _first_item(ds, "SharedFunctionalGroupsSequence")
        frames = []
        for i, fg in enumerate(list(per_frame)[:n_frames]):

            def pick(*kws: str, fg: Any = fg) -> Any:
                item = _first_item(fg, *kws)
                return item if item is not None else _first_item(shared, *kws)

            orient = pick("PlaneOrientationSequence")
            pos = pick("PlanePositionSequence")
            meas = pick("PixelMeasuresSequence")
            pvt = pick("PixelValueTransformationSequence")
            f_iop = _floats(orient, "ImageOrientationPatient", 6, path) if orient else iop
            f_ipp = _floats(pos, "ImagePositionPatient", 3, path) if pos else None
            f_ps = _floats(meas, "PixelSpacing", 2, path) if meas else ps
            f_step = (
                (
                    _scalar(meas, "SpacingBetweenSlices", None)
                    or _scalar(meas, "SliceThickness", None)
                )
                if meas
                else step
            )
            frames.append(
                Frame(
                    path=path,
                    ds=ds,
                    index=i,
                    ipp=f_ipp,
                    iop=f_iop,
                    pixel_spacing=tuple(f_ps) if f_ps is not None else (1.0, 1.0),  # type: ignore[arg-type]
                    slope=_scalar(pvt, "RescaleSlope", slope) or slope,
                    intercept=_scalar(pvt, "RescaleIntercept", intercept) or 0.0,
                    slice_step=f_step or step,
                )
            )
        return frames

    pixel_spacing = (float(ps[0]), float(ps[1])) if ps is not None else (1.0, 1.0)
    if n_frames == 1 and "NumberOfFrames" not in ds:
        return [Frame(path, ds, None, ipp, iop, pixel_spacing, slope, intercept, step)]

    # classic multi-frame: RT Dose's GridFrameOffsetVector, else evenly spaced along the normal
    positions: list[np.ndarray | None]
    gfov = ds.get("GridFrameOffsetVector")
    if ipp is not None and iop is not None:
        normal = np.cross(iop[:3], iop[3:])
        if gfov is not None and len(gfov) == n_frames:
            offsets = np.asarray([float(v) for v in gfov])
            offsets = offsets - offsets[0] if offsets[0] != 0 else offsets
            positions = [ipp + o * normal for o in offsets]
        else:
            s = step or 1.0
            positions = [ipp + k * s * normal for k in range(n_frames)]
    else:
        positions = [None] * n_frames
    return [
        Frame(path, ds, k, positions[k], iop, pixel_spacing, slope, intercept, step)
        for k in range(n_frames)
    ]


@dataclass
class Geometry:
    """Slice order and voxel-to-RAS affine of a stack of frames."""

    order: np.ndarray  # indices into the frame list, in increasing position along the normal
    affine: np.ndarray  # 4x4, voxel (x=column, y=row, z=slice) -> RAS mm
    spacing: tuple[float, float, float]
    assumed: bool  # True when the files carry no position/orientation (identity assumed)


def stack_geometry(frames: Sequence[Frame], where: str) -> Geometry:
    """Sort ``frames`` along the slice normal and build the affine, checking consistency.

    Raises:
        SeriesGeometryError: mixed orientations, pixel spacings or duplicate positions.

    Warns:
        SeriesGeometryWarning: missing slices or uneven slice spacing.
    """
    n = len(frames)
    have_iop = [f.iop is not None for f in frames]
    have_ipp = [f.ipp is not None for f in frames]
    assumed = not (all(have_iop) and all(have_ipp))
    if assumed and n > 1 and (any(have_iop) or any(have_ipp)):
        missing = [str(f.path) for f in frames if f.iop is None or f.ipp is None][:5]
        raise SeriesGeometryError(
            f"{where}: some slices lack ImagePositionPatient/ImageOrientationPatient ({missing}); "
            "cannot order the series. Remove those files or fix their headers."
        )
    if assumed:
        logger.info("%s: no patient geometry in the header; assuming identity orientation", where)
        iop = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
        ipps = np.zeros((n, 3))
        rank = np.arange(n)
        if n > 1 and all(f.index is None for f in frames):
            # separate files with no positions: InstanceNumber is the only order left
            nums = [_scalar(f.ds, "InstanceNumber", None) for f in frames]
            if any(v is None for v in nums):
                raise SeriesGeometryError(
                    f"{where}: the files carry neither ImagePositionPatient nor InstanceNumber, "
                    "so their order is unknown. Load them one at a time."
                )
            rank = np.argsort(np.argsort(np.asarray(nums, dtype=float), kind="stable"))
            warnings.warn(
                f"{where}: no ImagePositionPatient/ImageOrientationPatient; slices are stacked by "
                "InstanceNumber with an assumed identity orientation and "
                f"{frames[0].slice_step or 1.0} mm steps.",
                SeriesGeometryWarning,
                stacklevel=3,
            )
        ipps[:, 2] = rank * (frames[0].slice_step or 1.0)
    else:
        iops = np.stack([f.iop for f in frames])  # type: ignore[misc]
        iop = iops[0]
        if not np.allclose(iops, iop, atol=1e-4):
            distinct = np.unique(np.round(iops, 4), axis=0)
            raise SeriesGeometryError(
                f"{where}: the slices have {len(distinct)} different orientations "
                f"(ImageOrientationPatient {distinct.tolist()}); a volume needs one. The folder mixes "
                "acquisitions (e.g. a localizer); load one orientation at a time by moving the files apart."
            )
        ipps = np.stack([f.ipp for f in frames])  # type: ignore[misc]
    spacings = np.asarray([f.pixel_spacing for f in frames])
    if not np.allclose(spacings, spacings[0], rtol=1e-4):
        raise SeriesGeometryError(
            f"{where}: the slices have different PixelSpacing values "
            f"{np.unique(spacings, axis=0).tolist()}; resample them to one grid first."
        )
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    norm = np.linalg.norm(normal)
    if norm < 1e-6:
        raise SeriesGeometryError(f"{where}: ImageOrientationPatient {iop.tolist()} is degenerate.")
    normal = normal / norm
    proj = ipps @ normal
    order = np.argsort(proj, kind="stable")
    dr, dc = (float(v) for v in spacings[0])
    if n > 1:
        sp = proj[order]
        diffs = np.diff(sp)
        if np.any(diffs < 1e-3):
            dup = sp[1:][diffs < 1e-3][:5]
            raise SeriesGeometryError(
                f"{where}: {int(np.sum(diffs < 1e-3))} slices share a position with another "
                f"(positions along the normal, mm: {np.round(dup, 3).tolist()}). The series holds several "
                "volumes (time points, echoes or duplicates); split them into separate folders."
            )
        step_vec = (ipps[order[-1]] - ipps[order[0]]) / (n - 1)
        med = float(np.median(diffs))
        gaps = diffs > 1.5 * med
        if np.any(gaps):
            warnings.warn(
                f"{where}: {int(gaps.sum())} gap(s) in the slice positions (median spacing {med:.4g} mm, "
                f"gaps of {np.round(diffs[gaps], 4).tolist()} mm after positions "
                f"{np.round(sp[:-1][gaps], 3).tolist()}): slices are missing. The volume is stacked "
                "without them, so distances across the gap are wrong; find the missing files.",
                SeriesGeometryWarning,
                stacklevel=3,
            )
        elif np.max(np.abs(diffs - med)) > max(0.01 * med, 1e-3):
            warnings.warn(
                f"{where}: uneven slice spacing (from {diffs.min():.4g} to {diffs.max():.4g} mm, median "
                f"{med:.4g} mm); the affine uses the mean step. Resample if exact geometry matters.",
                SeriesGeometryWarning,
                stacklevel=3,
            )
    else:
        step_vec = normal * float(frames[0].slice_step or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * dc
    lps[:3, 1] = col_dir * dr
    lps[:3, 2] = step_vec
    lps[:3, 3] = ipps[order[0]]
    affine = LPS_TO_RAS @ lps
    spacing = (dc, dr, float(np.linalg.norm(step_vec)))
    return Geometry(order=order, affine=affine, spacing=spacing, assumed=assumed)


def _decode(ds: Dataset, path: Path) -> np.ndarray:
    try:
        return np.asarray(ds.pixel_array)
    except Exception as err:
        msg = str(err)
        low = msg.lower()
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax_name = getattr(syntax, "name", str(syntax))
        if "length" in low or "truncat" in low or "number of bytes" in low:
            hint = "the pixel data is truncated: re-copy or re-export the file"
        elif "all available plugins" in low:
            hint = (
                f"every installed decoder failed on {syntax_name}: the pixel data may be corrupt, "
                "or need another decoder (e.g. GDCM: pip install python-gdcm); or re-export the "
                "file uncompressed"
            )
        elif "plugin" in low or "handler" in low or "dependencies" in low:
            hint = (
                f"no decoder for {syntax_name} is installed: pip install pylibjpeg "
                "pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle, or re-export the file uncompressed"
            )
        else:
            hint = "the file is corrupt; re-copy or re-export it"
        raise DicomError(
            f"Cannot decode the pixels of {path} ({type(err).__name__}: {msg}); {hint}."
        ) from err


def build_volume(frames: Sequence[Frame], where: str, source: str) -> MetaTensor:
    """Decode and stack ``frames`` into a (C, X, Y, Z) float32 MetaTensor."""
    geom = stack_geometry(frames, where)
    first = frames[0].ds
    rows, cols = int(first.Rows), int(first.Columns)
    samples = int(first.get("SamplesPerPixel", 1) or 1)
    palette = str(first.get("PhotometricInterpretation", "")) == "PALETTE COLOR"
    if palette:
        samples = 3  # indices are mapped through the palette to RGB
    for f in frames:
        if int(f.ds.Rows) != rows or int(f.ds.Columns) != cols:
            raise SeriesGeometryError(
                f"{where}: {f.path} is {f.ds.Rows}x{f.ds.Columns} but the series is {rows}x{cols}; "
                "a volume needs one slice size. Move the odd file out."
            )
    n = len(frames)
    shape = (n, rows, cols) if samples == 1 else (n, rows, cols, samples)
    out = np.empty(shape, dtype=np.float32)
    cache: dict[int, np.ndarray] = {}
    for k, idx in enumerate(geom.order):
        f = frames[int(idx)]
        key = id(f.ds)
        px = cache.get(key)
        if px is None:
            px = _decode(f.ds, f.path)
            if palette:
                from pydicom.pixels import apply_color_lut

                px = np.asarray(apply_color_lut(px, f.ds))
            elif "ModalityLUTSequence" in f.ds and samples == 1:
                from pydicom.pixels import apply_modality_lut

                px = np.asarray(apply_modality_lut(px, f.ds), dtype=np.float32)
            if f.index is not None:
                cache[key] = px
        single = px.ndim == (2 if samples == 1 else 3)
        plane = px if single else px[f.index or 0]
        if single and f.index:
            raise DicomError(
                f"{f.path}: frame {f.index} requested but the pixel data holds one frame."
            )
        if plane.shape[:2] != (rows, cols):
            raise DicomError(
                f"{f.path}: decoded frame shape {plane.shape} does not match Rows/Columns {rows}x{cols}."
            )
        dst = out[k]
        np.copyto(dst, plane, casting="unsafe")
        if f.slope != 1.0:
            dst *= np.float32(f.slope)
        if f.intercept != 0.0:
            dst += np.float32(f.intercept)
    # (Z, Y, X[, C]) in memory -> (C, X, Y, Z) view: x = column index, y = row index, z = slice
    arr = out.transpose(2, 1, 0)[None] if samples == 1 else out.transpose(3, 2, 1, 0)
    meta = header_meta(first)
    meta.update(
        filename_or_obj=source,
        format="dicom",
        spacing=geom.spacing,
        n_slices=n,
        geometry_assumed=geom.assumed,
        synthetic=is_synthetic(first),
        filenames=[str(frames[int(i)].path) for i in geom.order]
        if frames[0].index is None
        else [str(frames[0].path)],
    )
    return make_metatensor(arr, geom.affine, meta)


def _series_key(ds: Dataset) -> str:
    return str(ds.get("SeriesInstanceUID", "") or "<no SeriesInstanceUID>")


def list_candidate_files(folder: Path) -> list[Path]:
    """Files in ``folder`` (not recursive) that may be DICOM: skips hidden files, DICOMDIR, NIfTI."""
    out = []
    for p in sorted(folder.iterdir()):
        name = p.name
        if name.startswith(".") or not p.is_file() or name.upper() == "DICOMDIR":
            continue
        if name.lower().endswith((".nii", ".nii.gz", ".txt", ".json", ".csv", ".md", ".xml")):
            continue
        out.append(p)
    return out


def load_dicom_dir(folder: Path, *, series: str | int | None) -> MetaTensor:
    """Load the DICOM series held in ``folder`` (``series`` picks one when there are several)."""
    from medgen.io._common import DICOM_SUFFIXES

    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    for p in list_candidate_files(folder):
        try:
            ds = read_dataset(p)
        except DicomError:
            if p.suffix.lower() in DICOM_SUFFIXES and p.suffix:
                raise
            logger.debug("skipping non-DICOM file %s", p)
            continue
        if not has_pixel_data(ds):
            logger.debug("skipping %s: no pixel data", p)
            continue
        groups.setdefault(_series_key(ds), []).append((p, ds))
    if not groups:
        raise DicomError(
            f"Cannot load {folder}: the folder holds no DICOM image files. Point medgen at a folder "
            "of one DICOM series, a DICOM file or a NIfTI file."
        )
    if series is not None:
        wanted = str(series)
        chosen = [
            k
            for k, items in groups.items()
            if k == wanted or str(items[0][1].get("SeriesNumber", "")) == wanted
        ]
        if not chosen and wanted.startswith("2.25."):  # a keyed replacement UID from scan()
            from medgen._internal.deid import project_secret, remap_uid

            secret = project_secret()
            chosen = [k for k in groups if remap_uid(k, secret=secret) == wanted]
        if len(chosen) != 1:
            raise MultipleSeriesError(
                f"{folder}: series={series!r} matches {len(chosen)} of the series in the folder; "
                f"pass a SeriesInstanceUID or SeriesNumber from:\n{_describe(groups)}"
            )
        key = chosen[0]
    elif len(groups) > 1:
        raise MultipleSeriesError(
            f"{folder} holds {len(groups)} DICOM series; pick one with "
            f"load(path, series=<SeriesInstanceUID or SeriesNumber>):\n{_describe(groups)}"
        )
    else:
        key = next(iter(groups))
    items = groups[key]
    frames: list[Frame] = []
    for p, ds in items:
        fs = frames_of(ds, p)
        if len(items) > 1 and len(fs) > 1:
            raise DicomError(
                f"{folder}: series {key} mixes multi-frame files ({p}) with other files; "
                "load the multi-frame file on its own."
            )
        frames.extend(fs)
    return build_volume(frames, where=f"{folder} (series {key})", source=str(folder))


def _describe(groups: dict[str, list[tuple[Path, Dataset]]]) -> str:
    lines = []
    for k, items in groups.items():
        ds = items[0][1]
        lines.append(
            f"  {k}  SeriesNumber={ds.get('SeriesNumber', '')} Modality={ds.get('Modality', '')} "
            f"description={str(ds.get('SeriesDescription', ''))!r} files={len(items)}"
        )
    return "\n".join(lines)


def load_dicom_file(path: Path) -> MetaTensor:
    """Load one DICOM file (single-frame -> (C, X, Y, 1); multi-frame -> (C, X, Y, frames))."""
    ds = read_dataset(path)
    if not has_pixel_data(ds):
        raise DicomError(
            f"Cannot load {path}: the DICOM file has no pixel data (Modality {ds.get('Modality', '?')}). "
            "Point medgen at an image file."
        )
    return build_volume(frames_of(ds, path), where=str(path), source=str(path))
