"""MONAI datasets over a cohort: the loader transform and the three cache modes.

Private to :mod:`medgen.cohort` (imports torch and MONAI; :meth:`medgen.Cohort.dataset` imports
this module only when called).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import pickle
from collections.abc import Callable, Hashable, Mapping, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, MetaTensor, PersistentDataset
from monai.transforms import Compose, MapTransform, Randomizable, Transform
from monai.transforms.utility.array import SqueezeDim

from medgen._internal.files import atomic_path
from medgen.errors import ImageReadError, MedgenValueError
from medgen.io._common import IDENTITY_KEYWORDS

__all__ = [
    "CohortCacheDataset",
    "CohortDataset",
    "LoadImaged",
    "SafePersistentDataset",
    "build_dataset",
    "cache_key",
]

logger = logging.getLogger(__name__)

#: bumped when the cached item layout changes, so old cache entries are not reused.
_CACHE_FORMAT = "medgen-cohort-cache-1"


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
        from medgen.io import load

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


#: where fields that MONAI would mistake for meta dicts wait while the transforms run.
HIDDEN_KEY = "medgen_hidden"


class RestoreKeys(Transform):
    """Put back the fields :func:`build_dataset` set aside under ``medgen_hidden``.

    MONAI dict transforms treat every key that starts with ``"<image key>_"`` as that image's
    meta dict (``Spacingd`` calls ``d["image_id"].update(...)``), so ``image_id`` (and any column
    named ``image_*``) cannot sit in the dict while they run. The pipeline ends with this
    transform, so the returned items have them back at the top level.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        hidden = d.pop(HIDDEN_KEY, None)
        if isinstance(hidden, Mapping):
            d.update(hidden)
        return d


def _hide_colliding(record: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    prefixes = tuple(f"{k}_" for k in keys)
    out = {k: v for k, v in record.items() if not k.startswith(prefixes)}
    hidden = {k: v for k, v in record.items() if k.startswith(prefixes)}
    if hidden:
        out[HIDDEN_KEY] = hidden
    return out


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


def _deterministic_prefix(transform: Compose) -> list[Any]:
    """Transforms up to the first random one: what CacheDataset/PersistentDataset cache."""
    prefix = []
    for t in transform.flatten().transforms:
        if isinstance(t, Randomizable) or not isinstance(t, Transform):
            # MONAI stops caching at the first random or non-`Transform` callable.
            break
        prefix.append(t)
    return prefix


def _describe(obj: Any, depth: int = 0) -> Any:
    """A stable, address-free description of a transform for hashing."""
    if depth > 8:
        return type(obj).__qualname__
    if isinstance(obj, (str, int, float, bool, type(None))):
        return obj
    if isinstance(obj, (list, tuple)):
        return [_describe(x, depth + 1) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _describe(v, depth + 1) for k, v in sorted(obj.items(), key=str)}
    if isinstance(obj, (set, frozenset)):
        return ["set", sorted(repr(_describe(x, depth + 1)) for x in obj)]
    if isinstance(obj, type):
        return ["class", f"{obj.__module__}.{obj.__qualname__}"]
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, (np.ndarray, np.generic)):
        arr = np.asarray(obj)
        digest = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
        return ["array", str(arr.dtype), list(arr.shape), digest]
    if callable(obj) and hasattr(obj, "__code__"):
        code = obj.__code__
        return [
            "function",
            obj.__qualname__,
            code.co_code.hex(),
            _describe(code.co_consts, depth + 1),
        ]
    cls = type(obj)
    state = getattr(obj, "__dict__", None)
    if state is None:
        return f"{cls.__module__}.{cls.__qualname__}"
    return [f"{cls.__module__}.{cls.__qualname__}", _describe(state, depth + 1)]


def transform_hash(transform: Compose) -> str:
    """sha256 (hex) of the cached (deterministic) part of ``transform``: classes and settings."""
    desc = _describe(_deterministic_prefix(transform))
    blob = pickle.dumps([_CACHE_FORMAT, repr(desc)], protocol=4)
    return hashlib.sha256(blob).hexdigest()[:16]


def cache_key(item: Mapping[str, Any], *, path_keys: Sequence[str]) -> bytes:
    """Disk-cache key of one data item: its content plus size and mtime of each path it names.

    Called by :class:`monai.data.PersistentDataset` on every access, so a file replaced or
    modified after caching gets a new key and is loaded again (stale entries are never reused).
    """
    h = hashlib.sha256()
    h.update(_CACHE_FORMAT.encode())
    for k in sorted(item, key=str):
        h.update(repr((str(k), item[k])).encode())
    for k in path_keys:
        p = item.get(k)
        if isinstance(p, str):
            h.update(_stat_signature(Path(p)).encode())
    return h.hexdigest().encode()


def _tagged_key(item: Mapping[str, Any], *, path_keys: Sequence[str], tag: str) -> bytes:
    return cache_key(item, path_keys=path_keys) + b"-" + tag.encode()


def _stat_signature(path: Path) -> str:
    """size + mtime of a file, or of every file in a DICOM series directory."""
    try:
        if path.is_dir():
            parts = []
            for entry in sorted(os.scandir(path), key=lambda e: e.name):
                if entry.is_file():
                    st = entry.stat()
                    parts.append(f"{entry.name}:{st.st_size}:{st.st_mtime_ns}")
            return f"{path}|" + ";".join(parts)
        st = path.stat()
        return f"{path}|{st.st_size}:{st.st_mtime_ns}"
    except FileNotFoundError:
        return f"{path}|missing"


def _numpy_safe_globals() -> list[Any]:
    """numpy names a cached item's metadata needs (affines, shapes); nothing that runs code."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    names: list[Any] = [np.ndarray, np.dtype, core.multiarray._reconstruct, core.multiarray.scalar]
    for t in (
        np.float16,
        np.float32,
        np.float64,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.bool_,
        np.str_,
        np.bytes_,
    ):
        names.append(type(np.dtype(t)))
    return names


def _medgen_cause(err: BaseException) -> BaseException | None:
    """The medgen error MONAI wrapped in ``RuntimeError('applying transform ...')``, if any."""
    from medgen.errors import MedgenError

    seen: BaseException | None = err
    for _ in range(16):
        if seen is None:
            return None
        if isinstance(seen, MedgenError):
            return seen
        seen = seen.__cause__
    return None


class _UnwrapMedgenErrors:
    """Re-raise medgen errors (bad image file, wrong shape) that MONAI wraps in RuntimeError.

    MONAI's ``apply_transform`` turns every exception into ``RuntimeError('applying transform')``,
    which hides the file name and remedy medgen's errors carry and changes their type. Mixed into
    the dataset classes below.
    """

    def _transform(self, index: int) -> Any:
        try:
            return super()._transform(index)  # type: ignore[misc]
        except RuntimeError as err:
            cause = _medgen_cause(err)
            if cause is None:
                raise
            raise cause from err

    def _load_cache_item(self, idx: int) -> Any:
        try:
            return super()._load_cache_item(idx)  # type: ignore[misc]
        except RuntimeError as err:
            cause = _medgen_cause(err)
            if cause is None:
                raise
            raise cause from err


class CohortDataset(_UnwrapMedgenErrors, Dataset):
    """``monai.data.Dataset`` (loads every access) that surfaces medgen errors unwrapped."""


class CohortCacheDataset(_UnwrapMedgenErrors, CacheDataset):
    """``monai.data.CacheDataset`` (in-memory cache) that surfaces medgen errors unwrapped."""


class _Unencodable(TypeError):
    """A cached item holds a value the ``.npz`` cache format cannot store without pickle."""


class _Encoder:
    """Turn a transformed item into JSON + named arrays (no pickle), and back."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def _array(self, arr: np.ndarray) -> str:
        if arr.dtype.hasobject:
            raise _Unencodable(f"numpy array of dtype {arr.dtype}")
        name = f"a{len(self.arrays)}"
        self.arrays[name] = np.ascontiguousarray(arr)
        return name

    def encode(self, obj: Any) -> Any:
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        if isinstance(obj, MetaTensor):
            meta = dict(obj.meta)
            meta.pop("affine", None)
            return {
                "__metatensor__": self._array(obj.as_tensor().detach().cpu().numpy()),
                "affine": self.encode(obj.affine),
                "meta": self.encode(meta),
                "ops": self.encode(list(obj.applied_operations)),
            }
        if isinstance(obj, torch.Tensor):
            return {"__tensor__": self._array(obj.detach().cpu().numpy())}
        if isinstance(obj, np.ndarray):
            return {"__ndarray__": self._array(obj)}
        if isinstance(obj, np.generic):
            return {"__ndarray__": self._array(np.asarray(obj)), "scalar": True}
        if isinstance(obj, os.PathLike):
            return {"__path__": os.fspath(obj)}
        if isinstance(obj, tuple):
            return {"__tuple__": [self.encode(v) for v in obj]}
        if isinstance(obj, list):
            return [self.encode(v) for v in obj]
        if isinstance(obj, dict):
            if not all(isinstance(k, str) and not k.startswith("__") for k in obj):
                raise _Unencodable(f"dict with keys {list(obj)[:5]}")
            return {k: self.encode(v) for k, v in obj.items()}
        raise _Unencodable(f"value of type {type(obj).__qualname__}")


def _decode(obj: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__metatensor__" in obj:
        data = torch.from_numpy(arrays[obj["__metatensor__"]])
        return MetaTensor(
            data,
            affine=_decode(obj["affine"], arrays),
            meta=_decode(obj["meta"], arrays),
            applied_operations=_decode(obj["ops"], arrays),
        )
    if "__tensor__" in obj:
        return torch.from_numpy(arrays[obj["__tensor__"]])
    if "__ndarray__" in obj:
        arr = arrays[obj["__ndarray__"]]
        return arr[()] if obj.get("scalar") else arr
    if "__path__" in obj:
        return Path(obj["__path__"])
    if "__tuple__" in obj:
        return tuple(_decode(v, arrays) for v in obj["__tuple__"])
    return {k: _decode(v, arrays) for k, v in obj.items()}


_MAGIC = b"MEDGENC1"
_ALIGN = 64


def write_entry(path: Path, item: Any) -> None:
    """Write ``item`` to ``path`` atomically, without pickle.

    Layout: 8-byte magic, 8-byte little-endian header length, a JSON header (the item tree with
    arrays replaced by references, and for each array its dtype, shape, offset and length), then
    the raw C-order bytes of the arrays. One ``read`` and zero-copy ``numpy.frombuffer`` views
    bring it back (``.npz`` spends a third of a warm read on zip CRCs).

    Raises:
        _Unencodable: the item holds a value that needs pickle (nothing is written).
    """
    enc = _Encoder()
    tree = enc.encode(item)
    table, offset = {}, 0
    for name, arr in enc.arrays.items():
        nbytes = int(arr.nbytes)
        table[name] = {
            "dtype": arr.dtype.str,
            "shape": list(arr.shape),
            "offset": offset,
            "nbytes": nbytes,
        }
        offset += -(-nbytes // _ALIGN) * _ALIGN  # every array starts 64-byte aligned
    header = json.dumps({"format": _CACHE_FORMAT, "arrays": table, "size": offset, "item": tree})
    head = header.encode()
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        f.write(_MAGIC + len(head).to_bytes(8, "little") + head)
        for arr in enc.arrays.values():
            f.write(arr.tobytes(order="C"))
            f.write(b"\0" * (-arr.nbytes % _ALIGN))


def read_entry(path: Path) -> Any:
    """Read an entry written by :func:`write_entry`; ``ValueError`` if it is truncated or foreign."""
    with open(path, "rb") as f:
        pre = f.read(16)
        if len(pre) != 16 or pre[:8] != _MAGIC:
            raise ValueError("not a medgen cache entry")
        head = f.read(int.from_bytes(pre[8:], "little"))
        doc = json.loads(head)
        if doc.get("format") != _CACHE_FORMAT:
            raise ValueError(f"cache format {doc.get('format')!r}, expected {_CACHE_FORMAT!r}")
        buf = bytearray(doc["size"])
        if f.readinto(buf) != doc["size"] or f.read(1):
            raise ValueError("cache entry is truncated or has trailing bytes")
    arrays = {
        name: np.frombuffer(
            buf, dtype=np.dtype(t["dtype"]), count=int(np.prod(t["shape"])), offset=t["offset"]
        ).reshape(t["shape"])
        for name, t in doc["arrays"].items()
    }
    return _decode(doc["item"], arrays)


class SafePersistentDataset(_UnwrapMedgenErrors, PersistentDataset):
    """``PersistentDataset`` with a pickle-free, faster cache format.

    Each entry is ``<cache_dir>/<key>.mgc`` (see :func:`write_entry`): the item's arrays (images,
    affines, numpy metadata) as raw bytes plus a JSON document for everything else (strings, numbers, tuples, MetaTensor ``meta`` and
    ``applied_operations``). Reading needs no unpickling, so a shared cache folder cannot run
    code, and a warm read is ~3x faster than MONAI's ``torch.load(weights_only=True)`` of the
    same item (~5x with the zip CRCs of ``.npz`` avoided). An item holding something else (an arbitrary object put there by a custom
    transform) is cached with ``torch.save`` as ``<key>.pt`` instead and read back with
    ``weights_only=True`` (numpy arrays allow-listed). ``<key>`` covers the item, its files'
    sizes and mtimes and the deterministic transforms (see :func:`cache_key`). A corrupt entry
    is logged, deleted and recomputed.
    """

    def _cachecheck(self, item_transformed: Any) -> Any:
        if self.cache_dir is None:
            return self._pre_transform(deepcopy(item_transformed))
        key = self.hash_func(item_transformed).decode("utf-8") + self.transform_hash
        npz, pt = self.cache_dir / f"{key}.mgc", self.cache_dir / f"{key}.pt"
        if npz.is_file():
            try:
                return read_entry(npz)
            except (OSError, ValueError, KeyError, TypeError) as err:
                logger.warning("corrupt cache entry %s (%s); recomputing it", npz, err)
                npz.unlink(missing_ok=True)
        if pt.is_file():
            try:
                with torch.serialization.safe_globals(_numpy_safe_globals()):
                    return torch.load(pt, weights_only=True)
            except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as err:
                logger.warning("corrupt cache entry %s (%s); recomputing it", pt, err)
                pt.unlink(missing_ok=True)
        out = self._pre_transform(deepcopy(item_transformed))
        try:
            write_entry(npz, out)
        except _Unencodable as err:
            logger.info("cache entry %s needs pickle (%s); writing it with torch.save", key, err)
            with atomic_path(pt) as tmp:
                torch.save(out, tmp)
        return out


def build_dataset(
    records: Sequence[dict[str, Any]],
    transform: Callable[..., Any] | Sequence[Callable[..., Any]] | None,
    *,
    cache: str | None,
    cache_dir: str | os.PathLike[str] | None,
    keys: tuple[str, ...],
    spatial_dims: int | None,
    num_workers: int = 0,
    progress: bool = False,
) -> Dataset:
    """Compose ``LoadImaged`` + ``transform`` and wrap ``records`` in the requested dataset."""
    user: list[Callable[..., Any]]
    if transform is None:
        user = []
    elif isinstance(transform, Compose):
        user = [transform]
    elif isinstance(transform, Sequence):
        user = list(transform)
    else:
        user = [transform]
    pipeline = Compose([LoadImaged(keys, spatial_dims=spatial_dims), *user, RestoreKeys()])
    records = [_hide_colliding(r, keys) for r in records]
    if cache is None:
        if cache_dir is not None:
            logger.warning("dataset(cache=None): cache_dir=%s is ignored", cache_dir)
        return CohortDataset(list(records), transform=pipeline)
    if cache == "memory":
        return CohortCacheDataset(
            list(records),
            transform=pipeline,
            cache_rate=1.0,
            num_workers=num_workers or 1,
            progress=progress,
            copy_cache=True,
        )
    if cache == "disk":
        if cache_dir is None:
            raise MedgenValueError(
                "dataset(cache='disk') needs cache_dir=<folder for the cache files>; it is "
                "created if missing and can be shared between runs."
            )
        hash_func = functools.partial(_tagged_key, path_keys=keys, tag=transform_hash(pipeline))
        return SafePersistentDataset(
            list(records),
            transform=pipeline,
            cache_dir=Path(cache_dir),
            hash_func=hash_func,
            track_meta=True,
        )
    raise MedgenValueError(
        f"dataset(cache={cache!r}): use None (no cache), 'memory' (CacheDataset) or 'disk' "
        "(PersistentDataset with cache_dir=...)."
    )
