"""Multi-class end to end on the tiny preset: the simulator's graded label -> train -> predict ->
audit -> HTML, plus the graded label itself and the bad inputs."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medgen.audit import audit
from medgen.classify import Classifier, train
from medgen.classify._train import _auc
from medgen.errors import ConfigError, MedgenValueError, MetricWarning
from medgen.simulate import SimulationConfig, preset, simulate
from medgen.simulate._disease import grade_of

skm = pytest.importorskip("sklearn.metrics")

TINY_NET = {
    "model": "densenet",
    "model_kwargs": {"init_features": 8, "growth_rate": 8, "block_config": (2, 2)},
}
GRADES = ("none", "mild", "severe")


def _graded() -> SimulationConfig:
    cfg = preset("tiny")
    cfg.disease.grades = GRADES
    cfg.disease.grade_thresholds = (0.65,)
    return cfg


@pytest.fixture(scope="module")
def graded_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset (80 subjects, seed 0) with the graded label ``grade``."""
    return simulate(_graded(), tmp_path_factory.mktemp("graded"), seed=0, progress=False)


@pytest.fixture(scope="module")
def trained(
    graded_manifest: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Classifier, Path, float]:
    out = tmp_path_factory.mktemp("run3")
    t0 = time.perf_counter()
    clf = train(
        graded_manifest,
        target="grade",
        **TINY_NET,
        epochs=2,
        batch_size=8,
        lr=1e-2,
        augment="none",
        patience=None,
        out_dir=out,
        seed=0,
        progress=False,
    )
    return clf, out, time.perf_counter() - t0


# -- the simulator's graded label ---------------------------------------------------------------


def test_grade_column_follows_severity(graded_manifest: Path) -> None:
    df = pd.read_csv(graded_manifest)
    cols = list(df.columns)
    assert cols[cols.index("severity") + 1] == "grade"
    assert set(df["grade"]) == set(GRADES)
    assert (df.loc[df["severity"] == 0, "grade"] == "none").all()
    diseased = df[df["severity"] > 0]
    expected = np.where(diseased["severity"] < 0.65, "mild", "severe")
    assert (diseased["grade"].to_numpy() == expected).all()
    assert ((df["grade"] != "none") == (df["label_true"] == 1)).all()


def test_default_simulation_has_no_grade_column(tiny_manifest: Path) -> None:
    # the pinned-hash tests in tests/simulate guard byte-identity; here: the column is opt-in
    assert "grade" not in pd.read_csv(tiny_manifest, nrows=1).columns


def test_grade_of_thresholds() -> None:
    cfg = _graded().disease
    cfg.grades = ("none", "low", "mid", "high")
    cfg.grade_thresholds = (0.5, 0.8)
    got = grade_of(cfg, np.array([0.0, 0.31, 0.5, 0.79, 0.8, 1.0]))
    assert got.tolist() == ["none", "low", "mid", "mid", "high", "high"]


@pytest.mark.parametrize(
    ("grades", "thresholds", "match"),
    [
        (("none", "severe"), (), "at least 3 grades"),
        (("none", "mild", "severe"), (), "needs 1 severity threshold"),
        (("none", "mild", "severe"), (0.1,), r"inside disease.severity \(0.3, 1.0\)"),
        (("none", "a", "b", "c"), (0.8, 0.5), "increase strictly"),
        (("none", "mild", "mild"), (0.6,), "names a grade twice"),
        ((), (0.6,), "disease.grades is empty"),
    ],
)
def test_bad_grade_config_is_a_config_error(
    grades: tuple[str, ...], thresholds: tuple[float, ...], match: str
) -> None:
    cfg = _graded().to_dict()
    cfg["disease"]["grades"] = list(grades)
    cfg["disease"]["grade_thresholds"] = list(thresholds)
    with pytest.raises(ConfigError, match=match):
        SimulationConfig.from_dict(cfg).validate()


# -- training, prediction, audit ----------------------------------------------------------------


def test_three_class_run_end_to_end(
    trained: tuple[Classifier, Path, float], graded_manifest: Path, tmp_path: Path
) -> None:
    clf, out, train_s = trained
    t0 = time.perf_counter()
    assert clf.classes == sorted(GRADES)  # sorted, as the binary path records them
    assert clf.config["classes"] == ["mild", "none", "severe"]
    assert clf.metrics["temperature"] > 0 and clf.metrics["ece_after"] is not None
    assert np.isfinite(clf.metrics["best_val_auc"])
    preds = clf.predict(graded_manifest, split="test", progress=False)
    score_cols = [f"y_score_{c}" for c in clf.classes]
    assert "y_score" not in preds.columns
    p = preds[score_cols].to_numpy()
    assert p.shape == (len(preds), 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert (preds["y_pred"].to_numpy() == p.argmax(axis=1)).all()
    grades = np.asarray(clf.classes, dtype=object)
    assert (grades[preds["y_true"].to_numpy(dtype=int)] == preds["grade"].to_numpy()).all()

    # the saved run predicts the same probabilities
    again = Classifier.load(out).predict(graded_manifest, split="test", progress=False)
    np.testing.assert_array_equal(again[score_cols].to_numpy(), p)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetricWarning)
        rep = audit(preds, sensitive=["sex", "site"], n_boot=200, seed=0)  # prefix found
    assert rep.classes == ("mild", "none", "severe")
    ov = rep.overall.iloc[0]
    y = preds["y_true"].to_numpy(dtype=int)
    for k, c in enumerate(clf.classes):
        if (y == k).any() and (y != k).any():
            assert ov[f"auc[{c}]"] == pytest.approx(skm.roc_auc_score(y == k, p[:, k]), abs=1e-9)
    assert ov["accuracy"] == pytest.approx(skm.accuracy_score(y, p.argmax(axis=1)), abs=1e-9)
    # 12 test subjects: small groups (and classes absent from some) warn, never crash
    assert any("min_group_size" in str(w.message) for w in caught)
    html = rep.to_html(tmp_path / "report.html")
    assert "macro AUC" in html and "auc[severe]" in html
    assert train_s + time.perf_counter() - t0 < 60


def test_integer_labels_name_the_score_columns(graded_manifest: Path, tmp_path: Path) -> None:
    df = pd.read_csv(graded_manifest)
    df["grade_idx"] = df["grade"].map({g: i for i, g in enumerate(GRADES)})
    df.to_csv(graded_manifest.parent / "with_idx.csv", index=False)
    clf = train(
        graded_manifest.parent / "with_idx.csv",
        target="grade_idx",
        **TINY_NET,
        epochs=1,
        batch_size=16,
        augment="none",
        calibrate=False,
        seed=1,
        progress=False,
    )
    assert clf.classes == [0, 1, 2]
    preds = clf.predict(graded_manifest.parent / "with_idx.csv", split="val", progress=False)
    assert [c for c in preds.columns if c.startswith("y_score")] == [
        "y_score_0",
        "y_score_1",
        "y_score_2",
    ]
    assert (preds["y_true"] == preds["grade_idx"]).all()


def test_single_class_target_names_the_column(graded_manifest: Path, tmp_path: Path) -> None:
    df = pd.read_csv(graded_manifest)
    df["grade_one"] = "severe"
    path = graded_manifest.parent / "one_class.csv"
    df.to_csv(path, index=False)
    with pytest.raises(MedgenValueError, match="target column 'grade_one' has a single class"):
        train(path, target="grade_one", **TINY_NET, epochs=1, progress=False)


def test_validation_auc_with_a_class_absent_is_the_mean_over_present_classes() -> None:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), 40)
    y = rng.integers(0, 3, 40)
    assert _auc(y, p) == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"), abs=1e-12)
    y2 = np.where(y == 2, 0, y)  # class 2 absent from the validation rows
    want = np.mean([skm.roc_auc_score(y2 == k, p[:, k]) for k in (0, 1)])
    assert _auc(y2, p) == pytest.approx(want, abs=1e-12)
    assert np.isnan(_auc(np.zeros(40, dtype=int), p))
