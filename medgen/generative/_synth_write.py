"""One writer for a synthetic sample (image and, for mask-conditioned models, its lesion mask).

:meth:`medgen.generative.Synthesizer.write` (in-process) and :func:`medgen.batch.generate`'s
shards (:mod:`medgen.batch._shard`) both write samples; they share this function so the marking
(``synthetic=True``: DICOM SyntheticData YES, ImageType DERIVED\\SECONDARY\\SYNTHETIC, fresh UIDs;
NIfTI ``descrip``), the grid (a diagonal affine from the model's spacing), the 2D-as-one-slice
DICOM series and the mask's dtype and description cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["save_sample", "synthetic_affine"]


def synthetic_affine(spacing: Sequence[float]) -> np.ndarray:
    """The voxel-to-world affine of a sample: the model's spacing on the diagonal, origin 0."""
    affine = np.eye(4)
    for k, s in enumerate(list(spacing)[:3]):
        affine[k, k] = float(s)
    return affine


def save_sample(
    image: np.ndarray,
    path: Path,
    *,
    format: str,
    spatial_dims: int,
    spacing: Sequence[float],
    description: str,
    mask: np.ndarray | None = None,
    mask_path: Path | None = None,
    dicom_tags: Mapping[str, Any] | None = None,
) -> None:
    """Write one synthetic image (float32) and, when given, its lesion mask (uint8).

    Args:
        image: the sample as ``(1, *spatial)`` (channel first, as the model returns it).
        path: the image file (NIfTI) or series folder (DICOM); the caller confines it to the
            output folder.
        format: ``"nifti"`` or ``"dicom"``.
        spatial_dims: 2 or 3; a 2D DICOM sample is written as a one-slice series.
        spacing: the model's voxel spacing (mm).
        description: DerivationDescription / NIfTI ``descrip`` (model id, seed, ...); the mask's
            is the same with `` lesion mask`` appended.
        mask: the lesion mask the image was decoded under, same shape (mask-conditioned models).
        mask_path: where the mask goes; required with ``mask``.
        dicom_tags: extra DICOM tags (``SyntheticData = YES`` is always set for DICOM).
    """
    from medgen.errors import MedgenValueError
    from medgen.io import save

    if (mask is None) != (mask_path is None):
        raise MedgenValueError("save_sample: give both mask and mask_path, or neither.")
    dicom = format == "dicom"
    tags = {**(dicom_tags or {}), "SyntheticData": "YES"} if dicom else None
    affine = synthetic_affine(spacing)

    def one(arr: np.ndarray, where: Path, desc: str) -> None:
        save(
            arr[..., None] if dicom and spatial_dims == 2 else arr,  # DICOM is volumetric
            where,
            format=format,
            affine=affine,
            synthetic=True,
            derivation_description=desc,
            dicom_tags=tags,
        )

    one(np.asarray(image, dtype=np.float32), path, description)
    if mask is not None and mask_path is not None:
        one(np.asarray(mask, dtype=np.uint8), mask_path, f"{description} lesion mask")
