"""Loading transforms: MONAI dictionary transforms that read images with :func:`medgen.io.load`.

Imports torch and MONAI; :mod:`medgen.io` exports :class:`LoadImaged` lazily, so
``import medgen.io`` stays light.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.transforms.utility.array import SqueezeDim

from medgen._internal.deid import allowed_keywords
from medgen.errors import ImageReadError, MedgenValueError
from medgen.io._api import load

__all__ = ["TECHNICAL_META_KEYS", "LoadImaged", "deidentify_meta"]

#: metadata keys that are not header fields but geometry and provenance medgen and MONAI need
#: (``medgen.io.load`` and ``monai.utils.MetaKeys``); kept beside the allow-listed header fields
TECHNICAL_META_KEYS = frozenset(
    {
        # MONAI (MetaKeys, ImageMetaKey)
        "affine",
        "original_affine",
        "spatial_shape",
        "space",
        "original_channel_dim",
        "pixdim",
        "original_pixdim",
        "filename_or_obj",
        "patch_index",
        "saved_to",
        # medgen.io.load
        "spacing",
        "format",
        "synthetic",
        "n_slices",
        "filenames",
        "geometry_assumed",
        "spacing_source",
        "part",
        "geometry_notes",
        "mosaic",
        "monochrome1_inverted",
        "source_photometric",
        "monochrome1_offset",
        "voi_lut_applied",
        "resampled_gaps",
        "qform_code",
        "sform_code",
        "original_shape",
        "original_dtype",
    }
)


def deidentify_meta(meta: Mapping[str, Any], retain: Iterable[str] = ()) -> dict[str, Any]:
    """The entries of an image's ``meta`` that may be kept: allow-listed header fields (with the
    ``retain`` options) and :data:`TECHNICAL_META_KEYS`; everything else (identity, UIDs, dates,
    comments, NIfTI ``descrip``, unknown keys) dropped.

    Example:
        >>> deidentify_meta({"spacing": (1.0, 1.0, 2.0), "Modality": "MR", "PatientName": "A^B",
        ...                  "ImageComments": "MRN 1CT1", "descrip": "John Smith"})
        {'spacing': (1.0, 1.0, 2.0), 'Modality': 'MR'}
    """
    allowed = allowed_keywords(retain) | TECHNICAL_META_KEYS
    return {k: v for k, v in meta.items() if k in allowed}


class LoadImaged(MapTransform):
    """Load the paths under ``keys`` with :func:`medgen.io.load` (a MONAI dictionary transform).

    Like ``monai.transforms.LoadImaged`` but through medgen's readers, so DICOM series are ordered
    by position and geometry is RAS world millimetres. For ``"image"``, an item with a true
    ``needs_series`` and a ``series_uid`` (rows of ``medgen.io.scan`` whose folder holds several
    series) loads that series, and its ``part`` (a series of several volumes) that volume. Output: ``MetaTensor`` float32,
    channel-first ``(C, X, Y, Z)`` (or ``(C, X, Y)`` for 2D NIfTI). The metadata keeps only the
    de-identification allow-list (docs/privacy.md; :func:`deidentify_meta`): technical header
    fields, the fields of the ``retain`` options, and geometry/provenance keys
    (:data:`TECHNICAL_META_KEYS`). Identity, UIDs, dates, comments and descriptions are dropped, so
    no pipeline, memory cache or disk cache holds them.

    Args:
        keys: keys of the data dict holding paths, e.g. ``("image", "mask")``.
        spatial_dims: ``2`` squeezes a singleton last spatial axis (a single DICOM slice loads as
            ``(C, X, Y, 1)``) to ``(C, X, Y)``; the affine becomes 3x3 and ``spacing`` 2 values.
            An image with more than one slice is then an error. ``None``/``3`` keep the shape.
        allow_missing_keys: skip keys that are absent from the dict.
        retain: PS3.15 retain options (:data:`medgen._internal.deid.RETAIN_OPTIONS`) whose fields
            stay in the metadata, e.g. ``["patient_characteristics"]`` for PatientSex/Age.
    """

    def __init__(
        self,
        keys: str | Sequence[str] = ("image",),
        *,
        spatial_dims: int | None = None,
        allow_missing_keys: bool = False,
        retain: Iterable[str] = (),
    ) -> None:
        super().__init__(keys, allow_missing_keys=allow_missing_keys)
        self.retain = (retain,) if isinstance(retain, str) else tuple(dict.fromkeys(retain))
        allowed_keywords(self.retain)  # validates the option names
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
            part = None
            if key == "image" and d.get("needs_series") and d.get("series_uid"):
                # a `medgen scan` row whose folder holds several DICOM series, or whose series
                # holds several volumes (blocks between gaps, echoes): its `part` picks one
                series = str(d["series_uid"])
                label = d.get("part")
                # a manifest read back has "" (or NaN, for an all-empty column) where no part is
                if isinstance(label, str) and label.strip() and label.strip().lower() != "nan":
                    part = label.strip()
            # training data never needs who the patient is, and cached items land on disk:
            # keep only the allow-list of what medgen.io.load read from the header
            if isinstance(value, MetaTensor):  # the caller's tensor: a new one, same storage
                meta = deidentify_meta(value.meta, self.retain)
                meta.pop("affine", None)  # passed as affine=
                img = MetaTensor(
                    value.as_tensor(),
                    affine=value.affine,
                    meta=meta,
                    applied_operations=list(value.applied_operations),
                )
            else:
                img = load(value, series=series, part=part)
                img.meta = deidentify_meta(img.meta, self.retain)
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
