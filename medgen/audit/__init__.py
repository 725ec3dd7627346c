"""Fairness audit: per-subgroup metrics with bootstrap CIs, disparities and an HTML report.

>>> from medgen.audit import audit
>>> report = audit(preds, y_true="y_true", y_score="y_score", sensitive=["sex", "site"])  # doctest: +SKIP
>>> report.by_group, report.summary, report.disparities  # doctest: +SKIP
>>> report.to_html("audit.html")  # doctest: +SKIP
"""

from __future__ import annotations

from medgen.audit._audit import DISPARITY_METRICS, MISSING_LABEL, audit
from medgen.audit._disparity import adjust_pvalues
from medgen.audit._metrics import METRICS
from medgen.audit._report import AuditReport
from medgen.audit._threshold import resolve_threshold

__all__ = [
    "DISPARITY_METRICS",
    "METRICS",
    "MISSING_LABEL",
    "AuditReport",
    "adjust_pvalues",
    "audit",
    "resolve_threshold",
]
