"""DICOM series writing: one file per slice, derived/synthetic markers, no identity by default.

What leaves the source header (``img.meta``) is the allow-list of :mod:`medgen._internal.deid`
(PS3.15 Annex E basic profile plus the caller's ``retain`` options); the written files say so
(``PatientIdentityRemoved``, ``DeidentificationMethod`` and its code sequence). Study and Frame of
Reference UIDs are keyed replacements of the source's (:func:`~medgen._internal.deid.remap_uid`),
so every derived series of one study lands in one new study; Series and SOP Instance UIDs are new.
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import Any

import numpy as np

from medgen._internal.deid import (
    DEIDENTIFICATION_CODES,
    allowed_keywords,
    deidentification_method,
    project_secret,
    remap_uid,
)
from medgen._internal.files import atomic_dir, only_suffixes
from medgen._internal.suggest import did_you_mean
from medgen.errors import MedgenValueError
from medgen.io._common import IDENTITY_KEYWORDS, LPS_TO_RAS, SYNTHETIC_MARK

logger = logging.getLogger(__name__)

_SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: fields ``save`` writes itself: never carried from ``img.meta`` even when allow-listed (the
#: source's ImageType, SOP class or slice thickness would misdescribe the derived image)
_WRITTEN_BY_SAVE = frozenset({"ImageType", "Modality", "SOPClassUID", "SliceThickness"})


def choose_rescale(vol: np.ndarray) -> tuple[np.ndarray, float, float, bool]:
    """Integer pixels plus RescaleSlope/Intercept reproducing ``vol``.

    Integer-valued data that fits 16 bits is stored exactly (slope 1, intercept 0). Other data is
    mapped linearly onto 0..65534 as uint16; the round-trip error is at most ``slope / 2`` (plus
    float32 rounding), i.e. ``(max - min) / 131068``.

    Returns:
        (stored pixels, slope, intercept, signed). Slope and intercept are the values as written to
        the 16-character DS fields, so decoding with them reproduces the bound above.
    """
    from pydicom.valuerep import DSfloat

    lo, hi = float(vol.min()), float(vol.max())
    if np.array_equal(vol, np.round(vol)):
        if lo >= -32768 and hi <= 32767:
            return vol.astype(np.int16), 1.0, 0.0, True
        if lo >= 0 and hi <= 65535:
            return vol.astype(np.uint16), 1.0, 0.0, False
    slope = (hi - lo) / 65534.0 if hi > lo else 1.0
    slope_w = float(DSfloat(slope, auto_format=True))
    inter_w = float(DSfloat(lo, auto_format=True))
    while (hi - inter_w) / slope_w > 65535 or slope_w <= 0:  # DS rounding made the range too small
        slope_w = float(DSfloat(slope_w * (1 + 1e-6) + 1e-12, auto_format=True))
    stored = np.clip(np.rint((vol.astype(np.float64) - inter_w) / slope_w), 0, 65535).astype(
        np.uint16
    )
    return stored, slope_w, inter_w, False


#: written by ``save`` from the image itself; changing them would corrupt pixels or geometry
_PROTECTED = frozenset(
    {
        "Rows",
        "Columns",
        "PixelData",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "RescaleSlope",
        "RescaleIntercept",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "SpacingBetweenSlices",
        "SOPInstanceUID",
        "SOPClassUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "FrameOfReferenceUID",
        "InstanceNumber",
    }
)


def _check_tags(tags: dict[str, Any]) -> None:
    """Reject unknown keywords, geometry/pixel fields and values invalid for their VR."""
    import warnings
    from io import BytesIO

    from pydicom.datadict import dictionary_VR, keyword_dict, tag_for_keyword
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_dataset

    for key, value in tags.items():
        tag = tag_for_keyword(key)
        if tag is None:
            hint = did_you_mean(key, keyword_dict, n=3)
            raise MedgenValueError(
                f"save: dicom_tags key {key!r} is not a DICOM keyword.{hint} Use keywords such as "
                "PatientSex, PatientAge, InstitutionName, Manufacturer."
            )
        if key in _PROTECTED:
            raise MedgenValueError(
                f"save: dicom_tags cannot set {key}: save writes it from the image and its affine. "
                "Change the image or the affine instead."
            )
        probe = Dataset()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                setattr(probe, key, value)
                fp = DicomFileLike(BytesIO())
                fp.is_little_endian, fp.is_implicit_VR = True, False
                write_dataset(fp, probe)
        except Exception as err:
            vr = dictionary_VR(tag)
            raise MedgenValueError(
                f"save: dicom_tags[{key!r}] = {value!r} is not a valid DICOM {vr} value ({err}). "
                "Pass a string in the DICOM format, e.g. PatientAge='045Y', PatientSex='F', "
                "PatientWeight='70.5'."
            ) from err


def _carried(meta: dict[str, Any], retain: tuple[str, ...]) -> dict[str, Any]:
    """The fields of ``meta`` that the allow-list lets into a derived file, minus those ``save``
    writes itself; empty values skipped, values DICOM cannot hold dropped with a debug log."""
    import warnings

    from pydicom.dataset import Dataset

    allowed = allowed_keywords(retain) - _PROTECTED - _WRITTEN_BY_SAVE
    out: dict[str, Any] = {}
    for kw in sorted(allowed & set(meta)):
        value = meta[kw]
        if value is None or value == "":
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                setattr(Dataset(), kw, value)
        except Exception as err:  # a malformed optional field never blocks writing
            logger.debug("save: not carrying %s=%r (%s)", kw, value, err)
            continue
        out[kw] = value
    return out


def _check_identity(
    meta: dict[str, Any], dicom_tags: dict[str, Any], *, copy_identity: bool
) -> None:
    """Refuse ``dicom_tags`` that write a source patient's identity without ``copy_identity``.

    When ``img.meta`` holds PatientName/PatientID/PatientBirthDate (the image comes from a
    patient's header), setting any of them in ``dicom_tags`` would put identity back into an
    output that says ``PatientIdentityRemoved = YES``; that takes ``copy_identity=True``. An image
    without a source identity (an array, a simulated or generated image) may carry the caller's own
    labels there, e.g. a simulated subject id.
    """
    if copy_identity:
        return
    asked = [k for k in IDENTITY_KEYWORDS if dicom_tags.get(k) not in (None, "")]
    source = [k for k in IDENTITY_KEYWORDS if meta.get(k) not in (None, "")]
    if asked and source:
        raise MedgenValueError(
            f"save: dicom_tags sets {', '.join(asked)} on an image whose .meta holds a patient's "
            f"identity ({', '.join(source)}); written files would identify the patient while "
            "saying PatientIdentityRemoved=YES. Pass copy_identity=True to write identity on "
            "purpose, or leave these keys out of dicom_tags."
        )


def _new_uid(meta: dict[str, Any], keyword: str) -> str:
    """The keyed replacement of the source's ``keyword`` UID (the same within a project), or a
    fresh UID when ``meta`` has none."""
    from pydicom.uid import generate_uid

    source = meta.get(keyword)
    if isinstance(source, str) and source.strip():
        return remap_uid(source.strip(), secret=project_secret())
    return str(generate_uid())


def _code_sequence(codes: list[tuple[str, str]]) -> Any:
    """DeidentificationMethodCodeSequence: one CID 7050 item (scheme DCM) per code."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    return Sequence(items)


def _ds(value: Any) -> str:
    from pydicom.valuerep import DSfloat

    return str(DSfloat(float(value), auto_format=True))


def save_dicom(
    array: np.ndarray,
    affine: np.ndarray,
    path: Path,
    *,
    meta: dict[str, Any],
    dicom_tags: dict[str, Any],
    synthetic: bool,
    derivation_description: str | None,
    copy_identity: bool,
    retain: tuple[str, ...] = (),
) -> Path:
    """Write channel-first ``array`` ((C, X, Y) or (C, X, Y, Z), C = 1, or 3 for RGB with integer
    values 0..255) as a DICOM series in directory ``path``.

    Of ``meta`` (the source header) only allow-listed fields are written (``retain`` options
    included), plus patient identity when ``copy_identity``. ``dicom_tags`` are written as given,
    except that they may not put a source patient's identity back (see :func:`_check_identity`).
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

    rgb = array.shape[0] == 3
    if array.shape[0] != 1 and not rgb:
        raise MedgenValueError(
            f"save: DICOM output takes one channel, img has {array.shape[0]} (shape "
            f"{array.shape}); three channels are written as RGB. Save each channel separately "
            "(img[c:c+1]) or write NIfTI."
        )
    if rgb:
        values = np.asarray(array)
        if not (
            np.all(np.isfinite(values))
            and np.array_equal(values, np.round(values))
            and values.min() >= 0
            and values.max() <= 255
        ):
            raise MedgenValueError(
                f"save: a 3-channel image is written as RGB DICOM, which holds integers 0..255; "
                f"img ranges {float(np.nanmin(values)):.4g}..{float(np.nanmax(values)):.4g}. "
                "Scale it to 0..255, or write NIfTI."
            )
    # (C, X, Y[, Z]) -> (X, Y, Z[, C]): channels last for RGB, dropped for one channel
    vol = np.moveaxis(array if array.ndim == 4 else array[..., None], 0, -1)
    vol = np.asarray(vol if rgb else vol[..., 0])
    if vol.dtype == np.bool_:
        vol = vol.astype(np.uint8)
    if not np.all(np.isfinite(vol)):
        raise MedgenValueError(
            f"save: img has NaN or infinite values; DICOM cannot store them ({path})."
        )
    _check_tags(dicom_tags)
    carried = _carried(meta, retain)
    _check_identity(meta, dicom_tags, copy_identity=copy_identity)
    if (
        copy_identity
        and not any(k in meta for k in IDENTITY_KEYWORDS)
        and not any(k in dicom_tags for k in IDENTITY_KEYWORDS)
    ):
        raise MedgenValueError(
            "save: copy_identity=True but img carries no PatientName/PatientID/PatientBirthDate in "
            ".meta; pass a MetaTensor loaded from DICOM, or set them in dicom_tags."
        )
    lps = LPS_TO_RAS @ affine
    col_x, col_y, step = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    dc, dr = float(np.linalg.norm(col_x)), float(np.linalg.norm(col_y))
    row_dir, col_dir = col_x / dc, col_y / dr
    if abs(float(row_dir @ col_dir)) > 1e-4:
        raise MedgenValueError(
            f"save: the affine's x and y axes are not perpendicular (cosine {row_dir @ col_dir:.3g}); "
            "DICOM cannot store sheared slices. Resample the image or write NIfTI."
        )
    nx, ny, nz = vol.shape[:3]
    if rgb:
        stored, slope, intercept, signed = vol.astype(np.uint8), 1.0, 0.0, False
    else:
        stored, slope, intercept, signed = choose_rescale(vol)
    modality = str(dicom_tags.get("Modality", meta.get("Modality", "OT")) or "OT")
    sop_class = UID(_SOP_CLASSES.get(modality, _SECONDARY_CAPTURE))
    study_uid, for_uid = _new_uid(meta, "StudyInstanceUID"), _new_uid(meta, "FrameOfReferenceUID")
    series_uid = generate_uid()  # a derived series is a new series, whatever it came from
    codes = [DEIDENTIFICATION_CODES["basic"], *(DEIDENTIFICATION_CODES[r] for r in retain)]
    now = _dt.datetime.now()
    normal = np.cross(row_dir, col_dir)
    comments = [SYNTHETIC_MARK] if synthetic else []
    if derivation_description:
        comments.append(derivation_description)

    # an existing folder is replaced only when it holds nothing but DICOM files (an older series)
    with atomic_dir(path, replaceable=only_suffixes((".dcm",))) as tmp_dir:
        for k in range(nz):
            sop_uid = generate_uid()
            fm = FileMetaDataset()
            fm.MediaStorageSOPClassUID = sop_class
            fm.MediaStorageSOPInstanceUID = sop_uid
            fm.TransferSyntaxUID = ExplicitVRLittleEndian
            fm.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds = FileDataset(str(tmp_dir / f"{k:05d}.dcm"), {}, file_meta=fm, preamble=b"\0" * 128)
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = sop_uid
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = for_uid
            ds.ImageType = ["DERIVED", "SECONDARY", *(["SYNTHETIC"] if synthetic else [])]
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
            ds.Modality = modality
            ds.PatientName = ""
            ds.PatientID = ""
            ds.PatientBirthDate = ""
            ds.StudyID = "1"
            ds.SeriesNumber = 1
            ds.InstanceNumber = k + 1
            ds.AccessionNumber = ""
            ds.ReferringPhysicianName = ""
            for kw, value in carried.items():
                setattr(ds, kw, value)
            if copy_identity:
                for kw in IDENTITY_KEYWORDS:
                    if kw in meta:
                        setattr(ds, kw, meta[kw])
                ds.PatientIdentityRemoved = "NO"
            else:
                ds.PatientIdentityRemoved = "YES"
                ds.DeidentificationMethod = deidentification_method(retain)
                ds.DeidentificationMethodCodeSequence = _code_sequence(codes)
            if comments:
                ds.ImageComments = " ".join(comments)[:10240]
                ds.DerivationDescription = " ".join(comments)[:1024]
            if synthetic:
                ds.BurnedInAnnotation = "NO"
            ipp = lps[:3, 3] + k * step
            ds.ImagePositionPatient = [_ds(v) for v in ipp]
            ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
            ds.PixelSpacing = [_ds(dr), _ds(dc)]
            ds.SliceThickness = _ds(np.linalg.norm(step))
            ds.SpacingBetweenSlices = _ds(np.linalg.norm(step))
            ds.SliceLocation = _ds(float(ipp @ normal))
            ds.Rows, ds.Columns = ny, nx
            if rgb:  # interleaved R, G, B bytes per pixel (PlanarConfiguration 0)
                ds.SamplesPerPixel = 3
                ds.PhotometricInterpretation = "RGB"
                ds.PlanarConfiguration = 0
                ds.BitsAllocated = ds.BitsStored = 8
                ds.HighBit = 7
                ds.PixelRepresentation = 0
            else:
                ds.SamplesPerPixel = 1
                ds.PhotometricInterpretation = "MONOCHROME2"
                ds.BitsAllocated = ds.BitsStored = 16
                ds.HighBit = 15
                ds.PixelRepresentation = 1 if signed else 0
                ds.RescaleSlope = _ds(slope)
                ds.RescaleIntercept = _ds(intercept)
                ds.RescaleType = "US"
            for kw, value in dicom_tags.items():
                setattr(ds, kw, value)
            plane = stored[:, :, k]  # (X, Y[, C]) -> rows = Y, columns = X
            ds.PixelData = np.ascontiguousarray(np.swapaxes(plane, 0, 1)).tobytes()
            ds.save_as(tmp_dir / f"{k + 1:05d}.dcm", enforce_file_format=True)
    logger.debug(
        "wrote DICOM series %s: %d slices, slope=%g intercept=%g", path, nz, slope, intercept
    )
    return path
