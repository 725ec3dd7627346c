"""Fairness audit: per-subgroup metrics with bootstrap CIs, disparities and an HTML report.

>>> from medgen.audit import audit
>>> report = audit(preds, y_true="y_true", y_score="y_score", sensitive=["sex", "site"])  # doctest: +SKIP
>>> report.by_group, report.summary, report.disparities  # doctest: +SKIP
>>> report.to_html("audit.html")  # doctest: +SKIP

Names are imported lazily so that ``medgen --help`` (which imports ``medgen.audit._cli``) does not
load pandas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medgen._internal.lazy import lazy_attributes

if TYPE_CHECKING:
    from medgen.audit._audit import DISPARITY_METRICS, MISSING_LABEL, audit
    from medgen.audit._compare import ComparisonReport, compare
    from medgen.audit._disparity import adjust_pvalues
    from medgen.audit._explanations import ExplanationAudit, explanations
    from medgen.audit._metrics import METRICS
    from medgen.audit._multiclass import CLASS_METRICS, MACRO_METRICS, multiclass_metric_names
    from medgen.audit._report import AuditReport
    from medgen.audit._threshold import resolve_threshold

__all__ = [
    "CLASS_METRICS",
    "DISPARITY_METRICS",
    "MACRO_METRICS",
    "METRICS",
    "MISSING_LABEL",
    "AuditReport",
    "ComparisonReport",
    "ExplanationAudit",
    "adjust_pvalues",
    "audit",
    "compare",
    "explanations",
    "multiclass_metric_names",
    "resolve_threshold",
]

_WHERE = {
    "DISPARITY_METRICS": "medgen.audit._audit",
    "MISSING_LABEL": "medgen.audit._audit",
    "audit": "medgen.audit._audit",
    "ComparisonReport": "medgen.audit._compare",
    "compare": "medgen.audit._compare",
    "adjust_pvalues": "medgen.audit._disparity",
    "ExplanationAudit": "medgen.audit._explanations",
    "explanations": "medgen.audit._explanations",
    "METRICS": "medgen.audit._metrics",
    "CLASS_METRICS": "medgen.audit._multiclass",
    "MACRO_METRICS": "medgen.audit._multiclass",
    "multiclass_metric_names": "medgen.audit._multiclass",
    "AuditReport": "medgen.audit._report",
    "resolve_threshold": "medgen.audit._threshold",
}


__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, __all__)
