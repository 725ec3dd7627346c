"""Batch execution: sharded, seeded, resumable jobs over thousands of items (docs/batch.md).

- :func:`generate`: a synthetic dataset of exactly ``n`` marked images from a trained
  :class:`~medgen.generative.synthesis.Synthesizer`, with a manifest in the cohort schema,
  provenance and a dataset card; the same bytes for any number of workers or interruptions.
- :func:`check_dataset`: verify such a folder (counts, ids, files, hashes).
- :func:`apply_model`: a trained denoiser, super-resolver or translator over many images
  (files, DICOM folders, manifests), on the same executors, resumable (``medgen denoise|superres|
  translate apply``).
- :func:`open_executor`: where the shards run: in this process (default), an embedded Dask
  ``LocalCluster`` (``workers=W``) or an existing cluster (``scheduler="tcp://host:8786"``);
  Dask is the optional extra ``pip install 'medgen[dask]'``.

Names are imported lazily (``import medgen.batch`` imports neither torch nor Dask).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medgen._internal.lazy import lazy_attributes

if TYPE_CHECKING:
    from medgen.batch._apply import apply_model
    from medgen.batch._check import CheckReport, check_dataset
    from medgen.batch._executor import DaskExecutor, InProcessExecutor, open_executor
    from medgen.batch._generate import generate

__all__ = [
    "CheckReport",
    "DaskExecutor",
    "InProcessExecutor",
    "apply_model",
    "check_dataset",
    "generate",
    "open_executor",
]

_WHERE = {
    "apply_model": "medgen.batch._apply",
    "CheckReport": "medgen.batch._check",
    "check_dataset": "medgen.batch._check",
    "DaskExecutor": "medgen.batch._executor",
    "InProcessExecutor": "medgen.batch._executor",
    "open_executor": "medgen.batch._executor",
    "generate": "medgen.batch._generate",
}

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, __all__)
