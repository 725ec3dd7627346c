"""End-to-end workflows built only from the library's public API.

- :func:`run_demo` (CLI: ``medgen demo -o OUT``): simulate a cohort with a known bias, train a
  classifier, predict the test split, audit it by every categorical attribute and write
  ``OUT/report.html``; :class:`DemoResult` is what it returns, :data:`DEMO_SETTINGS` its training
  settings per simulator preset.
- :func:`augmentation_study`: train the same classifier several ways (``real``, ``reweight``,
  ``augment``, ``synthetic-balanced``, ``synthetic-only``, user arms) over seeds, test them on
  one real test set and say per subgroup what changed, with paired-bootstrap CIs and adjusted
  significance (:class:`StudyResult`; :func:`compare_arms` is the analysis alone,
  :func:`count_deficits` the cells a synthetic fill needs). See docs/study.md.
- :func:`harmonisation_study` (CLI: ``medgen study harmonise``): train the same classifier on raw
  images, on images harmonised by a translator and, with the simulator's counterfactual renders,
  on the true target-site renders (the oracle); audit each by site and compare them paired: is
  the site gap caused by appearance, and does harmonising remove it?
  (:class:`HarmonisationResult`). See docs/study.md.

Each app chains library calls and adds nothing of its own (ARCHITECTURE.md, rules of the road);
heavy libraries load when an app runs, not at import.
"""

from __future__ import annotations

from medgen.apps._demo import DEMO_SETTINGS, DemoResult, run_demo
from medgen.apps._harmonise import (
    HARMONISATION_ARMS,
    HarmonisationResult,
    TranslatorLike,
    harmonisation_study,
)
from medgen.apps._study import (
    STUDY_ARMS,
    STUDY_METRICS,
    ArmWarning,
    StudyResult,
    SynthesizerLike,
    augmentation_study,
    compare_arms,
    count_deficits,
)

__all__ = [
    "DEMO_SETTINGS",
    "HARMONISATION_ARMS",
    "STUDY_ARMS",
    "STUDY_METRICS",
    "ArmWarning",
    "DemoResult",
    "HarmonisationResult",
    "StudyResult",
    "SynthesizerLike",
    "TranslatorLike",
    "augmentation_study",
    "compare_arms",
    "count_deficits",
    "harmonisation_study",
    "run_demo",
]
