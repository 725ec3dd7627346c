"""``medgen audit`` command line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit
from typer.testing import CliRunner

from medgen.cli import app


def _write(tmp_path: Path, n: int = 800) -> Path:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    sex = rng.choice(["F", "M"], n)
    site = rng.choice(["s1", "s2", "s3"], n)
    df = pd.DataFrame(
        {
            "label": y,
            "score": expit(rng.normal(0, 1, n) + np.where(sex == "F", 0.6, 1.6) * y),
            "sex": sex,
            "site": site,
        }
    )
    path = tmp_path / "preds.csv"
    df.to_csv(path, index=False)
    return path


def test_cli_writes_report_csv_and_markdown(tmp_path: Path) -> None:
    path = _write(tmp_path)
    out = tmp_path / "report.html"
    res = CliRunner().invoke(
        app,
        [
            "audit",
            str(path),
            "--y-true",
            "label",
            "--y-score",
            "score",
            "--sensitive",
            "sex",
            "--sensitive",
            "site",
            "-o",
            str(out),
            "--n-boot",
            "100",
            "--cluster",
            "site",
            "--seed",
            "4",
            "--threshold",
            "youden",
            "--csv-dir",
            str(tmp_path / "tables"),
            "--markdown",
            str(tmp_path / "audit.md"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "report written to" in res.output and "seed 4" in res.output
    text = out.read_text(encoding="utf-8")
    assert "By sex &amp; site" in text and not re.search(r"https?://", text)
    prov = json.loads((tmp_path / "tables" / "provenance.json").read_text())
    assert prov["cluster"] == "site" and prov["seed"] == 4
    by_group = pd.read_csv(tmp_path / "tables" / "by_group.csv")
    assert set(by_group["attribute"]) == {"sex", "site", "sex & site"}
    assert (tmp_path / "audit.md").read_text().startswith("# medgen fairness audit")
    # women's scores separate worse: the CLI summary reports an AUC gap for sex
    f = by_group[(by_group.attribute == "sex") & (by_group.group == "F")]["auc"].item()
    m = by_group[(by_group.attribute == "sex") & (by_group.group == "M")]["auc"].item()
    assert f < m


def test_cli_bad_column_is_a_clear_error(tmp_path: Path) -> None:
    path = _write(tmp_path)
    res = CliRunner().invoke(
        app, ["audit", str(path), "--y-score", "score", "--y-true", "label", "--sensitive", "race"]
    )
    assert res.exit_code == 2
    assert "sensitive='race': no such column" in res.output and "'sex'" in res.output
    res = CliRunner().invoke(app, ["audit", str(tmp_path / "nope.csv"), "--sensitive", "sex"])
    assert res.exit_code == 2 and "does not exist" in res.output
