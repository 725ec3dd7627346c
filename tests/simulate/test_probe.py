"""A fast probe learns the simulated disease, and its per-group AUC shows the injected bias.

The probe is a logistic regression (scikit-learn) on translation-invariant intensity features:
26 quantiles (50th..100th percentile) of the brain's intensities normalised by their median,
scored out-of-fold (5-fold). The injected bias acts on ``sex``; ``handedness`` is a control
attribute with no effect, so its groups must score alike.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from medgen.simulate import BiasConfig, SimulationConfig, iter_subjects, preset


def _features(image: np.ndarray) -> np.ndarray:
    brain = image > 0.2 * np.percentile(image, 99)
    x = image / np.median(image[brain])
    return np.quantile(x[brain], np.linspace(0.5, 1.0, 26))


def _probe_aucs(cfg: SimulationConfig, seed: int) -> dict[str, float]:
    feats, records = [], []
    for subject in iter_subjects(cfg, seed=seed):
        feats.append(_features(subject.image))
        records.append(subject.record)
    df = pd.DataFrame(records)
    scores = cross_val_predict(
        LogisticRegression(max_iter=2000),
        np.asarray(feats),
        df["label"],
        cv=5,
        method="predict_proba",
    )[:, 1]
    df["y_score"] = scores
    out = {"all": roc_auc_score(df["label"], df["y_score"])}
    for attr in ("sex", "handedness"):
        for group, sub in df.groupby(attr):
            out[f"{attr}={group}"] = roc_auc_score(sub["label"], sub["y_score"])
    return out


def _config(mechanism: str, n: int) -> SimulationConfig:
    cfg = preset("tiny")
    cfg.population.n_subjects = n
    cfg.population.attributes = {"handedness": {"R": 0.5, "L": 0.5}}
    if mechanism == "shortcut":
        cfg.disease.lesion_contrast = 0.3  # a subtle disease, so the shortcut is worth taking
        strength = 0.7
    else:
        strength = 0.6
    cfg.biases = [BiasConfig(mechanism=mechanism, attribute="sex", group="F", strength=strength)]
    return cfg.validate()


@pytest.mark.parametrize(
    ("mechanism", "direction"),
    [("presentation", -1.0), ("shortcut", +1.0)],
)
def test_probe_sees_injected_bias_and_not_the_control(mechanism: str, direction: float) -> None:
    aucs = _probe_aucs(_config(mechanism, 350), seed=0)
    assert aucs["all"] > 0.65, aucs  # the disease is learnable
    gap = aucs["sex=F"] - aucs["sex=M"]
    assert direction * gap > 0.12, aucs  # presentation: F worse; shortcut: F "better"
    assert abs(aucs["handedness=L"] - aucs["handedness=R"]) < 0.08, aucs


def test_probe_without_bias_is_fair_across_sex() -> None:
    cfg = _config("presentation", 350)
    cfg.biases = []
    aucs = _probe_aucs(cfg, seed=1)
    assert aucs["all"] > 0.8, aucs
    assert abs(aucs["sex=F"] - aucs["sex=M"]) < 0.08, aucs


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probe_on_demo_preset(seed: int) -> None:
    cfg = preset("demo")
    aucs = _probe_aucs(cfg, seed=seed)
    assert aucs["all"] > 0.6, aucs
    assert aucs["sex=M"] - aucs["sex=F"] > 0.1, aucs
    assert abs(aucs["handedness=L"] - aucs["handedness=R"]) < 0.06, aucs
