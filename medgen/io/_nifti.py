"""NIfTI reading and writing through nibabel (gzip through ``isal`` when it is installed)."""

from __future__ import annotations

import gzip
import logging
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medgen._internal.files import atomic_path
from medgen.errors import ImageReadError, MedgenValueError
from medgen.io._common import SYNTHETIC_MARK, make_metatensor, spacing_from_affine

if TYPE_CHECKING:
    from monai.data import MetaTensor

logger = logging.getLogger(__name__)


_gzip_impl: types.ModuleType
try:  # isal's igzip decompresses 1-2x faster than zlib and reads the same files
    from isal import igzip as _gzip_impl
except ImportError:  # pragma: no cover - isal is a declared dependency
    _gzip_impl = gzip


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if not data:
        raise ImageReadError(
            f"Cannot read {path}: the file is empty (0 bytes). Re-export or re-copy it."
        )
    if data[:2] == b"\x1f\x8b":
        try:
            data = _gzip_impl.decompress(data)
        except (OSError, EOFError, ValueError) as err:
            raise ImageReadError(
                f"Cannot read {path}: the gzip stream is corrupt or truncated ({err}). "
                "Re-copy the file or re-export it from its source."
            ) from err
    return data


def read_nifti_image(path: Path) -> Any:
    """Parse ``path`` into a nibabel image (Nifti1 or Nifti2), data still unread."""
    import nibabel as nib

    data = _read_bytes(path)
    if len(data) < 348:
        raise ImageReadError(
            f"Cannot read {path}: {len(data)} bytes is too short for a NIfTI header (348 bytes). "
            "The file is truncated or not NIfTI; re-export it."
        )
    errors = []
    sizeof_hdr = {int.from_bytes(data[:4], "little"), int.from_bytes(data[:4], "big")}
    classes = (nib.Nifti2Image,) if 540 in sizeof_hdr else (nib.Nifti1Image,)
    for klass in classes:
        try:
            return klass.from_bytes(data)
        except Exception as err:
            errors.append(f"{klass.__name__}: {err}")
    raise ImageReadError(
        f"Cannot read {path} as NIfTI ({'; '.join(errors)}). The file is corrupt or not NIfTI; "
        "check it with `nib-ls` or re-export it."
    )


def _nifti_meta(img: Any, path: Path) -> dict[str, Any]:
    hdr = img.header
    descrip = hdr["descrip"].tobytes().split(b"\x00")[0].decode("latin-1", "replace").strip()
    return {
        "descrip": descrip,
        "synthetic": SYNTHETIC_MARK in descrip,
        "qform_code": int(hdr["qform_code"]),
        "sform_code": int(hdr["sform_code"]),
        "original_shape": tuple(int(s) for s in img.shape),
        "original_dtype": str(hdr.get_data_dtype()),
    }


def load_nifti(path: Path) -> MetaTensor:
    """Load a NIfTI file as a channel-first float32 MetaTensor with its RAS affine."""
    img = read_nifti_image(path)
    try:
        data = np.asarray(img.dataobj.get_unscaled())
    except Exception as err:
        raise ImageReadError(
            f"Cannot read the voxels of {path} ({err}): the file is truncated or corrupt; re-export it."
        ) from err
    slope, inter = img.dataobj.slope, img.dataobj.inter
    data = data.astype(np.float32, copy=data.dtype != np.float32)
    if slope != 1.0:
        data *= np.float32(slope)
    if inter != 0.0:
        data += np.float32(inter)
    shape = data.shape
    if data.ndim == 2 or data.ndim == 3:
        arr = data[None]
    elif data.ndim == 4:
        arr = np.ascontiguousarray(np.moveaxis(data, -1, 0))
    elif data.ndim == 5 and shape[3] == 1:  # NIfTI vector images: (X, Y, Z, 1, C)
        arr = np.ascontiguousarray(np.moveaxis(data[:, :, :, 0], -1, 0))
    else:
        raise ImageReadError(
            f"Cannot load {path}: NIfTI shape {shape} has {data.ndim} dimensions; medgen.io loads "
            "2D, 3D and 4D images (4th axis as channels). Split the file into volumes first."
        )
    if not arr.flags.writeable:
        arr = arr.copy()
    affine = np.asarray(img.affine, dtype=np.float64)
    meta = _nifti_meta(img, path)
    meta.update(
        filename_or_obj=str(path),
        format="nifti",
        spacing=spacing_from_affine(affine, arr.ndim - 1),
    )
    return make_metatensor(arr, affine, meta)


def _nifti_dtype(data: np.ndarray, path: Path) -> np.ndarray:
    """Cast to a dtype NIfTI tools read everywhere: bool -> uint8, 64-bit ints -> int32 when they
    fit (else float64), float16/float64 -> float32."""
    if data.dtype == np.bool_:
        return data.astype(np.uint8)
    if data.dtype in (np.float16, np.float64):
        return data.astype(np.float32)
    if data.dtype in (np.int64, np.uint64, np.uint32):
        info = np.iinfo(np.int32)
        if data.size == 0 or (data.min() >= info.min and data.max() <= info.max):
            return data.astype(np.int32)
        return data.astype(np.float64)
    if data.dtype.kind == "c":
        raise MedgenValueError(
            f"save: complex data cannot be written to {path}; save the magnitude."
        )
    return data


def save_nifti(
    array: np.ndarray,
    affine: np.ndarray,
    path: Path,
    *,
    synthetic: bool,
    derivation_description: str | None,
) -> Path:
    """Write a channel-first ``array`` (C, X, Y[, Z]) with a 4x4 RAS ``affine`` to ``path``."""
    import nibabel as nib

    if array.ndim not in (3, 4):
        raise MedgenValueError(
            f"save: cannot write an image of shape {array.shape} to {path}; expected channel-first "
            "(C, X, Y) or (C, X, Y, Z) like medgen.io.load returns."
        )
    data = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
    data = _nifti_dtype(np.asarray(data), path)
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    parts = [SYNTHETIC_MARK] if synthetic else []
    if derivation_description:
        parts.append(derivation_description)
    if parts:
        img.header["descrip"] = " ".join(parts).encode("latin-1", "replace")[:79]
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, tmp)
    logger.debug("wrote NIfTI %s shape=%s", path, data.shape)
    return path
