"""Cohort simulator with known effects on real anatomy (MNI152), and degradation models.

- :func:`simulate` writes a cohort (images, lesion masks, manifest, ground-truth sidecar).
- :func:`iter_subjects` yields the same subjects in memory.
- :class:`SimulationConfig` and :func:`preset` (``"tiny"``, ``"demo"``, ``"demo3d"``) configure it.
- :func:`degrade` makes (clean, degraded) pairs for paired training.

See docs/simulate.md for each mechanism and its parameters.
"""

from __future__ import annotations

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
from medgen.simulate._presets import PRESETS, preset
from medgen.simulate._simulate import SimulatedSubject, iter_subjects, render_subject, simulate
from medgen.simulate.degrade import DegradedPair, degrade

__all__ = [
    "BIAS_MECHANISMS",
    "CONTRASTS",
    "PRESETS",
    "AgeConfig",
    "AnatomyConfig",
    "BiasConfig",
    "DegradedPair",
    "DiseaseConfig",
    "PopulationConfig",
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
