"""Loading transforms: MONAI dictionary transforms that read images with :func:`medgen.io.load`.

Imports torch and MONAI; :mod:`medgen.io` exports :class:`LoadImaged` lazily, so
``import medgen.io`` stays light.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.transforms.utility.array import SqueezeDim

from medgen.errors import ImageReadError, MedgenValueError
from medgen.io._api import load
from medgen.io._common import IDENTITY_KEYWORDS

__all__ = ["LoadImaged"]


class LoadImaged(MapTransform):
    """Load the paths under ``keys`` with :func:`medgen.io.load` (a MONAI dictionary transform).

    Like ``monai.transforms.LoadImaged`` but through medgen's readers, so DICOM series are ordered
    by position and geometry is RAS world millimetres. For ``"image"``, an item with a true
    ``needs_series`` and a ``series_uid`` (rows of ``medgen.io.scan`` whose folder holds several
    series) loads that series. Output: ``MetaTensor`` float32,
    channel-first ``(C, X, Y, Z)`` (or ``(C, X, Y)`` for 2D NIfTI). Patient identity
    (PatientName, PatientID, PatientBirthDate) is removed from the metadata, so no cache holds it.

    Args:
        keys: keys of the data dict holding paths, e.g. ``("image", "mask")``.
        spatial_dims: ``2`` squeezes a singleton last spatial axis (a single DICOM slice loads as
            ``(C, X, Y, 1)``) to ``(C, X, Y)``; the affine becomes 3x3 and ``spacing`` 2 values.
            An image with more than one slice is then an error. ``None``/``3`` keep the shape.
        allow_missing_keys: skip keys that are absent from the dict.
    """

    def __init__(
        self,
        keys: str | Sequence[str] = ("image",),
        *,
        spatial_dims: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        if spatial_dims not in (None, 2, 3):
            raise MedgenValueError(
                f"LoadImaged(spatial_dims={spatial_dims!r}): use 2 (squeeze a singleton slice "
                "axis), 3 or None (keep the loaded shape)."
            )
        self.spatial_dims = spatial_dims

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            series = None
            if key == "image" and d.get("needs_series") and d.get("series_uid"):
                # a `medgen scan` row whose folder holds several DICOM series
                series = str(d["series_uid"])
            img = value if isinstance(value, MetaTensor) else load(value, series=series)
            # training data never needs who the patient is, and cached items land on disk:
            # drop the identity fields medgen.io.load keeps for save(copy_identity=True)
            for keyword in IDENTITY_KEYWORDS:
                img.meta.pop(keyword, None)
            if self.spatial_dims == 2:
                img = _squeeze_to_2d(img, key=str(key))
            d[key] = img
        return d


def _squeeze_to_2d(img: MetaTensor, *, key: str) -> MetaTensor:
    if img.ndim == 3:  # already (C, X, Y)
        return img
    if img.ndim == 4 and img.shape[-1] == 1:
        out = SqueezeDim(dim=-1)(img)
        if not isinstance(out, MetaTensor):  # pragma: no cover - SqueezeDim keeps the type
            out = MetaTensor(out)
        spacing = out.meta.get("spacing")
        if isinstance(spacing, (tuple, list)) and len(spacing) == 3:
            out.meta["spacing"] = tuple(spacing[:2])
        return out
    src = img.meta.get("filename_or_obj", "?") if isinstance(img, MetaTensor) else "?"
    raise ImageReadError(
        f"dataset(spatial_dims=2): {key!r} image {src!r} has shape {tuple(img.shape)}, not a single "
        "slice (C, X, Y, 1). Use spatial_dims=3 for volumes, or extract slices first."
    )
