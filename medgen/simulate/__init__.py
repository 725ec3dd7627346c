"""Cohort simulator with known effects on real anatomy (MNI152), and degradation models.

- :func:`simulate` writes a cohort (images, lesion masks, manifest, ground-truth sidecar).
- :func:`iter_subjects` yields the same subjects in memory.
- :class:`SimulationConfig` and :func:`preset` (``"tiny"``, ``"demo"``, ``"demo3d"``,
  ``"demo-underrep"``, ``"tiny-underrep"``) configure it.
- :class:`SimulatedGenerator` is the oracle generator: new subjects of a simulation's true
  population, conditioned on manifest values (the augmentation study's perfect generator).
- :func:`degrade` makes (clean, degraded) pairs for paired training.

See docs/simulate.md for each mechanism and its parameters. Names are imported lazily so that
``medgen --help`` (which imports ``medgen.simulate._cli``) does not load NumPy, SciPy or pandas.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medgen.simulate._config import (
        BIAS_MECHANISMS,
        CONTRASTS,
        AgeConfig,
        AnatomyConfig,
        BiasConfig,
        DiseaseConfig,
        PopulationConfig,
        SimulationConfig,
        SiteConfig,
        SplitConfig,
    )
    from medgen.simulate._degrade import DegradedPair, degrade
    from medgen.simulate._oracle import OracleSamples, SimulatedGenerator
    from medgen.simulate._presets import PRESETS, preset
    from medgen.simulate._simulate import (
        SimulatedSubject,
        iter_subjects,
        render_subject,
        simulate,
    )

_WHERE = {
    "medgen.simulate._config": (
        "BIAS_MECHANISMS",
        "CONTRASTS",
        "AgeConfig",
        "AnatomyConfig",
        "BiasConfig",
        "DiseaseConfig",
        "PopulationConfig",
        "SimulationConfig",
        "SiteConfig",
        "SplitConfig",
    ),
    "medgen.simulate._presets": ("PRESETS", "preset"),
    "medgen.simulate._simulate": (
        "SimulatedSubject",
        "iter_subjects",
        "render_subject",
        "simulate",
    ),
    "medgen.simulate._degrade": ("DegradedPair", "degrade"),
    "medgen.simulate._oracle": ("OracleSamples", "SimulatedGenerator"),
}
_LAZY = {name: module for module, names in _WHERE.items() for name in names}

__all__ = [
    "BIAS_MECHANISMS",
    "CONTRASTS",
    "PRESETS",
    "AgeConfig",
    "AnatomyConfig",
    "BiasConfig",
    "DegradedPair",
    "DiseaseConfig",
    "OracleSamples",
    "PopulationConfig",
    "SimulatedGenerator",
    "SimulatedSubject",
    "SimulationConfig",
    "SiteConfig",
    "SplitConfig",
    "degrade",
    "iter_subjects",
    "preset",
    "render_subject",
    "simulate",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medgen.simulate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
