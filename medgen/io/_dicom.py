"""DICOM reading: single files (single- or multi-frame) and series folders, geometry in RAS mm.

Why not MONAI's ``PydicomReader`` for series: MONAI 1.6.1 stacks slices in ``InstanceNumber`` order
and takes the slice spacing from the mean absolute difference of the *z* coordinate of consecutive
``ImagePositionPatient`` values. Both are wrong when InstanceNumber disagrees with position
(shuffled or restarted numbering) and the spacing is wrong for any sagittal/coronal series.
Here slices are sorted by their position projected on the slice normal
(``cross(row direction, column direction)`` from ``ImageOrientationPatient``), the slice step is
taken from the positions, and RescaleSlope/Intercept are applied per slice.

Issue 18 (real clinical files): every slice is placed where its header says. Series with gaps or
uneven steps are split into contiguous blocks (:func:`series_parts`; ``resample_gaps`` opts into
interpolation), slices sharing positions are split by echo/time/stack tags, Siemens MOSAIC images
are unpacked (:func:`_mosaic_frames`, CSA header via nibabel), enhanced multi-frame files take
each frame's geometry from the functional groups, a zero or missing PixelSpacing falls back to
ImagerPixelSpacing/NominalScannedPixelSpacing or is an error (:func:`pixel_spacing_of`), files
without file meta are force-read, and MONOCHROME1 is inverted reversibly.
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
    DicomReadWarning,
    MultipleSeriesError,
    SeriesGeometryError,
    SeriesGeometryWarning,
)
from medgen.io._common import (
    LPS_TO_RAS,
    SYNTHETIC_MARK,
    has_pixel_data,
    make_metatensor,
)

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


#: tags that tell apart several volumes sharing slice positions in one series (echoes, time
#: points, repeated acquisitions, stacks of an enhanced multi-frame file), tried in this order
SPLIT_KEYWORDS = (
    "EchoNumbers",
    "TemporalPositionIdentifier",
    "TemporalPositionIndex",
    "StackID",
    "EffectiveEchoTime",
    "AcquisitionNumber",
    "TriggerTime",
)

#: a slice lies on its block's regular grid when its ImagePositionPatient is within this many mm
#: of where the grid puts it ...
GRID_TOLERANCE_MM = 0.1
#: ... and within this fraction of the slice step (the smaller of the two applies)
GRID_TOLERANCE_FRACTION = 0.1

#: pixel size tags tried, in order, when PixelSpacing is missing or zero
SPACING_FALLBACKS = ("ImagerPixelSpacing", "NominalScannedPixelSpacing")


@dataclass
class Frame:
    """One 2D image plane: a single-frame file, one frame of a multi-frame file, one mosaic tile."""

    path: Path
    ds: Dataset
    index: int | None  # frame number inside a multi-frame file, None for single-frame files
    ipp: np.ndarray | None  # ImagePositionPatient, LPS mm
    iop: np.ndarray | None  # ImageOrientationPatient (row dir, column dir), LPS
    pixel_spacing: tuple[float, float]  # (between rows, between columns), mm
    slope: float
    intercept: float
    slice_step: float | None  # SpacingBetweenSlices / SliceThickness, for single planes
    #: values of :data:`SPLIT_KEYWORDS` present for this plane, as (keyword, text) pairs
    split_tags: tuple[tuple[str, str], ...] = ()
    #: mosaic tile (row0, col0, rows, cols) inside the stored image; None for whole planes
    tile: tuple[int, int, int, int] | None = None
    #: the tag the pixel spacing came from ("PixelSpacing", a fallback, "spacing=" or "assumed")
    spacing_source: str = "PixelSpacing"

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the plane."""
        if self.tile is not None:
            return self.tile[2], self.tile[3]
        return int(self.ds.Rows), int(self.ds.Columns)


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


def header_meta(ds: Dataset, where: str = "") -> dict[str, Any]:
    """The :data:`META_KEYWORDS` present in ``ds`` as plain python values.

    PatientSex is normalised to ``F``/``M``/``O`` (dropped otherwise, e.g. ``N/A``); a PatientAge
    that is not a DICOM age with its unit (``"099"``) is dropped with a warning, so neither a
    manifest nor a written header carries a guess.
    """
    from medgen.io._scan import normalise_sex, parse_age

    out: dict[str, Any] = {}
    for kw in META_KEYWORDS:
        if kw in ds:
            try:
                out[kw] = _plain(ds[kw].value)
            except Exception:  # a malformed optional field never blocks loading
                logger.debug("skipping malformed %s", kw)
    if "PatientSex" in out:
        sex = normalise_sex(out.pop("PatientSex"))
        if sex is not None:
            out["PatientSex"] = sex
    if "PatientAge" in out:
        age = str(out.pop("PatientAge") or "").strip()
        if age and parse_age(age, warn=True, where=where or "PatientAge") is not None:
            out["PatientAge"] = age
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
    _fix_transfer_syntax(ds, path)
    return ds


def _fix_transfer_syntax(ds: Dataset, path: Path) -> None:
    """Give a file without file meta (no preamble / group 0002) the transfer syntax its data set
    was read with, so its pixels decode; warn that it was force-read."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = getattr(ds, "original_encoding", None) or (
        ds.is_implicit_VR,
        ds.is_little_endian,
    )
    if implicit is None or little is None:
        return
    syntax = (
        ImplicitVRLittleEndian
        if implicit
        else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    )
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    warnings.warn(
        f"{path}: no DICOM file meta information (no transfer syntax); force-read as "
        f"{syntax.name}. Re-export the file with a standard header if its pixels look wrong.",
        DicomReadWarning,
        stacklevel=3,
    )


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


def _spacing_pair(node: Any, keyword: str) -> tuple[float, float] | None:
    """Two positive finite numbers from ``keyword`` of ``node``; None when absent, zero or junk."""
    raw = _raw_text(node, keyword)
    if raw is None:
        return None
    try:
        vals = [float(v) for v in raw]
    except (TypeError, ValueError):
        return None
    if len(vals) != 2 or not all(np.isfinite(v) and v > 0 for v in vals):
        return None
    return vals[0], vals[1]


def pixel_spacing_of(
    nodes: Sequence[Any],
    path: Path,
    *,
    spacing: Sequence[float] | None = None,
    positioned: bool = False,
) -> tuple[tuple[float, float], str]:
    """(between rows, between columns) in mm and the tag it came from.

    ``nodes`` are searched in order (a per-frame Pixel Measures item, the shared one, the dataset)
    for PixelSpacing, then for the :data:`SPACING_FALLBACKS`. An explicit ``spacing`` (x, y) =
    (between columns, between rows) in mm wins over the header. A file without any of these tags
    and without patient geometry (secondary capture, ultrasound, photographs) gets 1 x 1 "mm"
    pixel units (source ``"assumed"``); a positioned image (``positioned``) or a zero/invalid
    PixelSpacing without a fallback is an error, never a singular affine.

    Raises:
        DicomError: PixelSpacing is zero, invalid or missing on a positioned image, no fallback
            tag holds a valid size and ``spacing`` was not given.
    """
    if spacing is not None:
        sx, sy = (float(v) for v in list(spacing)[:2])
        return (sy, sx), "spacing="
    present = None
    for node in nodes:
        if node is None:
            continue
        found = _spacing_pair(node, "PixelSpacing")
        if found is not None:
            return found, "PixelSpacing"
        raw = _raw_text(node, "PixelSpacing")
        if raw is not None and present is None:
            present = raw
    for kw in SPACING_FALLBACKS:
        for node in nodes:
            found = _spacing_pair(node, kw) if node is not None else None
            if found is not None:
                return found, kw
    if present is None and not positioned:
        return (1.0, 1.0), "assumed"
    what = (
        f"PixelSpacing is {chr(92).join(present)!r}"
        if present is not None
        else "PixelSpacing is missing"
    )
    raise DicomError(
        f"{path}: {what} and neither {' nor '.join(SPACING_FALLBACKS)} holds a pixel size, so "
        "the image has no valid size in mm. Pass the pixel size yourself: "
        "medgen.io.load(path, spacing=(x_mm, y_mm))."
    )


def _split_values(*nodes: Any) -> tuple[tuple[str, str], ...]:
    out: dict[str, str] = {}
    for node in nodes:
        if node is None:
            continue
        for kw in SPLIT_KEYWORDS:
            if kw in out:
                continue
            raw = _raw_text(node, kw)
            if raw:
                out[kw] = "\\".join(raw)
    return tuple(out.items())


def _is_mosaic(ds: Any) -> bool:
    image_type = ds.get("ImageType") or []
    if isinstance(image_type, str):
        image_type = image_type.split("\\")
    return "MOSAIC" in [str(v).upper() for v in image_type] and (0x0029, 0x1010) in ds


def _mosaic_frames(
    ds: Dataset, path: Path, slope: float, intercept: float, spacing: Sequence[float] | None
) -> list[Frame]:
    """The tiles of a Siemens MOSAIC image as frames, with nibabel's geometry.

    NumberOfImagesInMosaic and SliceNormalVector come from the CSA image header (read with
    ``nibabel.nicom.csareader``), else from (0019,100A) and the cross product of the
    orientation; the origin is corrected as nibabel's ``MosaicWrapper.image_position`` does
    (ImagePositionPatient of a mosaic is the corner of the whole stored image, not of tile 0).
    """
    import warnings as _w

    iop = _floats(ds, "ImageOrientationPatient", 6, path)
    ipp = _floats(ds, "ImagePositionPatient", 3, path)
    if iop is None or ipp is None:
        raise DicomError(
            f"{path}: a Siemens MOSAIC image without ImagePositionPatient/ImageOrientationPatient; "
            "its slices cannot be placed."
        )
    try:
        with _w.catch_warnings():
            _w.simplefilter("ignore")
            from nibabel.nicom import csareader

            csa = csareader.get_csa_header(ds, "image")
            n = csareader.get_n_mosaic(csa) if csa else None
            csa_normal = csareader.get_slice_normal(csa) if csa else None
    except Exception as err:
        raise DicomError(
            f"{path}: a Siemens MOSAIC image whose CSA header (0029,1010) cannot be read "
            f"({type(err).__name__}: {err}); NumberOfImagesInMosaic and the slice normal are "
            "unknown. Re-export the series as one file per slice."
        ) from err
    if not n:
        n = int(_scalar(ds, "NumberOfImagesInMosaic", 0) or 0) or None
        if n is None and (0x0019, 0x100A) in ds:
            n = int(ds[0x0019, 0x100A].value)
    if not n:
        raise DicomError(
            f"{path}: a Siemens MOSAIC image without NumberOfImagesInMosaic (CSA header or "
            "(0019,100A)); the number of slices is unknown. Re-export the series."
        )
    n = int(n)
    mosaic_size = int(np.ceil(np.sqrt(n)))
    md_rc = np.array([int(ds.Rows), int(ds.Columns)], dtype=np.float64)
    rows, cols = (int(v) for v in md_rc // mosaic_size)
    (dr, dc), source = pixel_spacing_of([ds], path, spacing=spacing, positioned=True)
    row_dir, col_dir = iop[:3], iop[3:]
    fix_r, fix_c = (md_rc - md_rc / mosaic_size) / 2
    origin = ipp + col_dir * dr * fix_r + row_dir * dc * fix_c
    normal = (
        np.asarray(csa_normal, dtype=np.float64)
        if csa_normal is not None
        else np.cross(row_dir, col_dir)
    )
    step = _scalar(ds, "SpacingBetweenSlices", None) or _scalar(ds, "SliceThickness", None) or 1.0
    slice_vec = normal * step
    tags = _split_values(ds)
    grid = mosaic_size
    if grid * rows != int(ds.Rows) or grid * cols != int(ds.Columns):
        raise DicomError(
            f"{path}: MOSAIC of {n} tiles of {rows}x{cols} does not fit the stored "
            f"{ds.Rows}x{ds.Columns} image (NumberOfImagesInMosaic / AcquisitionMatrix disagree)."
        )
    return [
        Frame(
            path,
            ds,
            k,
            origin + k * slice_vec,
            iop,
            (dr, dc),
            slope,
            intercept,
            step,
            split_tags=tags,
            tile=((k // grid) * rows, (k % grid) * cols, rows, cols),
            spacing_source=source,
        )
        for k in range(n)
    ]


def frames_of(ds: Dataset, path: Path, *, spacing: Sequence[float] | None = None) -> list[Frame]:
    """Split a dataset into its image planes with their geometry and rescale parameters.

    Single-frame files give one plane; classic multi-frame files one per frame (RT Dose's
    GridFrameOffsetVector, else evenly spaced); enhanced multi-frame files one per frame with the
    geometry of its Per-Frame (else Shared) Functional Groups; Siemens MOSAIC images one per tile.
    ``spacing``: the caller's in-plane pixel size (x, y) mm (see :func:`pixel_spacing_of`).

    Raises:
        DicomError: invalid geometry tags, an enhanced frame with no position, no valid pixel size.
    """
    n_frames = int(_scalar(ds, "NumberOfFrames", 1) or 1)
    slope = _scalar(ds, "RescaleSlope", 1.0) or 1.0
    intercept = _scalar(ds, "RescaleIntercept", 0.0) or 0.0
    if "DoseGridScaling" in ds:  # RT Dose stores dose = pixel * DoseGridScaling
        slope *= _scalar(ds, "DoseGridScaling", 1.0) or 1.0
    step = _scalar(ds, "SpacingBetweenSlices", None) or _scalar(ds, "SliceThickness", None)
    iop = _floats(ds, "ImageOrientationPatient", 6, path)
    ipp = _floats(ds, "ImagePositionPatient", 3, path)

    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame:  # enhanced multi-frame: geometry in functional groups
        shared = _first_item(ds, "SharedFunctionalGroupsSequence")
        items = list(per_frame)
        if len(items) < n_frames:
            raise DicomError(
                f"{path}: NumberOfFrames is {n_frames} but the Per-Frame Functional Groups "
                f"Sequence has {len(items)} items; the file is inconsistent. Re-export it."
            )
        frames = []
        missing_pos: list[int] = []
        for i, fg in enumerate(items[:n_frames]):

            def pick(*kws: str, fg: Any = fg) -> Any:
                item = _first_item(fg, *kws)
                return item if item is not None else _first_item(shared, *kws)

            orient = pick("PlaneOrientationSequence")
            pos = pick("PlanePositionSequence")
            meas = pick("PixelMeasuresSequence")
            pvt = pick("PixelValueTransformationSequence")
            f_iop = _floats(orient, "ImageOrientationPatient", 6, path) if orient else iop
            f_ipp = _floats(pos, "ImagePositionPatient", 3, path) if pos else None
            if f_ipp is None and f_iop is not None:
                missing_pos.append(i + 1)
            f_ps, source = pixel_spacing_of(
                [meas, ds], path, spacing=spacing, positioned=f_iop is not None
            )
            f_step = (
                (
                    _scalar(meas, "SpacingBetweenSlices", None)
                    or _scalar(meas, "SliceThickness", None)
                )
                if meas
                else step
            )
            content = pick("FrameContentSequence")
            echo = pick("MREchoSequence")
            frames.append(
                Frame(
                    path=path,
                    ds=ds,
                    index=i,
                    ipp=f_ipp,
                    iop=f_iop,
                    pixel_spacing=f_ps,
                    slope=_scalar(pvt, "RescaleSlope", slope) or slope,
                    intercept=_scalar(pvt, "RescaleIntercept", intercept) or 0.0,
                    slice_step=f_step or step,
                    split_tags=_split_values(content, echo),
                    spacing_source=source,
                )
            )
        if missing_pos:
            raise DicomError(
                f"{path}: enhanced multi-frame frame(s) {missing_pos[:10]} of {n_frames} have "
                "ImageOrientationPatient but no PlanePositionSequence > ImagePositionPatient "
                "(per-frame or shared), so where they lie is unknown. Re-export the file."
            )
        return frames

    if _is_mosaic(ds):
        return _mosaic_frames(ds, path, slope, intercept, spacing)

    pixel_spacing, source = pixel_spacing_of(
        [ds], path, spacing=spacing, positioned=iop is not None and ipp is not None
    )
    tags = _split_values(ds)
    if n_frames == 1 and "NumberOfFrames" not in ds:
        return [
            Frame(
                path, ds, None, ipp, iop, pixel_spacing, slope, intercept, step, tags, None, source
            )
        ]

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
        Frame(
            path,
            ds,
            k,
            positions[k],
            iop,
            pixel_spacing,
            slope,
            intercept,
            step,
            tags,
            None,
            source,
        )
        for k in range(n_frames)
    ]


@dataclass
class Geometry:
    """Slice order and voxel-to-RAS affine of a stack of frames."""

    order: np.ndarray  # indices into the frame list, in increasing position along the normal
    affine: np.ndarray  # 4x4, voxel (x=column, y=row, z=slice) -> RAS mm
    spacing: tuple[float, float, float]
    assumed: bool  # True when the files carry no position/orientation (identity assumed)
    #: resample_gaps: (positions of the ordered slices, positions of the output grid) along the
    #: slice direction in mm from the first slice; None when the slices are the grid
    resample: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class Part:
    """One loadable volume of a series: a group told apart by :data:`SPLIT_KEYWORDS` and/or a
    contiguous block of slices between gaps."""

    label: str  # "" for a series that is one volume; e.g. "block=2", "EchoNumbers=2,block=1"
    frames: list[Frame]
    geometry: Geometry


def _positions(frames: Sequence[Frame], where: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """(IOP, LPS positions (n, 3), assumed): checks one orientation and one pixel spacing."""
    n = len(frames)
    have_iop = [f.iop is not None for f in frames]
    have_ipp = [f.ipp is not None for f in frames]
    assumed = not (all(have_iop) and all(have_ipp))
    if assumed and n > 1 and (any(have_iop) or any(have_ipp)):
        missing = [
            str(f.path) + (f" frame {f.index + 1}" if f.index is not None else "")
            for f in frames
            if f.iop is None or f.ipp is None
        ][:5]
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
                stacklevel=4,
            )
        ipps[:, 2] = rank * (frames[0].slice_step or 1.0)
    else:
        iops = np.stack([f.iop for f in frames])  # type: ignore[misc]
        iop = iops[0]
        if float(np.max(np.abs(iops - iop))) > 1e-4:
            distinct = np.unique(np.round(iops, 4), axis=0)
            raise SeriesGeometryError(
                f"{where}: the slices have {len(distinct)} different orientations "
                f"(ImageOrientationPatient {distinct.tolist()}); a volume needs one. The folder mixes "
                "acquisitions (e.g. a localizer); load one orientation at a time by moving the files apart."
            )
        ipps = np.stack([f.ipp for f in frames])  # type: ignore[misc]
    spacings = np.asarray([f.pixel_spacing for f in frames])
    if float(np.max(np.abs(spacings - spacings[0]))) > 1e-4 * float(np.max(spacings[0])):
        raise SeriesGeometryError(
            f"{where}: the slices have different PixelSpacing values "
            f"{np.unique(spacings, axis=0).tolist()}; resample them to one grid first."
        )
    if len({(f.tile is None) for f in frames}) > 1:
        mosaic = next(f.path for f in frames if f.tile is not None)
        raise SeriesGeometryError(
            f"{where}: the series mixes a Siemens MOSAIC file ({mosaic}) with plain slices; "
            "load the mosaic file on its own."
        )
    return iop, ipps, assumed


def _normal(iop: np.ndarray, where: str) -> np.ndarray:
    normal = np.cross(iop[:3], iop[3:])
    norm = np.linalg.norm(normal)
    if norm < 1e-6:
        raise SeriesGeometryError(f"{where}: ImageOrientationPatient {iop.tolist()} is degenerate.")
    return np.asarray(normal / norm)


def _affine(
    iop: np.ndarray,
    spacing_rc: tuple[float, float],
    step_vec: np.ndarray,
    origin: np.ndarray,
) -> np.ndarray:
    dr, dc = spacing_rc
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * dc
    lps[:3, 1] = iop[3:] * dr
    lps[:3, 2] = step_vec
    lps[:3, 3] = origin
    return np.asarray(LPS_TO_RAS @ lps)


def stack_geometry(
    frames: Sequence[Frame],
    where: str,
    *,
    checked: tuple[np.ndarray, np.ndarray, bool] | None = None,
) -> Geometry:
    """Sort ``frames`` along the slice normal and build the affine, checking consistency.

    Meant for one contiguous block (see :func:`series_parts`); slices of a series with gaps are
    stacked with a mean step (and a warning), which misplaces them.

    Raises:
        SeriesGeometryError: mixed orientations, pixel spacings or duplicate positions.

    Warns:
        SeriesGeometryWarning: missing slices or uneven slice spacing.
    """
    n = len(frames)
    iop, ipps, assumed = checked if checked is not None else _positions(frames, where)
    normal = _normal(iop, where)
    proj = ipps @ normal
    order = np.argsort(proj, kind="stable")
    dr, dc = (float(v) for v in frames[0].pixel_spacing)
    if n > 1:
        sp = proj[order]
        diffs = np.diff(sp)
        if np.any(diffs < 1e-3):
            dup = sp[1:][diffs < 1e-3][:5]
            raise SeriesGeometryError(
                f"{where}: {int(np.sum(diffs < 1e-3))} slices share a position with another "
                f"(positions along the normal, mm: {np.round(dup, 3).tolist()}). The series holds several "
                "volumes (time points, echoes or duplicates) and none of "
                f"{', '.join(SPLIT_KEYWORDS)} tells them apart; split them into separate folders."
            )
        step_vec = (ipps[order[-1]] - ipps[order[0]]) / (n - 1)
        med = float(np.median(diffs))
        declared = _scalar(frames[0].ds, "SpacingBetweenSlices", None)
        step_len = float(np.linalg.norm(step_vec))
        if declared and abs(abs(declared) - step_len) > grid_tolerance(step_len):
            warnings.warn(
                f"{where}: SpacingBetweenSlices says {abs(declared):.4g} mm but the slices' "
                f"ImagePositionPatient values are {step_len:.4g} mm apart; the positions are used.",
                SeriesGeometryWarning,
                stacklevel=3,
            )
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
    affine = _affine(iop, (dr, dc), step_vec, ipps[order[0]])
    spacing = (dc, dr, float(np.linalg.norm(step_vec)))
    return Geometry(order=order, affine=affine, spacing=spacing, assumed=assumed)


def grid_tolerance(step: float) -> float:
    """How far (mm) a slice may lie from its block's regular grid: the smaller of
    :data:`GRID_TOLERANCE_MM` and :data:`GRID_TOLERANCE_FRACTION` of the step (at least 1 µm)."""
    return max(1e-3, min(GRID_TOLERANCE_MM, GRID_TOLERANCE_FRACTION * abs(step)))


def _contiguous_blocks(pos: np.ndarray) -> list[tuple[int, int]]:
    """Split sorted positions (n, 3) into [start, stop) runs that each lie on a regular grid.

    A step that differs from the median step by more than :func:`grid_tolerance` ends a run
    (a gap or an uneven step); inside a run, a slice farther than the tolerance from the line
    from the run's first to its last slice at equal steps starts a new run (slow drift).
    """
    n = len(pos)
    if n < 3:
        return [(0, n)]
    steps = np.linalg.norm(np.diff(pos, axis=0), axis=1)
    med = float(np.median(steps))
    tol = grid_tolerance(med)
    breaks = {i + 1 for i, d in enumerate(steps) if abs(d - med) > tol}
    if not breaks:  # the common case: one regular run, checked in one pass
        grid = pos[0] + np.arange(n)[:, None] * ((pos[-1] - pos[0]) / (n - 1))
        if float(np.max(np.linalg.norm(pos - grid, axis=1))) <= tol:
            return [(0, n)]
    blocks = []
    start = 0
    while start < n:
        stop = start + 1
        while stop < n and stop not in breaks:
            cand = pos[start : stop + 1]
            k = len(cand) - 1
            step_vec = (cand[-1] - cand[0]) / k
            grid = cand[0] + np.arange(k + 1)[:, None] * step_vec
            if float(np.max(np.linalg.norm(cand - grid, axis=1))) > tol:
                break
            stop += 1
        blocks.append((start, stop))
        start = stop
    return blocks


def _split_by_tags(frames: list[Frame], normal: np.ndarray) -> list[tuple[str, list[Frame]]] | None:
    """Groups of frames told apart by :data:`SPLIT_KEYWORDS` when positions repeat; None when
    no tag (nor pair of tags) gives groups without repeated positions."""
    import itertools

    def key_pos(f: Frame) -> float:
        return round(float(np.asarray(f.ipp) @ normal), 3)

    values = [dict(f.split_tags) for f in frames]
    candidates = [kw for kw in SPLIT_KEYWORDS if len({v.get(kw) for v in values}) > 1]
    for r in (1, 2):
        for kws in itertools.combinations(candidates, r):
            groups: dict[tuple[str | None, ...], list[Frame]] = {}
            for f, v in zip(frames, values, strict=True):
                groups.setdefault(tuple(v.get(kw) for kw in kws), []).append(f)
            if all(len({key_pos(f) for f in g}) == len(g) for g in groups.values()):

                def sort_key(k: tuple[str | None, ...]) -> tuple[Any, ...]:
                    out: list[Any] = []
                    for v in k:
                        try:
                            out.append((0, float(v or "nan"), ""))
                        except ValueError:
                            out.append((1, 0.0, str(v)))
                    return tuple(out)

                return [
                    (
                        ",".join(
                            f"{kw}={v if v is not None else ''}"
                            for kw, v in zip(kws, k, strict=True)
                        ),
                        groups[k],
                    )
                    for k in sorted(groups, key=sort_key)
                ]
    return None


def series_parts(
    frames: Sequence[Frame], where: str, *, resample_gaps: bool = False
) -> tuple[list[Part], list[str]]:
    """Split a series' frames into loadable volumes, each with a geometry that puts every slice
    where its header says (within :func:`grid_tolerance`).

    Slices sharing positions are split by the first of :data:`SPLIT_KEYWORDS` (or pair of them)
    that tells them apart (echoes, time points, stacks). Each group is then cut at gaps and
    uneven steps into contiguous blocks (labels ``block=1``, ``block=2``, ...), or, with
    ``resample_gaps``, kept whole and later interpolated onto a regular grid of the median step.

    Returns:
        ``(parts, notes)``: notes say what was split or resampled and why (for warnings and the
        manifest's ``geometry_warning``).

    Raises:
        SeriesGeometryError: mixed orientations or pixel spacings, slices missing positions,
            repeated positions no tag tells apart.
    """
    frames = list(frames)
    notes: list[str] = []
    sources = {f.spacing_source for f in frames} - {"PixelSpacing", "spacing=", "assumed"}
    if sources:
        notes.append(
            f"PixelSpacing is missing or zero; the pixel size is taken from {', '.join(sorted(sources))} "
            "(for projection X-ray: the size at the detector, not corrected for magnification)"
        )
    checked = _positions(frames, where)
    iop, ipps, assumed = checked
    if assumed or len(frames) == 1:
        return [Part("", frames, stack_geometry(frames, where, checked=checked))], notes
    normal = _normal(iop, where)
    proj = np.round(ipps @ normal, 3)
    groups: list[tuple[str, list[Frame]]] = [("", frames)]
    if len(np.unique(proj)) < len(proj):
        split = _split_by_tags(frames, normal)
        if split is not None:
            groups = split
            tag_names = sorted({lab.split("=")[0] for lab, _ in split})
            notes.append(
                f"slices share positions: the series holds {len(split)} volumes told apart by "
                f"{', '.join(tag_names)} ({', '.join(lab for lab, _ in split)})"
            )
        # else: stack_geometry below raises the duplicate-position error
    parts: list[Part] = []
    for label, group in groups:
        gw = f"{where} [{label}]" if label else where
        g_checked = checked if group is frames else _positions(group, gw)
        g_iop, g_ipps, _ = g_checked
        g_proj = g_ipps @ normal
        order = np.argsort(g_proj, kind="stable")
        if len(group) > 1 and np.any(np.diff(g_proj[order]) < 1e-3):
            stack_geometry(group, gw)  # raises the duplicate-position error
        pos = g_ipps[order]
        blocks = _contiguous_blocks(pos)
        if len(blocks) == 1:
            parts.append(Part(label, group, stack_geometry(group, gw, checked=g_checked)))
            continue
        diffs = np.diff(g_proj[order])
        med = float(np.median(diffs))
        if resample_gaps:
            geom = _resampled_geometry(group, g_iop, pos, order, med)
            notes.append(
                f"{label + ': ' if label else ''}slice positions have {len(blocks) - 1} gap(s) or uneven "
                f"steps (from {diffs.min():.4g} to {diffs.max():.4g} mm); resample_gaps=True "
                f"interpolated {len(group)} slices linearly onto a regular grid of "
                f"{len(geom.resample[1]) if geom.resample else 0} slices at the median step "
                f"{med:.4g} mm"
            )
            parts.append(Part(label, group, geom))
            continue
        desc = []
        for b, (i, j) in enumerate(blocks, start=1):
            sub = [group[int(k)] for k in order[i:j]]
            blabel = f"{label + ',' if label else ''}block={b}"
            desc.append(
                f"block={b}: {j - i} slice(s) from {g_proj[order[i]]:.4g} to "
                f"{g_proj[order[j - 1]]:.4g} mm"
            )
            parts.append(Part(blabel, sub, stack_geometry(sub, f"{gw} [{blabel}]")))
        notes.append(
            f"{label + ': ' if label else ''}{len(blocks) - 1} gap(s) or uneven step(s) in the slice "
            f"positions (steps from {diffs.min():.4g} to {diffs.max():.4g} mm, median {med:.4g} mm; "
            f"tolerance {grid_tolerance(med):.3g} mm): slices are missing or unevenly spaced, so "
            f"the series splits into {len(blocks)} contiguous blocks ({'; '.join(desc)})"
        )
    return parts, notes


def _resampled_geometry(
    frames: Sequence[Frame], iop: np.ndarray, pos: np.ndarray, order: np.ndarray, step: float
) -> Geometry:
    """Geometry of a regular grid from the first to the last slice at ``step`` mm."""
    line = pos[-1] - pos[0]
    length = float(np.linalg.norm(line))
    direction = line / length
    t = (pos - pos[0]) @ direction
    n_out = round(length / step) + 1
    step_out = length / (n_out - 1)
    grid = np.arange(n_out) * step_out
    dr, dc = (float(v) for v in frames[0].pixel_spacing)
    affine = _affine(iop, (dr, dc), direction * step_out, pos[0])
    return Geometry(
        order=order,
        affine=affine,
        spacing=(dc, dr, step_out),
        assumed=False,
        resample=(np.asarray(t), grid),
    )


def choose_part(parts: list[Part], part: str | int | None, where: str, notes: list[str]) -> Part:
    """The part named by ``part`` (a label or a 0-based index); the only one when ``None``.

    Raises:
        SeriesGeometryError: several parts and ``part`` is None, or ``part`` matches none.
    """
    labels = [p.label for p in parts]
    if part is None:
        if len(parts) == 1:
            return parts[0]
        raise SeriesGeometryError(
            f"{where}: {'; '.join(notes)}. No slice is placed where its header does not say: load "
            f"one volume with load(path, part=<label>) from {labels} (medgen.io.scan lists each "
            "as its own row), or pass resample_gaps=True to interpolate across gaps."
        )
    if isinstance(part, int) and not isinstance(part, bool):
        if 0 <= part < len(parts):
            return parts[part]
    else:
        for p in parts:
            if p.label == str(part):
                return p
    if labels == [""]:
        raise SeriesGeometryError(
            f"{where}: part={part!r} given, but the series is one volume; leave part out."
        )
    raise SeriesGeometryError(
        f"{where}: part={part!r} is not one of this series' volumes {labels} "
        f"(or an index 0..{len(parts) - 1})."
    )


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
                f"every installed decoder failed on {syntax_name}: the pixel data may be corrupt "
                "or use a variant no PyPI decoder reads (12-bit JPEG extended: neither pylibjpeg, "
                "Pillow nor python-gdcm 3.2 decodes pydicom's JPEG-lossy.dcm); re-export the "
                "file uncompressed (e.g. dcmdjpeg from DCMTK, a Debian package)"
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


@dataclass
class LoadOptions:
    """The options of :func:`medgen.io.load` that reach the DICOM reader."""

    spacing: tuple[float, ...] | None = None
    resample_gaps: bool = False
    part: str | int | None = None
    invert_monochrome1: bool = True
    voi_lut: bool = False


def _monochrome1_offset(ds: Any, slope: float, intercept: float) -> float:
    """The constant ``c`` with MONOCHROME2 value = ``c`` - MONOCHROME1 value: the sum of the
    smallest and largest storable values (BitsStored, PixelRepresentation) after rescaling."""
    bits = int(_scalar(ds, "BitsStored", None) or _scalar(ds, "BitsAllocated", 16) or 16)
    signed = int(_scalar(ds, "PixelRepresentation", 0) or 0) == 1
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return float(slope * lo + intercept + slope * hi + intercept)


def build_volume(
    frames: Sequence[Frame],
    where: str,
    source: str,
    *,
    options: LoadOptions | None = None,
) -> MetaTensor:
    """Decode and stack ``frames`` into a (C, X, Y, Z) float32 MetaTensor.

    The frames are first split into volumes (:func:`series_parts`); ``options.part`` picks one
    when there are several. Geometry notes (split, resampled, fallback pixel size) are warned as
    :class:`SeriesGeometryWarning` and kept in ``meta["geometry_notes"]``.
    """
    opts = options or LoadOptions()
    parts, notes = series_parts(frames, where, resample_gaps=opts.resample_gaps)
    chosen = choose_part(parts, opts.part, where, notes)
    frames, geom = chosen.frames, chosen.geometry
    for note in notes:
        warnings.warn(f"{where}: {note}.", SeriesGeometryWarning, stacklevel=4)
    first = frames[0].ds
    rows, cols = frames[0].shape
    samples = int(first.get("SamplesPerPixel", 1) or 1)
    photometric = str(first.get("PhotometricInterpretation", "") or "").strip().upper()
    palette = photometric == "PALETTE COLOR"
    if palette:
        samples = 3  # indices are mapped through the palette to RGB
    for f in frames:
        if f.shape != (rows, cols):
            raise SeriesGeometryError(
                f"{where}: {f.path} is {f.shape[0]}x{f.shape[1]} but the series is {rows}x{cols}; "
                "a volume needs one slice size. Move the odd file out."
            )
    n = len(frames)
    shape = (n, rows, cols) if samples == 1 else (n, rows, cols, samples)
    out = np.empty(shape, dtype=np.float32)
    cache: dict[int, np.ndarray] = {}
    voi_applied = False
    if frames[0].tile is not None and not opts.voi_lut:  # a mosaic: cut all tiles at once
        f0 = frames[0]
        stored = _decode(f0.ds, f0.path)
        m = int(np.ceil(np.sqrt(len(frames))))
        tiles = stored.reshape(m, rows, m, cols).swapaxes(1, 2).reshape(-1, rows, cols)
        np.copyto(out, tiles[[frames[int(i)].index or 0 for i in geom.order]], casting="unsafe")
        if f0.slope != 1.0:
            out *= np.float32(f0.slope)
        if f0.intercept != 0.0:
            out += np.float32(f0.intercept)
    for k, idx in enumerate(geom.order):
        if frames[0].tile is not None and not opts.voi_lut:
            break
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
        if f.tile is not None:
            r0, c0, tr, tc = f.tile
            plane = px[r0 : r0 + tr, c0 : c0 + tc]
        else:
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
        if opts.voi_lut and samples == 1:
            from pydicom.pixels import apply_voi_lut

            voi_ds = first
            if f.index is not None and "PerFrameFunctionalGroupsSequence" in f.ds:
                voi = _first_item(
                    f.ds.PerFrameFunctionalGroupsSequence[f.index], "FrameVOILUTSequence"
                ) or _first_item(
                    _first_item(f.ds, "SharedFunctionalGroupsSequence"), "FrameVOILUTSequence"
                )
                if voi is not None:
                    voi_ds = voi
            if "WindowCenter" in voi_ds or "VOILUTSequence" in voi_ds:
                dst[...] = np.asarray(apply_voi_lut(dst.astype(np.float64), voi_ds))
                voi_applied = True
    meta = header_meta(first, where)
    if photometric == "MONOCHROME1" and samples == 1:
        if opts.invert_monochrome1:
            c = _monochrome1_offset(first, frames[0].slope, frames[0].intercept)
            np.subtract(np.float32(c), out, out=out)
            meta["PhotometricInterpretation"] = "MONOCHROME2"
            meta["monochrome1_inverted"] = True
            meta["monochrome1_offset"] = c
        else:
            meta["monochrome1_inverted"] = False
    if samples == 3 and photometric not in ("RGB", ""):
        # pydicom maps palettes and YBR to RGB; the meta says what the array holds
        meta["PhotometricInterpretation"] = "RGB"
        meta["source_photometric"] = photometric
    if geom.resample is not None:
        t_src, t_out = geom.resample
        i = np.clip(np.searchsorted(t_src, t_out, side="right") - 1, 0, len(t_src) - 2)
        w = ((t_out - t_src[i]) / (t_src[i + 1] - t_src[i])).astype(np.float32)
        w = w.reshape((-1,) + (1,) * (out.ndim - 1))
        out = out[i] * (1 - w) + out[i + 1] * w
        meta["resampled_gaps"] = {
            "source_positions_mm": [round(float(v), 4) for v in t_src],
            "grid_step_mm": float(t_out[1] - t_out[0]) if len(t_out) > 1 else 0.0,
        }
    # (Z, Y, X[, C]) in memory -> (C, X, Y, Z) view: x = column index, y = row index, z = slice
    arr = out.transpose(2, 1, 0)[None] if samples == 1 else out.transpose(3, 2, 1, 0)
    meta.update(
        filename_or_obj=source,
        format="dicom",
        spacing=geom.spacing,
        n_slices=int(arr.shape[-1]),
        geometry_assumed=geom.assumed,
        spacing_source=frames[0].spacing_source,
        synthetic=is_synthetic(first),
        filenames=[str(frames[int(i)].path) for i in geom.order]
        if frames[0].index is None
        else [str(frames[0].path)],
    )
    if chosen.label:
        meta["part"] = chosen.label
    if notes:
        meta["geometry_notes"] = list(notes)
    if voi_applied:
        meta["voi_lut_applied"] = True
    if frames[0].tile is not None:
        meta["mosaic"] = True
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


def load_dicom_dir(
    folder: Path, *, series: str | int | None, options: LoadOptions | None = None
) -> MetaTensor:
    """Load the DICOM series held in ``folder`` (``series`` picks one when there are several)."""
    from medgen.io._common import DICOM_SUFFIXES

    opts = options or LoadOptions()
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
        fs = frames_of(ds, p, spacing=opts.spacing)
        if len(items) > 1 and len(fs) > 1:
            what = "a Siemens MOSAIC file" if fs[0].tile is not None else "multi-frame files"
            raise DicomError(
                f"{folder}: series {key} mixes {what} ({p}) with other files; "
                "load that file on its own."
            )
        frames.extend(fs)
    return build_volume(frames, where=f"{folder} (series {key})", source=str(folder), options=opts)


def _describe(groups: dict[str, list[tuple[Path, Dataset]]]) -> str:
    lines = []
    for k, items in groups.items():
        ds = items[0][1]
        lines.append(
            f"  {k}  SeriesNumber={ds.get('SeriesNumber', '')} Modality={ds.get('Modality', '')} "
            f"description={str(ds.get('SeriesDescription', ''))!r} files={len(items)}"
        )
    return "\n".join(lines)


def load_dicom_file(path: Path, *, options: LoadOptions | None = None) -> MetaTensor:
    """Load one DICOM file (single-frame -> (C, X, Y, 1); multi-frame -> (C, X, Y, frames))."""
    opts = options or LoadOptions()
    ds = read_dataset(path)
    if not has_pixel_data(ds):
        raise DicomError(
            f"Cannot load {path}: the DICOM file has no pixel data (Modality {ds.get('Modality', '?')}). "
            "Point medgen at an image file."
        )
    frames = frames_of(ds, path, spacing=opts.spacing)
    return build_volume(frames, where=str(path), source=str(path), options=opts)
