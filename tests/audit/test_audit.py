"""medgen.audit: exactness against scikit-learn / fairlearn, bootstrap, disparities, report, errors."""

from __future__ import annotations

import html
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from scipy.stats import norm

from medgen.audit import MISSING_LABEL, AuditReport, adjust_pvalues, audit, resolve_threshold
from medgen.audit._bootstrap import bootstrap_metrics
from medgen.audit._metrics import build_cells
from medgen.errors import MedgenError, MedgenValueError, MetricWarning

fairlearn_metrics = pytest.importorskip("fairlearn.metrics")
skm = pytest.importorskip("sklearn.metrics")


def simulate(n: int, seed: int = 0, *, decimals: int | None = 3) -> pd.DataFrame:
    """A realistic prediction table: sex, site (with missing values), age group, a classifier whose
    separability and calibration differ by sex and site, scores rounded so that ties occur."""
    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], n, p=[0.45, 0.55])
    site = rng.choice(["A", "B", "C"], n, p=[0.5, 0.3, 0.2]).astype(object)
    site[rng.random(n) < 0.05] = None
    age_group = rng.choice(["<40", "40-65", ">65"], n)
    prevalence = np.where(sex == "F", 0.35, 0.45)
    y = (rng.random(n) < prevalence).astype(int)
    sep = np.where(sex == "F", 1.2, 1.8) + np.where(site == "C", -0.5, 0.0)
    logit = rng.normal(0, 1, n) + sep * y - 0.8 + np.where(site == "B", 0.4, 0.0)
    score = expit(logit)
    if decimals is not None:
        score = np.round(score, decimals)
    return pd.DataFrame(
        {
            "image_id": [f"img{i:05d}" for i in range(n)],
            "y_true": y,
            "y_score": score,
            "sex": sex,
            "site": site,
            "age_group": age_group,
        }
    )


@pytest.fixture(scope="module")
def preds() -> pd.DataFrame:
    return simulate(3000)


@pytest.fixture(scope="module")
def report(preds: pd.DataFrame) -> AuditReport:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        return audit(preds, sensitive=["sex", "site"], n_boot=200, seed=1)


def _ece(y: np.ndarray, s: np.ndarray) -> float:
    """Reference ECE, written as a plain loop over the 10 bins."""
    total = 0.0
    for k in range(10):
        lo, hi = k / 10, (k + 1) / 10
        sel = (s >= lo) & ((s < hi) if k < 9 else (s <= 1.0))
        if sel.any():
            total += abs(y[sel].sum() - s[sel].sum())
    return total / len(y)


# ---------------------------------------------------------------- exactness
@pytest.mark.parametrize("threshold", [0.5, 0.31])
@pytest.mark.parametrize("boot_bins", [1000, 20])
def test_point_estimates_equal_sklearn_and_fairlearn(
    preds: pd.DataFrame, threshold: float, boot_bins: int
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        rep = audit(
            preds,
            sensitive=["sex", "site"],
            threshold=threshold,
            n_boot=20,
            boot_bins=boot_bins,
            seed=0,
        )
    y = preds["y_true"].to_numpy()
    s = preds["y_score"].to_numpy()
    y_pred = (s >= threshold).astype(int)
    site = preds["site"].fillna(MISSING_LABEL)
    sens = {
        "sex": preds["sex"],
        "site": site,
        "sex & site": pd.DataFrame({"sex": preds["sex"], "site": site}),
    }
    mf_metrics = {
        "accuracy": skm.accuracy_score,
        "tpr": fairlearn_metrics.true_positive_rate,
        "fpr": fairlearn_metrics.false_positive_rate,
        "tnr": fairlearn_metrics.true_negative_rate,
        "fnr": fairlearn_metrics.false_negative_rate,
        "selection_rate": fairlearn_metrics.selection_rate,
        "balanced_accuracy": skm.balanced_accuracy_score,
        "ppv": skm.precision_score,
        "f1": skm.f1_score,
    }
    for attr, feature in sens.items():
        mf = fairlearn_metrics.MetricFrame(
            metrics=mf_metrics, y_true=y, y_pred=y_pred, sensitive_features=feature
        )
        table = rep.group_table(attr)
        for key, row in mf.by_group.iterrows():
            group = " & ".join(key) if isinstance(key, tuple) else str(key)
            got = table.loc[group]
            for m in mf_metrics:
                assert got[m] == pytest.approx(row[m], abs=1e-9), (attr, group, m)
            sel = np.ones(len(y), bool)
            for col, val in zip(
                ["sex", "site"] if attr == "sex & site" else [attr],
                key if isinstance(key, tuple) else [key],
                strict=True,
            ):
                sel &= (preds["sex"] if col == "sex" else site).to_numpy() == val
            assert got["n"] == sel.sum()
            assert got["auc"] == pytest.approx(skm.roc_auc_score(y[sel], s[sel]), abs=1e-9)
            assert got["brier"] == pytest.approx(skm.brier_score_loss(y[sel], s[sel]), abs=1e-9)
            assert got["ece"] == pytest.approx(_ece(y[sel], s[sel]), abs=1e-9)
            tn, _fp, fn, _tp = skm.confusion_matrix(y[sel], y_pred[sel], labels=[0, 1]).ravel()
            assert got["npv"] == pytest.approx(tn / (tn + fn), abs=1e-9)
            assert got["prevalence"] == pytest.approx(y[sel].mean(), abs=1e-12)
        summ = rep.summary.loc[attr]
        assert summ["equalized_odds_difference"] == pytest.approx(
            fairlearn_metrics.equalized_odds_difference(y, y_pred, sensitive_features=feature),
            abs=1e-9,
        )
        assert summ["demographic_parity_difference"] == pytest.approx(
            fairlearn_metrics.demographic_parity_difference(y, y_pred, sensitive_features=feature),
            abs=1e-9,
        )
        assert summ["worst_group_auc"] == pytest.approx(table["auc"].min(), abs=1e-12)
    ov = rep.overall.iloc[0]
    assert ov["auc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-9)
    assert ov["f1"] == pytest.approx(skm.f1_score(y, y_pred), abs=1e-9)


def test_metrics_exact_with_heavy_ties() -> None:
    """Scores on a coarse grid: many ties across classes (AUC counts them as half)."""
    df = simulate(1500, seed=3, decimals=1)
    rep = audit(df, sensitive="sex", n_boot=0, seed=0)
    for g in ["F", "M"]:
        sel = df["sex"] == g
        assert rep.group_table("sex").loc[g, "auc"] == pytest.approx(
            skm.roc_auc_score(df.y_true[sel], df.y_score[sel]), abs=1e-12
        )


def test_input_types_bool_labels_and_categorical_sensitive(preds: pd.DataFrame) -> None:
    df = preds.copy()
    df["y_true"] = df["y_true"].astype(bool)
    df["sex"] = df["sex"].astype("category")
    df["y_score"] = df["y_score"].astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        rep = audit(df, sensitive=["sex"], n_boot=0)
    ref = audit(preds, sensitive=["sex"], n_boot=0)
    pd.testing.assert_series_equal(rep.by_group["n"], ref.by_group["n"], check_exact=True)
    assert np.allclose(rep.by_group["tpr"], ref.by_group["tpr"], atol=1e-9)


# ---------------------------------------------------------------- groups
def test_missing_sensitive_values_form_their_own_group(
    preds: pd.DataFrame, report: AuditReport
) -> None:
    table = report.group_table("site")
    assert MISSING_LABEL in table.index
    assert table.loc[MISSING_LABEL, "n"] == preds["site"].isna().sum()
    assert table["n"].sum() == len(preds)
    inter = report.group_table("sex & site")
    assert f"F & {MISSING_LABEL}" in inter.index
    assert inter["n"].sum() == len(preds)


def test_intersections_of_three_columns(preds: pd.DataFrame) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        rep = audit(preds, sensitive=["sex", "site", "age_group"], n_boot=0)
    assert rep.attributes == [
        "sex",
        "site",
        "age_group",
        "sex & site",
        "sex & age_group",
        "site & age_group",
        "sex & site & age_group",
    ]
    triple = rep.group_table("sex & site & age_group")
    expected = preds.fillna({"site": MISSING_LABEL}).groupby(["sex", "site", "age_group"]).size()
    assert len(triple) == len(expected)
    assert triple.loc["M & B & >65", "n"] == expected[("M", "B", ">65")]
    no_inter = audit(preds, sensitive=["sex", "site"], n_boot=0, intersections=False)
    assert no_inter.attributes == ["sex", "site"]


def test_undefined_metric_is_nan_with_warning_naming_group() -> None:
    df = simulate(600, seed=5)
    df.loc[df["site"] == "C", "y_true"] = 0  # site C has no positives
    with pytest.warns(MetricWarning, match=r"group 'C' of 'site'.*auc.*tpr") as rec:
        rep = audit(df, sensitive=["site"], n_boot=30, seed=0)
    row = rep.group_table("site").loc["C"]
    assert np.isnan(row["auc"]) and np.isnan(row["tpr"]) and np.isnan(row["fnr"])
    assert row["n_pos"] == 0 and row["tnr"] >= 0
    assert any("'C'" in str(w.message) for w in rec)
    assert any("'C'" in m for m in rep.warnings)


def test_small_groups_are_marked_and_warned() -> None:
    df = simulate(400, seed=2)
    df["site"] = df["site"].fillna("A")
    df.loc[df.index[:8], "site"] = "tiny"
    with pytest.warns(MetricWarning, match=r"'tiny'.*only 8 rows"):
        rep = audit(df, sensitive="site", n_boot=0, min_group_size=30)
    table = rep.group_table("site")
    assert table.loc["tiny", "small_group"]
    assert not table.loc["A", "small_group"]


# ---------------------------------------------------------------- thresholds
def test_threshold_rules_match_roc_curve(preds: pd.DataFrame) -> None:
    y = preds["y_true"].to_numpy().astype(np.int8)
    s = preds["y_score"].to_numpy()
    fpr, tpr, thr = skm.roc_curve(y, s)
    j = tpr - fpr
    assert resolve_threshold("youden", y, s) == pytest.approx(thr[np.flatnonzero(j == j.max())[0]])
    t90 = resolve_threshold("sensitivity:0.9", y, s)
    assert (s[y == 1] >= t90).mean() >= 0.9
    higher = np.unique(s[s > t90])
    assert higher.size == 0 or (s[y == 1] >= higher[0]).mean() < 0.9  # the highest such threshold
    tspec = resolve_threshold("specificity:0.9", y, s)
    assert (s[y == 0] < tspec).mean() >= 0.9
    lower = np.unique(s[s < tspec])
    assert (s[y == 0] < lower[-1]).mean() < 0.9  # the lowest such threshold
    assert resolve_threshold(0.25, y, s) == 0.25
    rep = audit(preds, sensitive="sex", threshold="sensitivity:0.9", n_boot=0)
    assert rep.overall.iloc[0]["tpr"] >= 0.9
    assert rep.thresholds == {"all": pytest.approx(t90)}


def test_per_group_thresholds(preds: pd.DataFrame) -> None:
    rep = audit(
        preds, sensitive=["sex"], threshold="sensitivity:0.85", threshold_by="sex", n_boot=0
    )
    table = rep.group_table("sex")
    assert (table["tpr"] >= 0.85).all()
    assert set(rep.thresholds) == {"sex=F", "sex=M"}
    assert rep.thresholds["sex=F"] != rep.thresholds["sex=M"]
    fixed = audit(
        preds, sensitive=["sex"], threshold={"F": 0.3, "M": 0.6}, threshold_by="sex", n_boot=0
    )
    sel = preds["sex"] == "F"
    assert fixed.group_table("sex").loc["F", "selection_rate"] == pytest.approx(
        (preds.y_score[sel] >= 0.3).mean()
    )
    with pytest.raises(MedgenValueError, match=r"no entry for group 'M'"):
        audit(preds, sensitive=["sex"], threshold={"F": 0.3}, threshold_by="sex", n_boot=0)
    with pytest.raises(MedgenValueError, match=r"sensitivity:0.9"):
        audit(preds, sensitive=["sex"], threshold="sensitivity=0.9", n_boot=0)


# ---------------------------------------------------------------- bootstrap
def test_bootstrap_is_seeded_and_recorded(preds: pd.DataFrame) -> None:
    kw = {"sensitive": ["sex"], "n_boot": 50}
    a = audit(preds, seed=7, **kw)
    b = audit(preds, seed=7, **kw)
    c = audit(preds, seed=8, **kw)
    pd.testing.assert_frame_equal(a.by_group, b.by_group)
    assert not np.allclose(a.by_group["auc_low"], c.by_group["auc_low"])
    d = audit(preds, seed=None, **kw)
    assert isinstance(d.provenance["seed"], int)
    e = audit(preds, seed=d.provenance["seed"], **kw)
    pd.testing.assert_frame_equal(d.by_group, e.by_group)


def test_bootstrap_is_stratified_by_group(preds: pd.DataFrame) -> None:
    y = preds["y_true"].to_numpy().astype(np.int8)
    s = preds["y_score"].to_numpy()
    codes = (preds["sex"] == "M").to_numpy().astype(np.int64)
    _, key = np.unique(s, return_inverse=True)
    cells = build_cells(codes, key.astype(np.int64), int(key.max()) + 1, y, s, s >= 0.5)
    reps = bootstrap_metrics(cells, n_boot=64, rng=np.random.default_rng(0))
    sizes = np.bincount(codes)
    assert np.array_equal(reps["n"], np.broadcast_to(sizes, (64, 2)))  # group sizes fixed
    assert reps["n_pos"].std(axis=0).min() > 0  # but class balance varies


def test_cell_bootstrap_matches_row_bootstrap_distribution() -> None:
    """The multinomial-over-cells bootstrap is the row bootstrap: compare with a naive one."""
    df = simulate(500, seed=11)
    y = df["y_true"].to_numpy().astype(np.int8)
    s = df["y_score"].to_numpy()
    codes = (df["sex"] == "M").to_numpy().astype(np.int64)
    _, key = np.unique(s, return_inverse=True)
    cells = build_cells(codes, key.astype(np.int64), int(key.max()) + 1, y, s, s >= 0.5)
    fast = bootstrap_metrics(cells, n_boot=1000, rng=np.random.default_rng(1))["auc"][:, 0]
    rng = np.random.default_rng(2)
    idx_f = np.flatnonzero(codes == 0)
    naive = []
    for _ in range(1000):
        take = rng.choice(idx_f, idx_f.size)
        naive.append(skm.roc_auc_score(y[take], s[take]))
    naive_arr = np.array(naive)
    assert fast.mean() == pytest.approx(naive_arr.mean(), abs=0.004)
    assert fast.std() == pytest.approx(naive_arr.std(), rel=0.12)


def _coverage(n_rep: int, n: int, boot_bins: int, n_boot: int) -> tuple[float, float]:
    """Fraction of simulations whose 95% CI holds the true AUC (binormal, d' = 1) and TPR."""
    d = 1.0
    true_auc = norm.cdf(d / np.sqrt(2))
    true_tpr = 1 - norm.cdf(0.5 - d)  # positives ~ N(d, 1), threshold on the latent scale 0.5
    hit_auc = hit_tpr = 0
    rng = np.random.default_rng(1234)
    for i in range(n_rep):
        y = rng.integers(0, 2, n)
        latent = rng.normal(0, 1, n) + d * y
        df = pd.DataFrame({"y_true": y, "y_score": expit(latent), "g": rng.choice(["a", "b"], n)})
        rep = audit(
            df,
            sensitive="g",
            n_boot=n_boot,
            seed=i,
            threshold=float(expit(0.5)),
            boot_bins=boot_bins,
        )
        row = rep.group_table("g").loc["a"]
        hit_auc += row["auc_low"] <= true_auc <= row["auc_high"]
        hit_tpr += row["tpr_low"] <= true_tpr <= row["tpr_high"]
    return hit_auc / n_rep, hit_tpr / n_rep


def test_bootstrap_ci_coverage_exact_mode() -> None:
    cov_auc, cov_tpr = _coverage(n_rep=120, n=400, boot_bins=1000, n_boot=300)
    # 95% nominal; with 120 simulations the binomial SD is 2 points
    assert 0.88 <= cov_auc <= 0.995
    assert 0.88 <= cov_tpr <= 0.995


@pytest.mark.slow
def test_bootstrap_ci_coverage_binned_mode() -> None:
    cov_auc, cov_tpr = _coverage(n_rep=300, n=4000, boot_bins=50, n_boot=500)
    assert 0.91 <= cov_auc <= 0.98
    assert 0.91 <= cov_tpr <= 0.98


def test_binned_bootstrap_close_to_exact(preds: pd.DataFrame) -> None:
    exact = audit(preds, sensitive="sex", n_boot=400, seed=3, boot_bins=5000)
    binned = audit(preds, sensitive="sex", n_boot=400, seed=3, boot_bins=60)
    assert "exact" in exact.provenance["bootstrap"] and "binned" in binned.provenance["bootstrap"]
    pd.testing.assert_frame_equal(
        exact.by_group[["auc", "tpr", "brier"]], binned.by_group[["auc", "tpr", "brier"]]
    )
    for m in ["auc", "tpr", "brier", "ece"]:
        w_exact = exact.by_group[f"{m}_high"] - exact.by_group[f"{m}_low"]
        w_binned = binned.by_group[f"{m}_high"] - binned.by_group[f"{m}_low"]
        assert np.allclose(w_binned, w_exact, rtol=0.2), m
        assert (binned.by_group[f"{m}_low"] <= binned.by_group[m] + 1e-12).all()


# ---------------------------------------------------------------- disparities
def test_adjust_pvalues_against_hand_computed_values() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> cummax
    holm = adjust_pvalues(p, "holm")
    np.testing.assert_allclose(holm[:4], [0.03, 0.06, 0.06, 0.02])
    # BH: p * m / rank: 0.005*4/1=0.02, 0.01*4/2=0.02, 0.03*4/3=0.04, 0.04*4/4=0.04 -> cummin from top
    bh = adjust_pvalues(p, "bh")
    np.testing.assert_allclose(bh[:4], [0.02, 0.04, 0.04, 0.02])
    assert np.isnan(holm[4]) and np.isnan(bh[4])
    np.testing.assert_allclose(adjust_pvalues(np.array([0.5, 0.9]), "holm"), [1.0, 1.0])
    with pytest.raises(MedgenValueError, match="p_adjust"):
        adjust_pvalues(p, "bonferroni")


def test_disparities_against_reference_group(preds: pd.DataFrame, report: AuditReport) -> None:
    d = report.disparities
    table = report.group_table("site")
    largest = table["n"].idxmax()
    sub = d.xs("site", level="attribute")
    assert set(sub["reference_group"]) == {largest}
    assert largest not in sub.index.get_level_values("group")
    row = sub.loc[("C", "tpr")]
    assert row["difference"] == pytest.approx(table.loc["C", "tpr"] - table.loc[largest, "tpr"])
    assert row["ratio"] == pytest.approx(table.loc["C", "tpr"] / table.loc[largest, "tpr"])
    assert row["difference_low"] <= row["difference"] <= row["difference_high"]
    assert ((d["ratio"] < 0.8) | (d["ratio"] > 1.25)).eq(d["flagged"]).all()
    assert (d["p_adjusted"].dropna() >= d["p_value"].dropna() - 1e-15).all()
    np.testing.assert_allclose(d["p_adjusted"], adjust_pvalues(d["p_value"].to_numpy(), "holm"))
    # site C is less separable for men and women alike: the AUC gap to A must be detected
    assert sub.loc[("C", "auc"), "p_value"] < 0.05
    chosen = audit(
        preds, sensitive="site", n_boot=50, reference={"site": "C"}, seed=0, p_adjust="bh"
    )
    assert set(chosen.disparities["reference_group"]) == {"C"}
    with pytest.raises(MedgenValueError, match=r"reference\['site'\]='Z' is not a group"):
        audit(preds, sensitive="site", n_boot=0, reference={"site": "Z"})


def test_pvalues_are_uniformish_without_disparity() -> None:
    """Two groups drawn from the same model: few p-values below 0.05."""
    rng = np.random.default_rng(9)
    pvals = []
    for i in range(40):
        n = 400
        y = rng.integers(0, 2, n)
        df = pd.DataFrame(
            {"y_true": y, "y_score": expit(rng.normal(0, 1, n) + y), "g": rng.choice(["a", "b"], n)}
        )
        rep = audit(df, sensitive="g", n_boot=200, seed=i, reference={"g": "a"})
        pvals.append(rep.disparities.loc[("g", "b", "auc"), "p_value"])
    assert np.mean(np.array(pvals) < 0.05) <= 0.15


# ---------------------------------------------------------------- report
def test_html_report_is_self_contained(report: AuditReport, tmp_path: Path) -> None:
    out = tmp_path / "audit.html"
    text = report.to_html(out)
    assert out.read_text(encoding="utf-8") == text
    assert not re.search(r"https?://", text)
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", text)
    assert text.count("data:image/png;base64,") >= 2 * len(report.attributes)
    for needle in [
        "Summary",
        "By sex &amp; site",
        "Disparities",
        "Provenance",
        html.escape(MISSING_LABEL),
    ]:
        assert needle in text
    assert str(report.provenance["seed"]) in text
    assert "flagged" in text or "significant" in text


def test_html_findings_come_first_and_match_the_disparities(report: AuditReport) -> None:
    """The verdict per attribute sits under the summary and agrees with ``.disparities``."""
    text = report.to_html()
    findings = text.index("<h2>Findings</h2>")
    assert text.index("<h2>Summary</h2>") < findings < text.index("<h2>By sex</h2>")
    table = text[findings : text.index("<h2>", findings + 1)]
    rows = re.findall(
        r'<tr class="([a-z]*)"><td class="name">([^<]+)</td><td class="">(\d+)</td>', table
    )
    assert [html.unescape(name) for _, name, _ in rows] == list(report.attributes)
    d = report.disparities
    for cls, name, n_sig in rows:
        sub = d[d.index.get_level_values(0) == html.unescape(name)]
        assert int(n_sig) == int(sub["significant"].sum())
        expected = (
            "significant"
            if sub["significant"].any()
            else ("flagged" if sub["flagged"].any() else "")
        )
        assert cls == expected
    assert any(cls == "significant" for cls, _, _ in rows), "the fixture injects a real disparity"


def test_csv_markdown_and_notebook_repr(report: AuditReport, tmp_path: Path) -> None:
    files = report.to_csv(tmp_path / "csv")
    assert {f.name for f in files} == {
        "by_group.csv",
        "overall.csv",
        "disparities.csv",
        "summary.csv",
        "provenance.json",
    }
    back = pd.read_csv(
        tmp_path / "csv" / "by_group.csv", index_col=[0, 1], keep_default_na=False, na_values=[""]
    )
    np.testing.assert_allclose(back["auc"].to_numpy(), report.by_group["auc"].to_numpy())
    prov = json.loads((tmp_path / "csv" / "provenance.json").read_text())
    assert prov["seed"] == 1 and prov["rows"] == 3000
    md = report.to_markdown()
    assert md.startswith("# medgen fairness audit")
    assert "| attribute | group | n |" in md
    rendered = report._repr_html_()
    assert "<table>" in rendered and "sex &amp; site" in rendered


# ---------------------------------------------------------------- bad input
def test_missing_column_lists_available(preds: pd.DataFrame) -> None:
    with pytest.raises(
        MedgenValueError,
        match=r"sensitive='race': no such column.*available columns: 'image_id', 'y_true'",
    ):
        audit(preds, sensitive=["sex", "race"])
    with pytest.raises(MedgenValueError, match=r"y_score='prob'"):
        audit(preds, y_score="prob", sensitive="sex")


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (
            lambda d: d.assign(y_true=d["y_true"] * 2),
            r"y_true column 'y_true' must be binary.*found 0, 2",
        ),
        (
            lambda d: d.assign(y_true=np.where(d["y_true"] == 1, "yes", "no")),
            r"must be binary.*'no'",
        ),
        (lambda d: d.assign(y_score=d["y_score"] * 3 - 1), r"probabilities in \[0, 1\].*sigmoid"),
        (
            lambda d: d.assign(y_score=d["y_score"].where(d.index != 5)),
            r"1 missing or infinite values.*rows \[5\]",
        ),
        (
            lambda d: d.assign(y_true=d["y_true"].where(d.index != 7)),
            r"1 missing values.*rows \[7\]",
        ),
        (lambda d: d.assign(sex="F"), r"sensitive column 'sex' has a single value \('F'\)"),
        (lambda d: d.iloc[:0], r"no rows"),
        (
            lambda d: d.assign(sex=np.linspace(20, 90, len(d))),
            r"'sex' has 200 distinct values.*binned first.*pd.cut",
        ),
    ],
)
def test_bad_input_raises_medgen_errors(preds: pd.DataFrame, mutate, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MedgenValueError, match=match) as exc:
        audit(mutate(preds.iloc[:200].copy()), sensitive="sex", n_boot=0)
    assert isinstance(exc.value, MedgenError) and isinstance(exc.value, ValueError)


def test_bad_options(preds: pd.DataFrame) -> None:
    with pytest.raises(MedgenValueError, match="data must be a pandas DataFrame"):
        audit(preds.to_dict(), sensitive="sex")  # type: ignore[arg-type]
    with pytest.raises(MedgenValueError, match="n_boot"):
        audit(preds, sensitive="sex", n_boot=-1)
    with pytest.raises(MedgenValueError, match="tolerance"):
        audit(preds, sensitive="sex", tolerance=(1.2, 0.8))
    with pytest.raises(MedgenValueError, match="at least one column"):
        audit(preds, sensitive=[])


def test_markdown_escapes_missing_group(report: AuditReport) -> None:
    md = report.to_markdown()
    assert "\\<missing>" in md and "| <missing>" not in md


def test_repr_is_one_line(report: AuditReport) -> None:
    text = repr(report)
    assert text.startswith("AuditReport(rows=3000, attributes=['sex', 'site', 'sex & site']")
    assert "\n" not in text and "seed=1" in text


def test_sort_once_cells_equal_full_sort_cells(preds: pd.DataFrame) -> None:
    from medgen.audit._metrics import row_order

    y = preds["y_true"].to_numpy().astype(np.int8)
    s = preds["y_score"].to_numpy()
    codes = pd.factorize(preds["site"].fillna("?"), sort=True)[0].astype(np.int64)
    _, key = np.unique(s, return_inverse=True)
    key = key.astype(np.int64)
    args = (codes, key, int(key.max()) + 1, y, s, s >= 0.4)
    slow = build_cells(*args)
    fast = build_cells(*args, order=row_order(key, y))
    for name in ["count", "y", "pred", "group", "group_starts", "tie_starts", "ece_starts"]:
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)
    np.testing.assert_allclose(fast.s_mean, slow.s_mean, rtol=1e-12)
    np.testing.assert_allclose(fast.sq_mean, slow.sq_mean, rtol=1e-12, atol=1e-15)


def test_cluster_bootstrap_counts_subjects_not_images() -> None:
    """Each subject's image appears 4 times: resampling subjects must give the CI width of the
    de-duplicated data, resampling rows a width about half as large (too narrow)."""
    base = simulate(600, seed=21).assign(subject_id=lambda d: d["image_id"])
    dup = pd.concat([base] * 4, ignore_index=True)
    kw = {"sensitive": "sex", "n_boot": 600, "seed": 5}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        ref = audit(base, **kw)
        clustered = audit(dup, cluster="subject_id", **kw)
        naive = audit(dup, **kw)
    pd.testing.assert_frame_equal(ref.by_group[["auc", "tpr"]], clustered.by_group[["auc", "tpr"]])
    assert "clusters of 'subject_id'" in clustered.provenance["bootstrap"]
    for m in ["auc", "tpr", "brier"]:
        w_ref = (ref.by_group[f"{m}_high"] - ref.by_group[f"{m}_low"]).to_numpy()
        w_cl = (clustered.by_group[f"{m}_high"] - clustered.by_group[f"{m}_low"]).to_numpy()
        w_naive = (naive.by_group[f"{m}_high"] - naive.by_group[f"{m}_low"]).to_numpy()
        np.testing.assert_allclose(w_cl, w_ref, rtol=0.15, err_msg=m)
        np.testing.assert_allclose(w_naive, w_ref / 2, rtol=0.15, err_msg=m)
    with pytest.raises(MedgenValueError, match=r"cluster='patient'"):
        audit(base, cluster="patient", **kw)
