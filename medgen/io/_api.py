"""``load`` and ``save``: the public entry points of :mod:`medgen.io`."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medgen.errors import MedgenValueError
from medgen.io._common import check_exists, image_format, to_numpy

if TYPE_CHECKING:
    from monai.data import MetaTensor

logger = logging.getLogger(__name__)

_FORMATS = ("nifti", "dicom")


def load(
    path: str | os.PathLike[str],
    *,
    series: str | int | None = None,
    part: str | int | None = None,
    spacing: Sequence[float] | None = None,
    resample_gaps: bool = False,
    invert_monochrome1: bool = True,
    voi_lut: bool = False,
) -> MetaTensor:
    """Load a NIfTI file, a DICOM file or a folder holding a DICOM series.

    Args:
        path: ``.nii``/``.nii.gz`` file, DICOM file (single- or multi-frame), or a folder of DICOM
            files (one per slice).
        series: when the folder holds several series, the ``SeriesInstanceUID`` (or
            ``SeriesNumber``) of the one to load.
        part: DICOM only. When a series holds several volumes, the one to load: its label
            (``"block=2"`` for the second contiguous block of a series with gaps,
            ``"EchoNumbers=2"`` for one echo of slices that share positions, or both,
            ``"EchoNumbers=2,block=1"``; :func:`scan` lists each as its own row with this
            ``part``) or a 0-based index. Without it such a series raises an error that lists
            the labels.
        spacing: DICOM only. The in-plane pixel size ``(x, y)`` in mm (between columns, between
            rows), used instead of the header's; needed for images whose PixelSpacing is zero or
            missing with neither ImagerPixelSpacing nor NominalScannedPixelSpacing to fall back on.
        resample_gaps: DICOM only. Interpolate a series with gaps or uneven slice steps linearly
            along the slice direction onto a regular grid at the median step (first to last
            slice), instead of splitting it into blocks; ``meta["resampled_gaps"]`` records the
            source positions.
        invert_monochrome1: DICOM only. Invert MONOCHROME1 images (higher value = darker) to
            MONOCHROME2 semantics: ``value = meta["monochrome1_offset"] - stored`` (after
            rescale), where the offset is the sum of the smallest and largest storable values;
            ``meta["monochrome1_inverted"]`` says it was done. Apply the same formula to undo it.
        voi_lut: DICOM only. Apply the VOI LUT / window (WindowCenter/WindowWidth, or the
            enhanced Frame VOI LUT) to the rescaled values; off by default, so values stay in
            modality units (HU for CT). ``meta["voi_lut_applied"]`` says it was done.

    Returns:
        A float32 ``monai.data.MetaTensor``, channel first: ``(C, X, Y)`` for 2D NIfTI,
        ``(C, X, Y, Z)`` for volumes (DICOM is always volumetric: one slice is ``(1, X, Y, 1)``;
        RGB DICOM has ``C = 3``; a 4D NIfTI puts its 4th axis in ``C``). ``.affine`` (4x4 float64)
        maps voxel indices to RAS world millimetres. ``.meta`` holds ``spacing`` (mm per voxel
        axis), ``filename_or_obj``, ``format`` (``"nifti"``/``"dicom"``), ``synthetic`` and, for DICOM,
        key header fields by DICOM keyword (``Modality``, ``PatientSex``, ``PatientAge``,
        ``Manufacturer``, ``SeriesInstanceUID``, ...). Intensities are rescaled (NIfTI
        ``scl_slope``/``scl_inter``; DICOM RescaleSlope/Intercept, DoseGridScaling).

    Raises:
        MedgenFileNotFoundError: ``path`` does not exist.
        ImageReadError: unsupported suffix, empty, truncated or corrupt file.
        DicomError: unreadable DICOM; no valid pixel size (and no ``spacing=``);
            ``MultipleSeriesError`` when a folder holds several series and ``series`` is not
            given; ``SeriesGeometryError`` for mixed orientations, duplicate slice positions no
            tag tells apart, or a series of several volumes without ``part=``.

    Geometry of a DICOM series: slices are sorted along the slice normal and every slice is
    placed where its ImagePositionPatient says, within 0.1 mm or 10% of the step, whichever is
    smaller (:func:`medgen.io._dicom.grid_tolerance`). A series with gaps or uneven steps is
    split into contiguous blocks (pick one with ``part=``) unless ``resample_gaps=True``; slices
    sharing positions are split by EchoNumbers, TemporalPositionIdentifier,
    TemporalPositionIndex, StackID, EffectiveEchoTime, AcquisitionNumber or TriggerTime.
    Siemens MOSAIC files are unpacked into their slices (CSA header, read with nibabel);
    enhanced multi-frame files take each frame's geometry from its functional groups.

    Warns:
        SeriesGeometryWarning: a pixel size taken from ImagerPixelSpacing/NominalScannedPixelSpacing,
            a series split into volumes or resampled (``meta["geometry_notes"]`` keeps the text).
        DicomReadWarning: a file without file meta information, force-read.

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> from medgen.io import load, save
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = save(np.ones((1, 4, 5, 6), np.float32), d / "x.nii.gz", affine=np.diag([2.0, 2, 3, 1]))
        >>> img = load(d / "x.nii.gz")
        >>> tuple(img.shape), img.meta["spacing"]
        ((1, 4, 5, 6), (2.0, 2.0, 3.0))
    """
    p = check_exists(path)
    fmt = image_format(p)
    if fmt == "nifti":
        from medgen.io._nifti import load_nifti

        return load_nifti(p)
    from medgen.io._dicom import LoadOptions, load_dicom_dir, load_dicom_file

    if spacing is not None:
        sp = tuple(float(v) for v in spacing)
        if len(sp) not in (2, 3) or not all(np.isfinite(v) and v > 0 for v in sp):
            raise MedgenValueError(
                f"load: spacing={spacing!r} must be 2 positive numbers (x, y) in mm: the pixel "
                "size between columns and between rows."
            )
    options = LoadOptions(
        spacing=None if spacing is None else sp,
        resample_gaps=bool(resample_gaps),
        part=part,
        invert_monochrome1=bool(invert_monochrome1),
        voi_lut=bool(voi_lut),
    )
    if p.is_dir():
        return load_dicom_dir(p, series=series, options=options)
    return load_dicom_file(p, options=options)


def _infer_format(path: Path, format: str | None) -> str:
    if format is not None:
        if format not in _FORMATS:
            raise MedgenValueError(f"save: format={format!r} is not one of {_FORMATS}.")
        if format == "nifti" and not path.name.lower().endswith((".nii", ".nii.gz")):
            raise MedgenValueError(
                f"save: format='nifti' needs a path ending .nii or .nii.gz, got {path}."
            )
        return format
    if path.name.lower().endswith((".nii", ".nii.gz")):
        return "nifti"
    if path.suffix == "" or path.is_dir():
        return "dicom"
    raise MedgenValueError(
        f"save: cannot infer the format from {path}: use a path ending .nii.gz (NIfTI) or a "
        "directory name (a DICOM series), or pass format='nifti'/'dicom'."
    )


def save(
    img: Any,
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    affine: Any = None,
    dicom_tags: Mapping[str, Any] | None = None,
    synthetic: bool = False,
    derivation_description: str | None = None,
    copy_identity: bool = False,
    retain: Iterable[str] = (),
) -> Path:
    """Write an image as NIfTI or as a DICOM series, atomically, de-identified.

    Nothing of the source header in ``img.meta`` leaves unless it is on medgen's allow-list
    (docs/privacy.md): technical fields (``Modality``, ``EchoTime``, ``BodyPartExamined``, ...)
    plus the groups named in ``retain``. DICOM output says so (``PatientIdentityRemoved = YES``,
    ``DeidentificationMethod`` and its code sequence), gets a Study and Frame of Reference UID that
    are keyed replacements of the source's (all derived series of one study share one new study)
    and new Series and SOP Instance UIDs; its dates are the day it was written. NIfTI output holds
    no header text from the source at all.

    Args:
        img: a MetaTensor (its ``.affine`` and ``.meta`` are used) or an array/tensor shaped like
            :func:`load`'s output, ``(C, X, Y)`` or ``(C, X, Y, Z)``, with ``affine=``.
        path: ``.nii``/``.nii.gz`` file, or a directory that receives one DICOM file per slice.
        format: ``"nifti"`` or ``"dicom"``; inferred from ``path`` when ``None``.
        affine: 4x4 voxel-to-RAS (mm) affine; overrides ``img.affine``. Identity when neither.
        dicom_tags: DICOM keywords to set in every written file (e.g. ``PatientSex``,
            ``PatientAge``, ``InstitutionName``, ``Manufacturer``, ``Modality``), written as given:
            the caller's own choice, not filtered. They may not set PatientName, PatientID or
            PatientBirthDate when ``img.meta`` holds a patient's identity, unless
            ``copy_identity=True``; on images without one (arrays, simulated images) they may.
        synthetic: mark the output as synthetic (NIfTI ``descrip``; DICOM ImageComments and
            DerivationDescription); ``load`` reports it as ``meta["synthetic"]``.
        derivation_description: free text on how the image was made (DICOM DerivationDescription,
            NIfTI ``descrip``).
        copy_identity: copy PatientName/PatientID/PatientBirthDate from ``img.meta`` (the
            reference header) into written DICOM, with ``PatientIdentityRemoved = NO`` and no
            de-identification method. Off by default: written files carry no identity.
        retain: PS3.15 retain options putting groups of header fields back
            (:data:`medgen._internal.deid.RETAIN_OPTIONS`): ``"patient_characteristics"`` (sex,
            age, weight, size...), ``"device_identity"`` (manufacturer, model, station...),
            ``"institution_identity"``, ``"descriptors"`` (study/series descriptions, protocol:
            free text that may name people). DICOM only; NIfTI carries no header fields.

    Returns:
        The written path (the file, or the series directory).

    Raises:
        OutputPathError: ``path`` is, contains or lies inside the file or DICOM series ``img`` was
            loaded from (``img.meta["filename_or_obj"]``): save derived images elsewhere.
        MedgenValueError: bad shape, affine or format; ``dicom_tags`` putting identity back.
        ConfigError: an unknown ``retain`` option (the closest one is suggested).

    Example:
        >>> import numpy as np, tempfile, pathlib, pydicom
        >>> from medgen.io import save
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> img = np.zeros((1, 4, 4, 2), np.float32)
        >>> out = save(img, d / "series", dicom_tags={"Modality": "MR", "PatientSex": "F"})
        >>> ds = pydicom.dcmread(sorted(out.iterdir())[0])
        >>> ds.PatientIdentityRemoved, ds.DeidentificationMethodCodeSequence[0].CodeValue
        ('YES', '113100')
    """
    from medgen._internal.deid import allowed_keywords
    from medgen._internal.paths import check_output_not_input

    retain_t = (retain,) if isinstance(retain, str) else tuple(dict.fromkeys(retain))
    allowed_keywords(retain_t)  # validates the option names before anything is written
    p = Path(path).expanduser()
    fmt = _infer_format(p, format)
    meta: dict[str, Any] = dict(getattr(img, "meta", {}) or {})
    # never over the file or series the image was loaded from (it may be the only copy)
    sources = [meta.get("filename_or_obj"), *list(meta.get("filenames") or [])]
    check_output_not_input(
        p, [s for s in sources if isinstance(s, str | os.PathLike) and str(s)], what="save: path"
    )
    aff = affine if affine is not None else getattr(img, "affine", None)
    array = to_numpy(img)
    aff_np = np.eye(4) if aff is None else np.asarray(to_numpy(aff), dtype=np.float64)
    if aff_np.shape == (3, 3):  # a 2D MONAI affine: embed it in 3D
        full = np.eye(4)
        full[:2, :2] = aff_np[:2, :2]
        full[:2, 3] = aff_np[:2, 2]
        aff_np = full
    if aff_np.shape != (4, 4) or not np.all(np.isfinite(aff_np)):
        raise MedgenValueError(
            f"save: affine must be a finite 4x4 matrix, got shape {aff_np.shape}."
        )
    if abs(np.linalg.det(aff_np[:3, :3])) < 1e-12:
        raise MedgenValueError(
            f"save: affine {aff_np.tolist()} is singular; check its voxel sizes."
        )
    if array.ndim not in (3, 4):
        raise MedgenValueError(
            f"save: img has shape {array.shape}; expected channel-first (C, X, Y) or (C, X, Y, Z) "
            "like medgen.io.load returns (add a channel axis with img[None])."
        )
    if not np.issubdtype(array.dtype, np.number) and array.dtype != np.bool_:
        raise MedgenValueError(f"save: img has dtype {array.dtype}; expected numbers.")
    if fmt == "nifti":
        from medgen.io._nifti import save_nifti

        return save_nifti(
            array,
            aff_np,
            p,
            synthetic=synthetic,
            derivation_description=derivation_description,
        )
    from medgen.io._dicom_write import save_dicom

    return save_dicom(
        array,
        aff_np,
        p,
        meta=meta,
        dicom_tags=dict(dicom_tags or {}),
        synthetic=synthetic,
        derivation_description=derivation_description,
        copy_identity=copy_identity,
        retain=retain_t,
    )
