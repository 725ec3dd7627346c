"""medgen: does generative augmentation make my imaging model better and fairer, for every subgroup?

Public names are imported lazily so that ``import medgen`` (and ``medgen --help``) stays instant;
torch and MONAI load only when a name that needs them is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from medgen._version import __version__
from medgen.errors import (
    ConfigError,
    DicomError,
    ImageReadError,
    ManifestError,
    MedgenError,
    MedgenFileNotFoundError,
    MedgenValueError,
)

if TYPE_CHECKING:
    from medgen.cohort import Cohort

__all__ = [
    "Cohort",
    "ConfigError",
    "DicomError",
    "ImageReadError",
    "ManifestError",
    "MedgenError",
    "MedgenFileNotFoundError",
    "MedgenValueError",
    "__version__",
    "apps",
    "audit",
    "batch",
    "classify",
    "cohort",
    "generative",
    "io",
    "simulate",
]

_LAZY_ATTRS = {"Cohort": "medgen.cohort"}
_SUBMODULES = {"apps", "audit", "batch", "classify", "cohort", "generative", "io", "simulate"}


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRS:
        return getattr(importlib.import_module(_LAZY_ATTRS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"medgen.{name}")
    raise AttributeError(f"module 'medgen' has no attribute {name!r}")
