"""Regenerate the audit report figures shown in docs/audit.md.

Audits a simulated prediction table (3,000 rows; sex, site with missing values; the classifier
separates worse for women and at site C), writes the full report to ``/tmp/audit_example.html`` and
saves the report's own embedded images as ``docs/img/audit_*.png``.

    python docs/audit_figure.py
"""

from __future__ import annotations

import base64
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit

from medgen.audit import audit
from medgen.errors import MetricWarning


def simulate(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], n, p=[0.45, 0.55])
    site = rng.choice(["A", "B", "C"], n, p=[0.5, 0.3, 0.2]).astype(object)
    site[rng.random(n) < 0.05] = None
    y = (rng.random(n) < np.where(sex == "F", 0.35, 0.45)).astype(int)
    sep = np.where(sex == "F", 1.2, 1.8) + np.where(site == "C", -0.5, 0.0)
    logit = rng.normal(0, 1, n) + sep * y - 0.8 + np.where(site == "B", 0.4, 0.0)
    return pd.DataFrame({"y_true": y, "y_score": expit(logit), "sex": sex, "site": site})


def main() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        report = audit(simulate(), sensitive=["sex", "site"], n_boot=1000, seed=0)
    html = report.to_html("/tmp/audit_example.html")
    images = re.findall(r'alt="([^"]+)" src="data:image/png;base64,([^"]+)"', html)
    out = Path(__file__).parent / "img"
    out.mkdir(exist_ok=True)
    wanted = {
        "site metrics by group": "audit_site_bars.png",
        "site ROC and calibration curves": "audit_site_curves.png",
    }
    for alt, data in images:
        if alt in wanted:
            (out / wanted[alt]).write_bytes(base64.b64decode(data))
    print(report.to_markdown())


if __name__ == "__main__":
    main()
