"""From a cohort to tensors: the one place classify touches ``Cohort``.

Two ways to feed the training loop, with the same per-image preprocessing
(:func:`preprocess_image`: channel-first float32, 2D slices squeezed, resized if asked, z-scored):

- :func:`load_images` reads every image once through ``Cohort.dataset`` and stacks them into one
  ``NxCx[SPATIAL DIMS]`` float32 tensor (:class:`TensorImages`). Training then indexes that
  tensor, which keeps the loop within a few percent of a bare PyTorch loop (see
  ``benchmarks/classify.py``); the whole cohort must fit in memory.
- :class:`StreamImages` reads batches through a torch ``DataLoader`` over ``Cohort.dataset``
  (``cache=None``: the image files every time; ``cache="disk"``: the preprocessed images in the
  cohort's disk cache), so memory holds a few batches, not the cohort
  (``benchmarks/classify_memory.py``).

Both hand out the batches they are asked for (lists of row indices drawn by the trainer), so the
same seed gives the same batches, hence the same model, whichever is used.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medgen.errors import ConfigError, ManifestError, MedgenValueError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from medgen.cohort import Cohort

log = logging.getLogger(__name__)

#: how the training images are held: one tensor (``"memory"``) or streamed (``None``, ``"disk"``)
CACHE_MODES = ("memory", "disk", None)

#: bumped when :func:`preprocess_image` changes, so disk-cache entries of the old one are not reused
_PREPROCESS_VERSION = 1


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


# ---------------------------------------------------------------------------------------------
# per-image preprocessing: the one function both ways use


def preprocess_image(
    img: Any, *, image_id: str, image_size: Sequence[int] | None, spatial_dims: int
) -> torch.Tensor:
    """One loaded image as the network sees it: ``Cx[SPATIAL DIMS]`` float32, z-scored.

    Args:
        img: the image as ``Cohort.dataset`` yields it (MetaTensor or array, channel first).
        image_id: named in errors.
        image_size: spatial size to resize to (area interpolation); ``None`` keeps the size.
        spatial_dims: 2 or 3. A 2D input loaded as ``(C, X, Y, 1)`` (a DICOM slice) is squeezed.

    Returns:
        A plain (not Meta) float32 tensor, ``(x - mean) / std`` over all its voxels.

    Raises:
        MedgenValueError: the image is not ``spatial_dims``-dimensional.
    """
    import torch

    from medgen.transforms import normalize_intensity, resize

    if hasattr(img, "as_tensor"):  # MetaTensor -> plain tensor: no metadata tracking per op
        img = img.as_tensor()
    x = torch.as_tensor(img).float()
    if spatial_dims == 2 and x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != spatial_dims + 1:
        raise MedgenValueError(
            f"image {image_id!r} has shape {tuple(x.shape)} (channel first), which is not "
            f"{spatial_dims}D; pass spatial_dims={x.ndim - 1} or use {spatial_dims}D images"
        )
    if image_size is not None and tuple(x.shape[1:]) != tuple(image_size):
        x = resize(x, image_size)
        x = torch.as_tensor(x.as_tensor() if hasattr(x, "as_tensor") else x).float()
    return normalize_intensity(x).contiguous()


class PreprocessImaged:
    """MONAI dict transform: :func:`preprocess_image` on ``item["image"]``.

    Deterministic, so ``Cohort.dataset(cache="disk")`` stores its output (the preprocessed
    image); its settings are part of the cache key, so another ``image_size`` gets other entries.
    Registered as a virtual subclass of ``monai.transforms.Transform`` when a dataset is built
    (:func:`image_dataset`), which keeps ``import medgen.classify`` free of MONAI.
    """

    def __init__(self, *, image_size: Sequence[int] | None, spatial_dims: int) -> None:
        self.image_size = [int(s) for s in image_size] if image_size is not None else None
        self.spatial_dims = int(spatial_dims)
        self.version = _PREPROCESS_VERSION

    def __call__(self, data: Any) -> Any:
        """Return a copy of the item dict with its image preprocessed."""
        from medgen.cohort._dataset import HIDDEN_KEY

        d = dict(data)
        hidden = d.get(HIDDEN_KEY) or {}
        image_id = str(d.get("image_id", hidden.get("image_id", "?")))
        d["image"] = preprocess_image(
            d["image"],
            image_id=image_id,
            image_size=self.image_size,
            spatial_dims=self.spatial_dims,
        )
        return d


def image_dataset(
    cohort: Cohort,
    image_ids: Sequence[str],
    *,
    image_size: Sequence[int] | None,
    spatial_dims: int,
    cache: str | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[Any, list[int]]:
    """``Cohort.dataset`` over ``image_ids`` with :class:`PreprocessImaged` as its transform.

    Returns:
        The MONAI dataset (rows in manifest order) and, for each of ``image_ids`` in order, its
        position in that dataset.

    Raises:
        ManifestError: an id is not in the cohort, or is there twice.
    """
    from monai.transforms import Transform

    Transform.register(PreprocessImaged)  # deterministic: cached by CacheDataset/PersistentDataset
    wanted = [str(i) for i in image_ids]
    sub = cohort.select(image_id=wanted)
    order = sub.df["image_id"].astype(str).tolist()
    pos = {iid: k for k, iid in enumerate(order)}
    missing = [i for i in wanted if i not in pos]
    if missing:
        raise ManifestError(
            f"Cohort.dataset did not yield images {missing[:5]} (of {len(missing)})"
        )
    if len(pos) != len(order):
        dup = sorted({i for i in order if order.count(i) > 1})[:5]
        raise ManifestError(f"image_id values {dup} occur more than once in the manifest")
    ds = sub.dataset(
        PreprocessImaged(image_size=image_size, spatial_dims=spatial_dims),
        spatial_dims=spatial_dims,
        cache=cache,  # type: ignore[arg-type]
        cache_dir=cache_dir,
    )
    return ds, [pos[i] for i in wanted]


def _check_same_shape(shapes: dict[tuple[int, ...], str]) -> None:
    if len(shapes) > 1:
        listing = ", ".join(f"{s} (e.g. {i!r})" for s, i in list(shapes.items())[:4])
        raise MedgenValueError(
            f"images have different sizes: {listing}. Pass image_size=(...) to resize them to one "
            "size (CLI: --image-size)."
        )


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
        ``NxCx[SPATIAL DIMS]`` float32 tensor (each image through :func:`preprocess_image`).

    Raises:
        MedgenValueError: images of different sizes with ``image_size=None``, or wrong dimensionality.
    """
    import torch
    from tqdm.auto import tqdm

    wanted = [str(i) for i in image_ids]
    if not wanted:
        raise ManifestError("no images selected")
    ds, positions = image_dataset(cohort, wanted, image_size=image_size, spatial_dims=spatial_dims)
    rows_of: dict[int, list[int]] = {}
    for k, p in enumerate(positions):
        rows_of.setdefault(p, []).append(k)
    out: torch.Tensor | None = None  # filled in place: the peak is one copy of the images
    shapes: dict[tuple[int, ...], str] = {}
    for p, item in enumerate(
        tqdm(ds, total=len(wanted), desc="load images", disable=not progress, leave=False)
    ):
        img = item["image"]
        shapes.setdefault(tuple(img.shape), str(item["image_id"]))
        if out is None:
            out = torch.empty((len(wanted), *img.shape), dtype=torch.float32)
        if len(shapes) == 1:
            out[rows_of[p]] = img
    _check_same_shape(shapes)
    if out is None:
        raise ManifestError("no images selected")
    return out


# ---------------------------------------------------------------------------------------------
# image sources: what the training loop and prediction draw batches from


class TensorImages:
    """Images held as one ``NxCx[SPATIAL DIMS]`` tensor (the in-memory path)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(C, *spatial)`` of every image."""
        return tuple(int(s) for s in self.x.shape[1:])

    def batches(
        self, batches: Sequence[Sequence[int]], *, generator: torch.Generator | None = None
    ) -> Generator[torch.Tensor, None, None]:
        """The ``BxCx[SPATIAL DIMS]`` batch of each index list, in order (``generator`` unused)."""
        import torch

        for b in batches:
            yield self.x[torch.as_tensor(list(b), dtype=torch.long)]

    def sequential(self, batch_size: int) -> Generator[torch.Tensor, None, None]:
        """Consecutive batches of ``batch_size`` images (the last may be smaller)."""
        for i in range(0, len(self.x), batch_size):
            yield self.x[i : i + batch_size]


class _Items:
    """Map-style dataset for the ``DataLoader``: item ``i`` is ``(image i, i)``, shape-checked."""

    def __init__(
        self, ds: Any, positions: list[int], image_ids: list[str], shape: tuple[int, ...]
    ) -> None:
        self.ds, self.positions, self.image_ids, self.shape = ds, positions, image_ids, shape

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.ds[self.positions[i]]["image"]
        if tuple(img.shape) != self.shape:
            raise MedgenValueError(
                f"images have different sizes: {self.shape} (e.g. {self.image_ids[0]!r}), "
                f"{tuple(img.shape)} (e.g. {self.image_ids[i]!r}). Pass image_size=(...) to "
                "resize them to one size (CLI: --image-size)."
            )
        return img, i


def _collate(items: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    import torch

    return torch.stack([im for im, _ in items])


class StreamImages:
    """Images streamed in batches through a torch ``DataLoader`` over ``Cohort.dataset``.

    Memory holds the batches in flight (``num_workers`` processes prefetch two each), not the
    cohort: ``cache=None`` reads and preprocesses the image files on every access;
    ``cache="disk"`` stores each preprocessed image once under ``cache_dir`` (entries keyed by
    file path, size, mtime and the preprocessing, so they are reused across epochs and runs and
    recomputed when a file or ``image_size`` changes).

    Args:
        cohort: the cohort holding the images.
        image_ids: the rows, in index order (batch index ``i`` is ``image_ids[i]``).
        image_size: spatial size to resize to; ``None`` keeps the native size (then all images
            must share it; a different one raises when its batch is read).
        spatial_dims: 2 or 3.
        cache: ``None`` or ``"disk"``.
        cache_dir: the disk cache folder (created if missing); required with ``cache="disk"``.
        num_workers: ``DataLoader`` worker processes (``0``: read in this process).

    Raises:
        ConfigError: an invalid ``cache``, ``cache_dir`` or ``num_workers``.
        ManifestError: no images, or ids the cohort does not hold.
    """

    def __init__(
        self,
        cohort: Cohort,
        image_ids: Sequence[str],
        *,
        image_size: Sequence[int] | None,
        spatial_dims: int,
        cache: str | None = None,
        cache_dir: str | Path | None = None,
        num_workers: int = 0,
    ) -> None:
        if cache not in (None, "disk"):
            raise ConfigError(f"StreamImages(cache={cache!r}): use None or 'disk'")
        self.num_workers = check_num_workers(num_workers)
        self.cache_dir = check_cache_dir(cache, cache_dir) if cache == "disk" else None
        self.image_ids = [str(i) for i in image_ids]
        if not self.image_ids:
            raise ManifestError("no images selected")
        ds, positions = image_dataset(
            cohort,
            self.image_ids,
            image_size=image_size,
            spatial_dims=spatial_dims,
            cache=cache,
            cache_dir=self.cache_dir,
        )
        first = ds[positions[0]]["image"]
        self.items = _Items(ds, positions, self.image_ids, tuple(int(s) for s in first.shape))

    def __len__(self) -> int:
        return len(self.items)

    @property
    def shape(self) -> tuple[int, ...]:
        """``(C, *spatial)`` of every image (that of the first one; the others are checked)."""
        return self.items.shape

    def batches(
        self, batches: Sequence[Sequence[int]], *, generator: torch.Generator | None = None
    ) -> Generator[torch.Tensor, None, None]:
        """The ``BxCx[SPATIAL DIMS]`` batch of each index list, in order.

        ``generator`` seeds the ``DataLoader``'s worker seeds instead of torch's global generator,
        so reading batches leaves the global random stream (dropout, augmentation) untouched.
        """
        import torch
        from torch.utils.data import DataLoader

        g = generator if generator is not None else torch.Generator().manual_seed(0)
        loader: DataLoader[tuple[torch.Tensor, int]] = DataLoader(
            self.items,  # type: ignore[arg-type]
            batch_sampler=[list(b) for b in batches],
            num_workers=self.num_workers,
            collate_fn=_collate,
            generator=g,
        )
        yield from loader

    def sequential(self, batch_size: int) -> Generator[torch.Tensor, None, None]:
        """Consecutive batches of ``batch_size`` images (the last may be smaller)."""
        n = len(self)
        yield from self.batches(
            [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
        )


def check_num_workers(num_workers: Any) -> int:
    """``num_workers`` as an int >= 0, or a :class:`ConfigError` naming it."""
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(
            f"num_workers must be an integer >= 0 (0 reads in this process), not {num_workers!r} "
            "(CLI: --workers)"
        )
    return num_workers


def check_cache_dir(cache: str | None, cache_dir: str | Path | None) -> Path | None:
    """Check ``cache`` against :data:`CACHE_MODES` and ``cache_dir`` against it.

    Returns:
        ``cache_dir`` as a path (``None`` unless ``cache="disk"``).

    Raises:
        ConfigError: an unknown ``cache``; ``cache="disk"`` without ``cache_dir``; ``cache_dir``
            with another mode; ``cache_dir`` that exists and is not a folder.
    """
    if cache not in CACHE_MODES:
        raise ConfigError(
            f"cache must be 'memory' (every image in one tensor), 'disk' (streamed from the disk "
            f"cache in cache_dir) or None (streamed from the image files), not {cache!r} "
            "(CLI: --cache memory|disk|none)"
        )
    if cache != "disk":
        if cache_dir is not None:
            raise ConfigError(
                f"cache_dir={str(cache_dir)!r} is only used with cache='disk' (not {cache!r}); "
                "pass cache='disk' or leave cache_dir out (CLI: --cache disk --cache-dir DIR)"
            )
        return None
    if cache_dir is None:
        raise ConfigError(
            "cache='disk' needs cache_dir=<folder for the preprocessed images> (CLI: --cache-dir); "
            "it is created if missing and can be shared between runs"
        )
    path = Path(cache_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(
            f"cache_dir {str(path)!r} is a file, not a folder; pass a folder for the disk cache "
            "(created if missing; CLI: --cache-dir)"
        )
    return path


def image_source(
    cohort: Cohort,
    image_ids: Sequence[str],
    *,
    image_size: Sequence[int] | None,
    spatial_dims: int,
    cache: str | None,
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> TensorImages | StreamImages:
    """The images of ``image_ids`` held as ``cache`` says: ``"memory"`` loads them into one tensor
    (:func:`load_images`), ``None`` / ``"disk"`` streams them (:class:`StreamImages`)."""
    check_cache_dir(cache, cache_dir)
    if cache == "memory":
        check_num_workers(num_workers)
        return TensorImages(
            load_images(
                cohort,
                image_ids,
                image_size=image_size,
                spatial_dims=spatial_dims,
                progress=progress,
            )
        )
    return StreamImages(
        cohort,
        image_ids,
        image_size=image_size,
        spatial_dims=spatial_dims,
        cache=cache,
        cache_dir=cache_dir,
        num_workers=num_workers,
    )
