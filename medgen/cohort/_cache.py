"""The on-disk dataset cache: entry keys, the pickle-free entry format, read-or-compute.

Each entry is ``<cache_dir>/<key>.mgc`` (see :func:`write_entry`): the item's arrays (images,
affines, numpy metadata) as raw bytes plus a JSON document for everything else (strings, numbers,
tuples, MetaTensor ``meta`` and ``applied_operations``). Reading needs no unpickling, so a shared
cache folder cannot run code, and a warm read is ~3x faster than MONAI's
``torch.load(weights_only=True)`` of the same item (~5x with the zip CRCs of ``.npz`` avoided).
An item holding something else (an arbitrary object put there by a custom transform) is cached
with ``torch.save`` as ``<key>.pt`` instead and read back with ``weights_only=True`` (numpy arrays
allow-listed). ``<key>`` covers the item, its files' sizes and mtimes and the deterministic
transforms (see :func:`cache_key`, :func:`transform_hash`). A corrupt entry is logged, deleted and
recomputed (:func:`load_or_compute`).

No entry holds patient identity or other source header values: images reach the cache through
:class:`medgen.io.LoadImaged`, whose metadata is already cut to the de-identification allow-list
(docs/privacy.md), and before an item is written :func:`strip_never_cached` removes, as a second
line, any PS3.15 Annex E profile attribute that no retain option allows (names, IDs, UIDs, dates,
comments) that a custom transform may have put into a MetaTensor's ``meta``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Randomizable, Transform

from medgen._internal.deid import ANNEX_E_BASIC_PROFILE, RETAIN_OPTIONS
from medgen._internal.files import atomic_path

__all__ = [
    "cache_key",
    "load_or_compute",
    "read_entry",
    "strip_never_cached",
    "tagged_key",
    "transform_hash",
    "write_entry",
]

logger = logging.getLogger(__name__)

#: bumped when the cached item layout changes, so old cache entries are not reused
#: (2: metadata cut to the de-identification allow-list; version-1 entries may hold header text)
_CACHE_FORMAT = "medgen-cohort-cache-2"

#: header fields never written to a cache entry, whatever the transforms did: the PS3.15 basic
#: profile's attributes that no retain option puts back
NEVER_CACHED = frozenset(ANNEX_E_BASIC_PROFILE) - frozenset(
    kw for fields in RETAIN_OPTIONS.values() for kw in fields
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


def tagged_key(item: Mapping[str, Any], *, path_keys: Sequence[str], tag: str) -> bytes:
    """:func:`cache_key` plus ``-<tag>`` (the :func:`transform_hash` of the pipeline)."""
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


def strip_never_cached(item: Any) -> Any:
    """Remove :data:`NEVER_CACHED` keys from the ``meta`` of every MetaTensor in ``item`` (in
    place, so the returned fresh item equals what a warm read gives); returns ``item``."""
    removed: set[str] = set()

    def walk(obj: Any, depth: int) -> None:
        if depth > 16:
            return
        if isinstance(obj, MetaTensor):
            for k in [k for k in obj.meta if k in NEVER_CACHED]:
                del obj.meta[k]
                removed.add(k)
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v, depth + 1)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v, depth + 1)

    walk(item, 0)
    if removed:
        logger.warning(
            "a transform put source header fields %s into image metadata; they are not cached "
            "(docs/privacy.md) and are removed from the item",
            sorted(removed),
        )
    return item


def load_or_compute(cache_dir: Path, key: str, compute: Callable[[], Any]) -> Any:
    """The cached item under ``key`` in ``cache_dir``, or ``compute()`` written there first.

    A corrupt entry is logged, deleted and recomputed; an item the ``.mgc`` format cannot hold is
    written with ``torch.save`` (read back with ``weights_only=True``).
    """
    npz, pt = cache_dir / f"{key}.mgc", cache_dir / f"{key}.pt"
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
    out = strip_never_cached(compute())
    try:
        write_entry(npz, out)
    except _Unencodable as err:
        logger.info("cache entry %s needs pickle (%s); writing it with torch.save", key, err)
        with atomic_path(pt) as tmp:
            torch.save(out, tmp)
    return out
