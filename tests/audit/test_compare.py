"""medgen.audit.compare: paired bootstrap of per-group differences between two audits."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from medgen.audit import ComparisonReport, audit, compare
from medgen.audit._bootstrap import categorical, multinomial_counts
from medgen.errors import MedgenValueError, MetricWarning


def two_models(n: int, seed: int = 0) -> pd.DataFrame:
    """Two correlated models on the same patients; model 2 separates better for site B only."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    site = rng.choice(["A", "B"], n)
    sex = rng.choice(["F", "M"], n)
    shared = rng.normal(0, 1, n)
    s1 = expit(shared + 1.0 * y)
    s2 = expit(shared + 0.2 * rng.normal(0, 1, n) + np.where(site == "B", 1.8, 1.0) * y)
    return pd.DataFrame({"y_true": y, "site": site, "sex": sex, "real": s1, "synth": s2})


@pytest.fixture(scope="module")
def pair() -> tuple[pd.DataFrame, ComparisonReport]:
    df = two_models(2000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        a = audit(df, y_score="real", sensitive=["site", "sex"], n_boot=0, seed=0)
        b = audit(df, y_score="synth", sensitive=["site", "sex"], n_boot=0, seed=0)
    return df, compare(a, b, n_boot=400, seed=3, labels=("real", "real+synthetic"))


def test_compare_point_deltas_equal_difference_of_audits(
    pair: tuple[pd.DataFrame, ComparisonReport],
) -> None:
    df, cmp = pair
    from sklearn.metrics import roc_auc_score

    for site in ["A", "B"]:
        sel = df["site"] == site
        row = cmp.table.loc[("site", site, "auc")]
        assert row["a"] == pytest.approx(roc_auc_score(df.y_true[sel], df.real[sel]), abs=1e-9)
        assert row["b"] == pytest.approx(roc_auc_score(df.y_true[sel], df.synth[sel]), abs=1e-9)
        assert row["delta"] == pytest.approx(row["b"] - row["a"], abs=1e-12)
    assert set(cmp.table.index.get_level_values("attribute")) == {
        "overall",
        "site",
        "sex",
        "site & sex",
    }


def test_compare_detects_the_improvement_where_it_is(
    pair: tuple[pd.DataFrame, ComparisonReport],
) -> None:
    _, cmp = pair
    b = cmp.table.loc[("site", "B", "auc")]
    a = cmp.table.loc[("site", "A", "auc")]
    assert b["delta_low"] > 0 and b["significant"]
    assert a["delta_low"] <= a["delta"] <= a["delta_high"]
    assert abs(a["delta"]) < b["delta"]


def test_paired_ci_is_narrower_than_unpaired(pair: tuple[pd.DataFrame, ComparisonReport]) -> None:
    """The models share most of their noise: the paired CI of the difference must be much narrower
    than combining the two separate CIs as if independent."""
    df, cmp = pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        a = audit(df, y_score="real", sensitive=["site"], n_boot=400, seed=1)
        b = audit(df, y_score="synth", sensitive=["site"], n_boot=400, seed=2)
    wa = (a.by_group["auc_high"] - a.by_group["auc_low"]).loc[("site", "A")]
    wb = (b.by_group["auc_high"] - b.by_group["auc_low"]).loc[("site", "A")]
    row = cmp.table.loc[("site", "A", "auc")]
    assert row["delta_high"] - row["delta_low"] < 0.6 * np.hypot(wa, wb)


def test_compare_rejects_different_rows() -> None:
    df = two_models(300)
    a = audit(df, y_score="real", sensitive="site", n_boot=0)
    b = audit(df.iloc[::-1].reset_index(drop=True), y_score="synth", sensitive="site", n_boot=0)
    with pytest.raises(MedgenValueError, match="same rows in the same order"):
        compare(a, b)
    c = audit(df, y_score="synth", sensitive="sex", n_boot=0)
    with pytest.raises(MedgenValueError, match="same sensitive columns"):
        compare(a, c)


def test_comparison_renderings(pair: tuple[pd.DataFrame, ComparisonReport], tmp_path: Path) -> None:
    _, cmp = pair
    text = cmp.to_html(tmp_path / "cmp.html")
    assert not re.search(r"https?://", text)
    assert "real+synthetic" in text and text.count("data:image/png;base64,") == 4
    back = pd.read_csv(cmp.to_csv(tmp_path / "cmp.csv"), index_col=[0, 1, 2])
    np.testing.assert_allclose(back["delta"], cmp.table["delta"])
    assert "| attribute | group | metric | a | b | delta |" in cmp.to_markdown()
    assert "<table" in cmp._repr_html_()


def test_multinomial_counts_exact_sum_and_moments() -> None:
    rng = np.random.default_rng(0)
    p = rng.random(300) ** 2
    p /= p.sum()
    n = 50_000
    x = multinomial_counts(rng, n, p, 4000)  # the Poisson + top-up path
    assert x.shape == (4000, 300) and (x.sum(axis=1) == n).all()
    np.testing.assert_allclose(x.mean(axis=0), n * p, rtol=0.02, atol=1.0)
    np.testing.assert_allclose(x.var(axis=0), n * p * (1 - p), rtol=0.15, atol=1.0)
    i, j = np.argsort(p)[-2:]
    cov = np.cov(x[:, i], x[:, j])[0, 1]
    assert cov == pytest.approx(-n * p[i] * p[j], abs=0.25 * n * p[i] * p[j] + 2)
    cats = categorical(rng, p, 400_000)
    freq = np.bincount(cats, minlength=300) / 400_000
    assert np.abs(freq - p).max() < 5 * np.sqrt(p.max() / 400_000)


def test_compare_with_clusters_widens_duplicated_rows() -> None:
    """With every image duplicated, the clustered paired CI matches the de-duplicated data."""
    base = two_models(500, seed=4).assign(subject=lambda d: np.arange(len(d)))
    dup = pd.concat([base] * 3, ignore_index=True)
    kw = {"sensitive": "site", "n_boot": 0, "seed": 0}
    ref = compare(
        audit(base, y_score="real", **kw), audit(base, y_score="synth", **kw), n_boot=500, seed=1
    )
    cl = compare(
        audit(dup, y_score="real", cluster="subject", **kw),
        audit(dup, y_score="synth", cluster="subject", **kw),
        n_boot=500,
        seed=1,
    )
    w_ref = (ref.table["delta_high"] - ref.table["delta_low"]).xs("auc", level="metric")
    w_cl = (cl.table["delta_high"] - cl.table["delta_low"]).xs("auc", level="metric")
    np.testing.assert_allclose(w_cl, w_ref, rtol=0.2)
    assert "clusters" in cl.provenance["bootstrap"]
    with pytest.raises(MedgenValueError, match="same cluster column"):
        compare(
            audit(dup, y_score="real", cluster="subject", **kw), audit(dup, y_score="synth", **kw)
        )


def test_worst_group_and_gap_deltas(pair: tuple[pd.DataFrame, ComparisonReport]) -> None:
    """Model 2 separates better for site B only: the site gap widens, significantly; the point
    values are the worst group and max - min of the per-group estimates; identical audits give 0."""
    df, cmp = pair
    gaps = cmp.gaps
    assert gaps is not None
    assert gaps.index.names == ["attribute", "metric", "statistic"]
    assert set(gaps.index.get_level_values("attribute")) == {"site", "sex", "site & sex"}
    for col in ("a", "b"):
        per = cmp.table.xs(("site", "auc"), level=("attribute", "metric"))[col]
        assert gaps.loc[("site", "auc", "worst"), col] == pytest.approx(per.min(), abs=1e-12)
        assert gaps.loc[("site", "auc", "gap"), col] == pytest.approx(
            per.max() - per.min(), abs=1e-12
        )
    gap = gaps.loc[("site", "auc", "gap")]
    assert gap["delta"] > 0 and gap["delta_low"] > 0 and gap["significant"]
    assert gap["delta_low"] <= gap["delta"] <= gap["delta_high"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        a = audit(df, y_score="real", sensitive=["site"], n_boot=0, seed=0)
    same = compare(a, a, n_boot=100, seed=1).gaps
    assert same is not None
    assert (same["delta"] == 0).all() and not same["significant"].any()
    assert (same["delta_low"] == 0).all() and (same["delta_high"] == 0).all()
