"""MONAI datasets over a cohort: the three cache modes, with medgen's errors surfaced unwrapped.

Private to :mod:`medgen.cohort` (imports torch and MONAI; :meth:`medgen.Cohort.dataset` imports
this module only when called). The loader is :class:`medgen.io.LoadImaged`; the disk cache format
is :mod:`medgen.cohort._cache`. Items hold only de-identified metadata (the allow-list of
docs/privacy.md, applied by ``LoadImaged``), so neither cache stores source header values.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import Compose, Transform

from medgen.cohort._cache import load_or_compute, tagged_key, transform_hash
from medgen.errors import MedgenValueError
from medgen.io._transforms import LoadImaged

__all__ = [
    "CohortCacheDataset",
    "CohortDataset",
    "RestoreKeys",
    "SafePersistentDataset",
    "build_dataset",
]

logger = logging.getLogger(__name__)

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


class SafePersistentDataset(_UnwrapMedgenErrors, PersistentDataset):
    """``PersistentDataset`` with a pickle-free, faster cache format (:mod:`medgen.cohort._cache`).

    Each entry is ``<cache_dir>/<key>.mgc`` (``<key>.pt`` for items that need pickle); ``<key>``
    covers the item, its files' sizes and mtimes and the deterministic transforms. A corrupt entry
    is logged, deleted and recomputed.
    """

    def _cachecheck(self, item_transformed: Any) -> Any:
        if self.cache_dir is None:
            return self._pre_transform(deepcopy(item_transformed))
        key = self.hash_func(item_transformed).decode("utf-8") + self.transform_hash
        return load_or_compute(
            self.cache_dir, key, lambda: self._pre_transform(deepcopy(item_transformed))
        )


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
    retain: Sequence[str] = (),
) -> Dataset:
    """Compose ``LoadImaged`` + ``transform`` and wrap ``records`` in the requested dataset.

    ``retain``: PS3.15 retain options whose header fields stay in the items' metadata
    (``LoadImaged(retain=...)``); by default only technical fields and geometry do.
    """
    user: list[Callable[..., Any]]
    if transform is None:
        user = []
    elif isinstance(transform, Compose):
        user = [transform]
    elif isinstance(transform, Sequence):
        user = list(transform)
    else:
        user = [transform]
    pipeline = Compose(
        [LoadImaged(keys, spatial_dims=spatial_dims, retain=retain), *user, RestoreKeys()]
    )
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
        hash_func = functools.partial(tagged_key, path_keys=keys, tag=transform_hash(pipeline))
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
