"""Image classifiers (MONAI CNNs and ViTs) trained on cohorts, with prediction tables and explanations.

>>> from medgen.classify import available_models
>>> "densenet121" in available_models()
True

Typical use::

    clf = medgen.classify.train(cohort, target="label", model="densenet121", epochs=10, seed=0)
    preds = clf.predict(cohort, split="test")      # manifest columns + y_true, y_score, y_pred
    clf.save("runs/clf"); clf = medgen.classify.Classifier.load("runs/clf")
    maps = clf.explain(images, method="gradcam")   # Bx1xXY in [0, 1]
    medgen.classify.pretrain(cohort, method="mae", model="vit", out_dir="runs/mae")  # no labels
    clf = medgen.classify.train(cohort, model="vit", init="runs/mae")  # fine-tune the encoder
"""

from __future__ import annotations

from medgen.classify._calibrate import expected_calibration_error, fit_temperature
from medgen.classify._explain import EXPLAIN_METHODS, explain, overlay
from medgen.classify._model import Classifier
from medgen.classify._pretrain import PretrainConfig, Pretrained, load_pretrained, pretrain
from medgen.classify._registry import (
    MODELS,
    ModelSpec,
    available_models,
    build_model,
    get_model_spec,
)
from medgen.classify._train import TrainConfig, train

__all__ = [
    "EXPLAIN_METHODS",
    "MODELS",
    "Classifier",
    "ModelSpec",
    "PretrainConfig",
    "Pretrained",
    "TrainConfig",
    "available_models",
    "build_model",
    "expected_calibration_error",
    "explain",
    "fit_temperature",
    "get_model_spec",
    "load_pretrained",
    "overlay",
    "pretrain",
    "train",
]
