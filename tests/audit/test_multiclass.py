"""Multi-class audits: one-vs-rest values against scikit-learn / fairlearn, absent classes, errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medgen.audit import AuditReport, audit, compare, multiclass_metric_names
from medgen.errors import MedgenValueError, MetricWarning

skm = pytest.importorskip("sklearn.metrics")
fairlearn_metrics = pytest.importorskip("fairlearn.metrics")

CLASSES = ("none", "mild", "severe")
SCORES = [f"y_score_{c}" for c in CLASSES]


def simulate(n: int, seed: int = 0, *, decimals: int | None = 2) -> pd.DataFrame:
    """A 3-class prediction table: sex, site (with missing values), an age group that the
    classifier ignores, a classifier that separates worse at site C, probabilities rounded so
    that scores and argmax decisions tie."""
    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], n, p=[0.45, 0.55])
    site = rng.choice(["A", "B", "C"], n, p=[0.5, 0.3, 0.2]).astype(object)
    site[rng.random(n) < 0.05] = None
    age_group = rng.choice(["<40", "40-65", ">65"], n)
    y = rng.choice(3, n, p=[0.5, 0.3, 0.2])
    sep = np.where(site == "C", 0.6, 1.8)
    logits = rng.normal(0.0, 1.0, (n, 3))
    logits[np.arange(n), y] += sep
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    if decimals is not None:
        p = np.round(p, decimals)
        p[:, 0] = np.round(1.0 - p[:, 1] - p[:, 2], decimals)  # rows still sum to 1
    df = pd.DataFrame({"y_true": y, "sex": sex, "site": site, "age_group": age_group})
    for k, c in enumerate(SCORES):
        df[c] = p[:, k]
    return df


@pytest.fixture(scope="module")
def preds() -> pd.DataFrame:
    return simulate(3000)


@pytest.fixture(scope="module")
def report(preds: pd.DataFrame) -> AuditReport:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        return audit(preds, sensitive=["sex", "site", "age_group"], n_boot=300, seed=0)


def _reference(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Every multi-class metric of one group computed with scikit-learn (and numpy for ECE)."""
    k = p.shape[1]
    pred = p.argmax(axis=1)
    cm = skm.confusion_matrix(y, pred, labels=list(range(k)))
    out = {
        "n": float(len(y)),
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "macro_auc": skm.roc_auc_score(y, p, multi_class="ovr", average="macro", labels=range(k)),
        "brier": float(np.mean(np.sum((p - np.eye(k)[y]) ** 2, axis=1))),
    }
    fprs = []
    for j, c in enumerate(CLASSES):
        tp = cm[j, j]
        fn = cm[j].sum() - tp
        fp = cm[:, j].sum() - tp
        tn = cm.sum() - tp - fn - fp
        out[f"n[{c}]"] = float((y == j).sum())
        out[f"prevalence[{c}]"] = float((y == j).mean())
        out[f"auc[{c}]"] = skm.roc_auc_score(y == j, p[:, j])
        out[f"tpr[{c}]"] = tp / (tp + fn)
        out[f"fpr[{c}]"] = fp / (fp + tn)
        out[f"ppv[{c}]"] = skm.precision_score(y == j, pred == j, zero_division=np.nan)
        fprs.append(out[f"fpr[{c}]"])
    out["macro_fpr"] = float(np.mean(fprs))
    # top-label ECE, 10 equal-width bins [k/10, (k+1)/10), 1.0 in the last bin
    conf = p.max(axis=1)
    correct = (pred == y).astype(float)
    bins = np.digitize(conf, np.arange(1, 10) / 10.0)
    out["ece"] = sum(
        abs(correct[bins == b].sum() - conf[bins == b].sum()) for b in range(10)
    ) / len(y)
    return out


def test_every_group_equals_sklearn_one_vs_rest(preds: pd.DataFrame, report: AuditReport) -> None:
    p = preds[SCORES].to_numpy()
    y = preds["y_true"].to_numpy()
    checked = 0
    frames = {"overall": report.overall.xs("overall", level="attribute")}
    for attr in ("sex", "site", "age_group", "sex & site"):
        frames[attr] = report.group_table(attr)
    for attr, table in frames.items():
        for group, row in table.iterrows():
            if attr == "overall":
                sel = np.ones(len(preds), dtype=bool)
            else:
                cols = attr.split(" & ")
                keys = str(group).split(" & ")
                sel = np.ones(len(preds), dtype=bool)
                for c, v in zip(cols, keys, strict=True):
                    sel &= preds[c].fillna("<missing>").astype(str).to_numpy() == v
            ref = _reference(y[sel], p[sel])
            for metric, value in ref.items():
                assert row[metric] == pytest.approx(value, abs=1e-9), (attr, group, metric)
            checked += 1
    assert checked == 1 + 2 + 4 + 3 + 8  # overall, sex, site (+ missing), age, sex x site


def test_random_unrounded_predictions_equal_sklearn() -> None:
    df = simulate(700, seed=3, decimals=None)
    rep = audit(df, y_score=SCORES, sensitive="sex", n_boot=0)
    p, y = df[SCORES].to_numpy(), df["y_true"].to_numpy()
    for group, row in rep.group_table("sex").iterrows():
        sel = (df["sex"] == group).to_numpy()
        for metric, value in _reference(y[sel], p[sel]).items():
            assert row[metric] == pytest.approx(value, abs=1e-9), (group, metric)


def test_hand_built_table() -> None:
    # two rows per class; class 2 is perfectly separated, classes 0 and 1 are swapped for one
    # row each; scores of class 0 tie (0.6 and 0.2 twice)
    p = np.array(
        [
            [0.6, 0.2, 0.2],  # y=0, predicted 0
            [0.2, 0.6, 0.2],  # y=0, predicted 1
            [0.6, 0.3, 0.1],  # y=1, predicted 0
            [0.2, 0.7, 0.1],  # y=1, predicted 1
            [0.1, 0.1, 0.8],  # y=2, predicted 2
            [0.1, 0.2, 0.7],  # y=2, predicted 2
        ]
    )
    df = pd.DataFrame(p, columns=SCORES)
    df["y_true"] = [0, 0, 1, 1, 2, 2]
    df["sex"] = ["F", "M", "F", "M", "F", "M"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        ov = audit(df, sensitive="sex", n_boot=0).overall.iloc[0]
    assert ov["accuracy"] == pytest.approx(4 / 6)
    assert ov["tpr[none]"] == 0.5 and ov["fpr[none]"] == 0.25  # one of 4 others predicted 0
    assert ov["ppv[none]"] == 0.5 and ov["tpr[severe]"] == 1.0 and ov["fpr[severe]"] == 0.0
    assert ov["auc[severe]"] == 1.0
    # class 0: positives score 0.6, 0.2; negatives 0.6, 0.2, 0.1, 0.1; ties count 1/2:
    # (0.5 + 1 + 1 + 1) + (0 + 0.5 + 1 + 1) = 6 of 8 pairs
    assert ov["auc[none]"] == 0.75
    assert ov["balanced_accuracy"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)


def test_fairlearn_metricframe_per_group(preds: pd.DataFrame, report: AuditReport) -> None:
    y = preds["y_true"].to_numpy()
    pred = preds[SCORES].to_numpy().argmax(axis=1)
    for j, c in enumerate(CLASSES):
        mf = fairlearn_metrics.MetricFrame(
            metrics={
                "tpr": fairlearn_metrics.true_positive_rate,
                "fpr": fairlearn_metrics.false_positive_rate,
            },
            y_true=(y == j).astype(int),
            y_pred=(pred == j).astype(int),
            sensitive_features=preds["sex"],
        )
        table = report.group_table("sex")
        for g in ("F", "M"):
            assert table.loc[g, f"tpr[{c}]"] == pytest.approx(mf.by_group.loc[g, "tpr"], abs=1e-9)
            assert table.loc[g, f"fpr[{c}]"] == pytest.approx(mf.by_group.loc[g, "fpr"], abs=1e-9)
    mf = fairlearn_metrics.MetricFrame(
        metrics=skm.accuracy_score,
        y_true=y,
        y_pred=pred,
        sensitive_features=preds["site"].fillna("<missing>"),
    )
    table = report.group_table("site")
    for g in ("A", "B", "C", "<missing>"):
        assert table.loc[g, "accuracy"] == pytest.approx(mf.by_group.loc[g], abs=1e-9)


def test_columns_cis_disparities_and_summary(report: AuditReport) -> None:
    names = multiclass_metric_names(CLASSES)
    assert report.metrics == names and report.classes == CLASSES
    assert "auc[mild]" in names and "macro_auc" in names and "ece" in names
    for m in names:
        low, high = report.by_group[f"{m}_low"], report.by_group[f"{m}_high"]
        ok = report.by_group[m].notna() & (report.by_group["n"] >= 30)
        assert (low[ok] <= report.by_group[m][ok] + 1e-12).all(), m
        assert (report.by_group[m][ok] <= high[ok] + 1e-12).all(), m
    d = report.disparities
    metrics = set(d.index.get_level_values("metric"))
    assert {"macro_auc", "accuracy", "ece", "auc[severe]", "tpr[mild]", "fpr[none]"} <= metrics
    assert not any(m.startswith("prevalence[") for m in metrics)
    # site C is separated worse (injected): its macro AUC gap is significant; age is a control
    c = d.loc[("site", "C", "macro_auc")]
    assert c["difference"] < -0.1 and c["significant"]
    age = d.xs("macro_auc", level="metric").loc["age_group"]
    assert not age["significant"].any()
    s = report.summary
    assert s.loc["site", "worst_group"] == "C"
    assert s.loc["site", "macro_auc_gap_low"] > 0.05
    assert {"auc_gap[severe]", "equalized_odds_difference[mild]"} <= set(s.columns)


def test_same_seed_same_tables(preds: pd.DataFrame, report: AuditReport) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        again = audit(preds, sensitive=["sex", "site", "age_group"], n_boot=300, seed=0)
    pd.testing.assert_frame_equal(again.by_group, report.by_group)
    pd.testing.assert_frame_equal(again.disparities, report.disparities)


def test_class_names_list_and_prefix_give_the_same_audit(preds: pd.DataFrame) -> None:
    named = preds.assign(y_true=np.asarray(CLASSES, dtype=object)[preds["y_true"].to_numpy()])
    a = audit(preds, sensitive="sex", n_boot=20, seed=1)  # prefix "y_score" found
    b = audit(named, y_score=SCORES, sensitive="sex", n_boot=20, seed=1)
    pd.testing.assert_frame_equal(a.by_group, b.by_group)
    assert a.classes == b.classes == CLASSES


def test_absent_class_warns_and_gives_nan_with_reason(preds: pd.DataFrame) -> None:
    # no severe cases at site C (and none at all in a second table): NaN, never a crash
    df = preds[~((preds["site"] == "C") & (preds["y_true"] == 2))].reset_index(drop=True)
    with pytest.warns(MetricWarning) as record:
        rep = audit(df, sensitive=["sex", "site"], n_boot=100, seed=0)
    msgs = [str(w.message) for w in record]
    assert any("group 'C' of 'site'" in m and "['severe'] absent" in m for m in msgs)
    c = rep.group_table("site").loc["C"]
    assert np.isnan(c["auc[severe]"]) and np.isnan(c["tpr[severe]"]) and np.isnan(c["macro_auc"])
    assert np.isnan(c["macro_auc_low"]) and not np.isnan(c["auc[none]"])
    assert c["fpr[severe]"] >= 0 and c["accuracy"] > 0 and c["macro_fpr"] > 0  # still defined
    assert np.isnan(rep.disparities.loc[("site", "C", "auc[severe]"), "p_value"])
    assert "C" in rep.to_html()

    # a group holding one class only: every auc, its fpr and macro_fpr are NaN
    one = preds.assign(grp=np.where(preds["y_true"] == 0, "only_none", "mixed"))
    with pytest.warns(MetricWarning) as record:
        rep = audit(one, sensitive="grp", n_boot=50, seed=0)
    assert any("only class ['none'] present" in str(w.message) for w in record)
    g = rep.group_table("grp").loc["only_none"]
    assert np.isnan(g[[f"auc[{k}]" for k in CLASSES]].astype(float)).all()
    assert np.isnan(g["fpr[none]"]) and np.isnan(g["macro_fpr"]) and g["fpr[mild]"] >= 0

    none_severe = preds[preds["y_true"] != 2].reset_index(drop=True)
    with pytest.warns(MetricWarning) as record:
        rep = audit(none_severe, sensitive="sex", n_boot=50, seed=0)
    assert any(
        "class 'severe' (score column 'y_score_severe') is absent" in str(w.message) for w in record
    )
    assert np.isnan(rep.overall.iloc[0]["macro_auc"])
    assert rep.overall.iloc[0]["auc[mild]"] > 0.5


def test_html_report_shows_multiclass_metrics(preds: pd.DataFrame, tmp_path: Path) -> None:
    report = audit(preds, sensitive=["sex", "site"], n_boot=50, seed=0)
    text = report.to_html(tmp_path / "mc.html")
    assert (tmp_path / "mc.html").read_text() == text
    for needle in ("macro AUC", "auc[severe]", "tpr[mild]", "ece", "By site", "Disparities"):
        assert needle in text, needle
    assert text.count("data:image/png;base64,") == len(report.attributes)  # bars per attribute
    assert "http://" not in text and "https://" not in text
    md = report.to_markdown()
    assert "macro_auc" in md and "auc[none]" in md
    written = report.to_csv(tmp_path / "tables")
    assert len(written) == 5


def test_cluster_bootstrap_widens_duplicated_rows() -> None:
    df = simulate(600, seed=5)
    df["subject_id"] = np.arange(len(df))
    dup = pd.concat([df] * 4, ignore_index=True)
    width = {}
    for name, data, cluster in (
        ("once", df, None),
        ("rows", dup, None),
        ("clusters", dup, "subject_id"),
    ):
        rep = audit(data, sensitive="sex", n_boot=300, seed=0, cluster=cluster)
        ov = rep.overall.iloc[0]
        width[name] = ov["macro_auc_high"] - ov["macro_auc_low"]
    assert width["rows"] < 0.7 * width["once"]
    assert width["clusters"] == pytest.approx(width["once"], rel=0.25)


def test_binned_bootstrap_matches_the_exact_one() -> None:
    # 2,000 unrounded rows: more distinct scores than boot_bins, so the bootstrap cells are
    # binned; the row draws are the same, so only the binning differs from the exact bootstrap
    df = simulate(2000, seed=4, decimals=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        binned = audit(df, sensitive="sex", n_boot=300, seed=0)
        exact = audit(df, sensitive="sex", n_boot=300, seed=0, boot_bins=100_000)
    assert "binned" in binned.provenance["bootstrap"]
    assert "exact" in exact.provenance["bootstrap"]
    pd.testing.assert_frame_equal(
        binned.by_group[list(binned.metrics)], exact.by_group[list(exact.metrics)]
    )  # point estimates are always exact
    for m in ("macro_auc", "auc[mild]", "brier", "ece"):
        wb = binned.by_group[f"{m}_high"] - binned.by_group[f"{m}_low"]
        we = exact.by_group[f"{m}_high"] - exact.by_group[f"{m}_low"]
        np.testing.assert_allclose(wb, we, rtol=0.02, err_msg=m)
    for m in ("tpr[mild]", "fpr[severe]", "accuracy"):  # decisions are exact in binned cells
        np.testing.assert_allclose(binned.by_group[f"{m}_low"], exact.by_group[f"{m}_low"])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.assign(y_score_none=d["y_score_none"] * 0.5), "must sum to 1"),
        (lambda d: d.assign(y_score_mild=d["y_score_mild"] * 5), r"probabilities in \[0, 1\]"),
        (
            lambda d: d.assign(y_true=d["y_true"].astype(object).where(d.index > 0, "x")),
            "class indices 0..2 or the class names",
        ),
        (
            lambda d: d.assign(y_true=d["y_true"].astype(float).where(d.index > 0, np.nan)),
            "missing values",
        ),
    ],
)
def test_bad_input_names_the_column(preds: pd.DataFrame, change, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MedgenValueError, match=match):
        audit(change(preds.head(200)), sensitive="sex", n_boot=0)


def test_thresholds_and_compare_refuse_multiclass(preds: pd.DataFrame) -> None:
    with pytest.raises(MedgenValueError, match="argmax"):
        audit(preds, sensitive="sex", threshold="youden", n_boot=0)
    with pytest.raises(MedgenValueError, match="argmax"):
        audit(preds, sensitive="sex", threshold_by="sex", n_boot=0)
    rep = audit(preds, sensitive="sex", n_boot=0)
    with pytest.raises(MedgenValueError, match=r"multi-class audit .* binary audits only"):
        compare(rep, rep)
    with pytest.raises(MedgenValueError, match="at least 2"):
        audit(preds, y_score=["y_score_none"], sensitive="sex", n_boot=0)


def test_integer_class_names_that_are_not_indices_are_refused() -> None:
    df = simulate(100, seed=2).rename(columns=dict(zip(SCORES, ["p_1", "p_2", "p_3"], strict=True)))
    df["y_true"] = df["y_true"] + 1  # labels 1..3, not indices
    ok = audit(df, y_score=["p_1", "p_2", "p_3"], sensitive="sex", n_boot=0)
    assert ok.classes == ("1", "2", "3")
    df2 = df[df["y_true"] < 3]  # values 1, 2: indices or names?
    with pytest.raises(MedgenValueError, match="ambiguous"):
        audit(df2, y_score=["p_1", "p_2", "p_3"], sensitive="sex", n_boot=0)


def test_binary_audit_unchanged_when_score_column_exists(preds: pd.DataFrame) -> None:
    binary = preds.assign(
        y_true=(preds["y_true"] == 2).astype(int), y_score=preds["y_score_severe"]
    )
    rep = audit(binary, sensitive="sex", n_boot=0)
    assert rep.classes is None and "auc" in rep.by_group.columns
    assert rep.overall.iloc[0]["auc"] == pytest.approx(
        skm.roc_auc_score(binary["y_true"], binary["y_score"]), abs=1e-12
    )


def test_cli_audits_a_multiclass_prediction_table(preds: pd.DataFrame, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medgen.cli import app

    path = tmp_path / "preds.csv"
    preds.head(600).to_csv(path, index=False)
    out = tmp_path / "report.html"
    args = ["audit", str(path), "--sensitive", "sex", "-o", str(out), "--n-boot", "50"]
    res = CliRunner().invoke(app, [*args, "--csv-dir", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    assert "worst_group_macro_auc" in res.output and out.is_file()
    by_group = pd.read_csv(tmp_path / "t" / "by_group.csv")
    assert {"macro_auc", "auc[severe]", "tpr[mild]_low"} <= set(by_group.columns)
    res = CliRunner().invoke(app, [*args, "--threshold", "youden"])
    assert res.exit_code == 2 and "argmax" in res.output
