"""From a cohort to in-memory tensors: the one place classify touches ``Cohort``.

The images of a 2D (or small 3D) cohort fit in memory, so they are read once through
``Cohort.dataset`` (MONAI readers, the cohort's cache), resized if asked, z-scored per image and
stacked into one ``NxCx[SPATIAL DIMS]`` float32 tensor. Training then indexes that tensor, which
keeps the loop within a few percent of a bare PyTorch loop (see ``benchmarks/classify.py``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medgen.errors import ManifestError, MedgenValueError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from medgen.cohort import Cohort

log = logging.getLogger(__name__)


def as_cohort(cohort: Any) -> Cohort:
    """Accept a ``Cohort`` or a manifest path (CSV/Parquet) and return a ``Cohort``."""
    from medgen.cohort import Cohort

    if isinstance(cohort, Cohort):
        return cohort
    if isinstance(cohort, str | Path):
        return Cohort.from_manifest(cohort)
    raise MedgenValueError(
        f"cohort must be a medgen.Cohort or the path of a manifest file, not {type(cohort).__name__}"
    )


def manifest_of(cohort: Cohort) -> pd.DataFrame:
    """The cohort's manifest table (one row per image)."""
    return cohort.df


def manifest_hash(df: pd.DataFrame) -> str:
    """SHA-256 of the manifest's CSV rendering (columns sorted), for provenance."""
    text = df.reindex(sorted(df.columns), axis=1).to_csv(index=False)
    return hashlib.sha256(text.encode()).hexdigest()


def load_images(
    cohort: Cohort,
    image_ids: Sequence[str],
    *,
    image_size: Sequence[int] | None,
    spatial_dims: int,
    progress: bool = False,
) -> torch.Tensor:
    """Read images, check/resize their shape, z-score each and stack them.

    Args:
        cohort: the cohort holding the images.
        image_ids: which images, in output order.
        image_size: spatial size to resize to; ``None`` requires all images to share one size.
        spatial_dims: 2 or 3. 2D inputs loaded as ``(C, X, Y, 1)`` (single DICOM slices) are squeezed.
        progress: show a tqdm bar.

    Returns:
        ``NxCx[SPATIAL DIMS]`` float32 tensor.

    Raises:
        MedgenValueError: images of different sizes with ``image_size=None``, or wrong dimensionality.
    """
    import torch
    from tqdm.auto import tqdm

    from medgen.transforms import normalize_intensity, resize

    wanted = list(image_ids)
    ds = cohort.select(image_id=wanted).dataset(spatial_dims=spatial_dims)
    by_id: dict[str, Any] = {}
    for item in tqdm(ds, total=len(wanted), desc="load images", disable=not progress, leave=False):
        by_id[str(item["image_id"])] = item["image"]
    missing = [i for i in wanted if i not in by_id]
    if missing:
        raise ManifestError(
            f"Cohort.dataset did not yield images {missing[:5]} (of {len(missing)})"
        )
    out: list[torch.Tensor] = []
    shapes: dict[tuple[int, ...], str] = {}
    for image_id in wanted:
        img = by_id[image_id]
        if hasattr(img, "as_tensor"):  # MetaTensor -> plain tensor: no metadata tracking per op
            img = img.as_tensor()
        img = torch.as_tensor(img).float()
        if spatial_dims == 2 and img.ndim == 4 and img.shape[-1] == 1:
            img = img[..., 0]
        if img.ndim != spatial_dims + 1:
            raise MedgenValueError(
                f"image {image_id!r} has shape {tuple(img.shape)} (channel first), which is not "
                f"{spatial_dims}D; pass spatial_dims={img.ndim - 1} or use {spatial_dims}D images"
            )
        if image_size is not None and tuple(img.shape[1:]) != tuple(image_size):
            img = resize(img, image_size)
            img = torch.as_tensor(img.as_tensor() if hasattr(img, "as_tensor") else img).float()
        shapes.setdefault(tuple(img.shape), image_id)
        out.append(normalize_intensity(img))
    if len(shapes) > 1:
        listing = ", ".join(f"{s} (e.g. {i!r})" for s, i in list(shapes.items())[:4])
        raise MedgenValueError(
            f"images have different sizes: {listing}. Pass image_size=(...) to resize them to one "
            "size (CLI: --image-size)."
        )
    if not out:
        raise ManifestError("no images selected")
    return torch.stack(out).contiguous()
