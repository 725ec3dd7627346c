"""Shared helpers of :mod:`medgen.io`: path checks, geometry conversions, MetaTensor assembly."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medgen.errors import ImageReadError, MedgenFileNotFoundError, MedgenValueError

if TYPE_CHECKING:
    from monai.data import MetaTensor


#: suffixes read as NIfTI
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: suffixes read as DICOM (files without a suffix are tried as DICOM too)
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima", "")

#: flips x and y: converts DICOM's LPS world to RAS and back (its own inverse)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: the mark ``save(..., synthetic=True)`` writes (NIfTI ``descrip``; DICOM ImageComments and
#: DerivationDescription, beside ImageType ``SYNTHETIC``)
SYNTHETIC_MARK = "medgen:synthetic"

#: patient identity: kept in memory by ``load``, never written by ``save`` (nor the disk cache)
#: unless ``copy_identity=True``
IDENTITY_KEYWORDS = ("PatientID", "PatientName", "PatientBirthDate")


#: the DICOM elements that hold an image's pixels (integer, float and double-float images)
PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def has_pixel_data(ds: Any, *, header_only: bool = False) -> bool:
    """True when the pydicom dataset ``ds`` holds an image.

    ``header_only``: ``ds`` was read with ``stop_before_pixels=True``, so the pixel element is
    absent; a positive ``Rows`` then says the file holds an image.
    """
    if any(k in ds for k in PIXEL_DATA_KEYWORDS):
        return True
    return header_only and int(ds.get("Rows", 0) or 0) > 0


def check_exists(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a :class:`~pathlib.Path`, raising a medgen error when it does not exist."""
    p = Path(path).expanduser()
    if not p.exists():
        parent = p.parent
        hint = (
            f"the folder {parent} exists; check the file name"
            if parent.is_dir()
            else f"the folder {parent} does not exist either; check the path"
        )
        raise MedgenFileNotFoundError(f"Image path {p} does not exist: {hint}.")
    return p


def has_dicom_preamble(path: Path) -> bool:
    """True when ``path`` carries 'DICM' at byte 128 (a DICOM file, whatever its suffix);
    False for other files and unreadable paths."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def image_format(path: Path) -> str:
    """``"nifti"`` or ``"dicom"`` for ``path`` (a file or a directory of DICOM files).

    Raises:
        ImageReadError: the suffix is neither NIfTI nor DICOM.
    """
    if path.is_dir():
        return "dicom"
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if path.suffix.lower() in DICOM_SUFFIXES:
        return "dicom"
    if has_dicom_preamble(path):
        return "dicom"
    raise ImageReadError(
        f"Cannot read {path}: unsupported file type {path.suffix!r}. medgen.io reads NIfTI "
        "(.nii, .nii.gz) and DICOM (.dcm or no suffix, or a folder holding one DICOM series); "
        "convert the image to one of these first."
    )


def spacing_from_affine(affine: np.ndarray, ndim: int) -> tuple[float, ...]:
    """Voxel size in mm along each of the first ``ndim`` voxel axes (column norms of ``affine``)."""
    return tuple(float(v) for v in np.linalg.norm(affine[:3, :ndim], axis=0))


def make_metatensor(array: np.ndarray, affine: np.ndarray, meta: dict[str, Any]) -> MetaTensor:
    """Wrap a channel-first float32 ``array`` and a 4x4 RAS ``affine`` into a MONAI MetaTensor."""
    import torch
    from monai.data import MetaTensor

    affine_t = torch.as_tensor(np.asarray(affine, dtype=np.float64))
    meta = dict(meta)
    meta.setdefault("original_affine", np.asarray(affine, dtype=np.float64).copy())
    meta["space"] = "RAS"
    meta["original_channel_dim"] = 0
    meta["spatial_shape"] = np.asarray(array.shape[1:])
    return MetaTensor(torch.from_numpy(array), affine=affine_t, meta=meta)


def to_numpy(img: Any) -> np.ndarray:
    """A numpy array from a MetaTensor, tensor or array-like (detached, on the CPU)."""
    if hasattr(img, "detach"):
        img = img.detach().cpu()
        if hasattr(img, "as_tensor"):
            img = img.as_tensor()
        return np.asarray(img.numpy())
    return np.asarray(img)


def as_float_tuple(values: Any, *, what: str, source: Path | str) -> tuple[float, ...]:
    """Convert a DICOM multi-value to floats, raising a clear error on junk."""
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError) as err:
        raise MedgenValueError(f"{source}: {what} {values!r} is not a list of numbers.") from err
