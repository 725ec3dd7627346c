"""DICOM series writing: one file per slice, derived/synthetic markers, no identity by default."""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import Any

import numpy as np

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
#: non-identifying header fields carried over from the source image's meta
_CARRIED = (
    "Modality",
    "PatientSex",
    "PatientAge",
    "PatientWeight",
    "Manufacturer",
    "ManufacturerModelName",
    "InstitutionName",
    "BodyPartExamined",
    "MagneticFieldStrength",
    "SeriesDescription",
    "StudyDescription",
    "RepetitionTime",
    "EchoTime",
    "KVP",
)


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
) -> Path:
    """Write channel-first ``array`` ((1, X, Y) or (1, X, Y, Z)) as a DICOM series in directory ``path``."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

    if array.shape[0] != 1:
        raise MedgenValueError(
            f"save: DICOM output takes one channel, img has {array.shape[0]} (shape {array.shape}). "
            "Save each channel separately (img[c:c+1]) or write NIfTI."
        )
    vol = array[0] if array.ndim == 4 else array[0][..., None]
    vol = np.asarray(vol)
    if vol.dtype == np.bool_:
        vol = vol.astype(np.uint8)
    if not np.all(np.isfinite(vol)):
        raise MedgenValueError(
            f"save: img has NaN or infinite values; DICOM cannot store them ({path})."
        )
    _check_tags(dicom_tags)
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
    nx, ny, nz = vol.shape
    stored, slope, intercept, signed = choose_rescale(vol)
    modality = str(dicom_tags.get("Modality", meta.get("Modality", "OT")) or "OT")
    sop_class = UID(_SOP_CLASSES.get(modality, _SECONDARY_CAPTURE))
    study_uid, series_uid, for_uid = generate_uid(), generate_uid(), generate_uid()
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
            for kw in _CARRIED:
                if kw in meta and meta[kw] not in (None, ""):
                    setattr(ds, kw, meta[kw])
            if copy_identity:
                for kw in IDENTITY_KEYWORDS:
                    if kw in meta:
                        setattr(ds, kw, meta[kw])
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
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = ny, nx
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1 if signed else 0
            ds.RescaleSlope = _ds(slope)
            ds.RescaleIntercept = _ds(intercept)
            ds.RescaleType = "US"
            for kw, value in dicom_tags.items():
                setattr(ds, kw, value)
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
            ds.save_as(tmp_dir / f"{k + 1:05d}.dcm", enforce_file_format=True)
    logger.debug(
        "wrote DICOM series %s: %d slices, slope=%g intercept=%g", path, nz, slope, intercept
    )
    return path
