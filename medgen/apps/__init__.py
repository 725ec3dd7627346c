"""End-to-end workflows built only from the library's public API.

- :func:`run_demo` (CLI: ``medgen demo -o OUT``): simulate a cohort with a known bias, train a
  classifier, predict the test split, audit it by every categorical attribute and write
  ``OUT/report.html``; :class:`DemoResult` is what it returns, :data:`DEMO_SETTINGS` its training
  settings per simulator preset.

Each app chains library calls and adds nothing of its own (ARCHITECTURE.md, rules of the road);
heavy libraries load when an app runs, not at import.
"""

from __future__ import annotations

from medgen.apps._demo import DEMO_SETTINGS, DemoResult, run_demo

__all__ = ["DEMO_SETTINGS", "DemoResult", "run_demo"]
