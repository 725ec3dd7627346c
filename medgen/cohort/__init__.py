"""Cohorts: a validated manifest table of images and the people behind them.

A :class:`Cohort` wraps a manifest (CSV or Parquet; schema in ``data_manifests/README.md`` and
``medgen/data/manifest_schema.json``) and offers what every stage of medgen needs from it:

- validation with errors that name the file, column and rows at fault (:meth:`Cohort.from_manifest`);
- selection (:meth:`Cohort.select`), subgroup counts (:meth:`Cohort.subgroups`);
- seeded, subject-level, stratified splits (:meth:`Cohort.split`);
- MONAI datasets with no cache, an in-memory cache or a persistent on-disk cache
  (:meth:`Cohort.dataset`);
- writing back to CSV/Parquet with paths relative to the new location (:meth:`Cohort.to_manifest`).

Modules: ``_schema`` (schema, table reading, validation), ``_cohort`` (:class:`Cohort`),
``_splits`` (subject-level split assignment), ``_dataset`` (MONAI datasets), ``_cache`` (the
pickle-free disk cache), ``_cli`` (``medgen info``). ``import medgen.cohort`` loads only
pandas/numpy; torch and MONAI are imported when :meth:`Cohort.dataset` is called or
:class:`~medgen.io.LoadImaged` (re-exported here) is first used.

Example:
    >>> import pandas as pd
    >>> df = pd.DataFrame({
    ...     "image_id": ["a1", "a2", "b1", "c1"],
    ...     "image_path": ["/data/a1.nii.gz", "/data/a2.nii.gz", "/data/b1.nii.gz", "/data/c1.nii.gz"],
    ...     "subject_id": ["A", "A", "B", "C"],
    ...     "split": ["", "", "", ""],
    ...     "source": ["real"] * 4,
    ...     "label": [1, 1, 0, 0],
    ...     "sex": ["F", "F", "M", None],
    ... })
    >>> cohort = Cohort.from_manifest(df, check_files=False)
    >>> len(cohort), cohort.attributes
    (4, ['sex'])
    >>> cohort.subgroups(["sex"])["n_images"].sum()
    np.int64(4)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medgen._internal.lazy import lazy_attributes
from medgen.cohort._cohort import CacheMode, Cohort
from medgen.cohort._schema import REQUIRED_COLUMNS, load_schema
from medgen.cohort._splits import DEFAULT_FRACTIONS

if TYPE_CHECKING:
    from medgen.io._transforms import LoadImaged

__all__ = [
    "DEFAULT_FRACTIONS",
    "REQUIRED_COLUMNS",
    "CacheMode",
    "Cohort",
    "LoadImaged",
    "load_schema",
]

# LoadImaged needs MONAI; it is imported only when asked for.
__getattr__, __dir__ = lazy_attributes(__name__, {"LoadImaged": "medgen.io._transforms"}, __all__)
