"""The trained classifier: prediction tables, save/load, explanations."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medgen._internal.files import atomic_path, write_table, write_text_atomic
from medgen.errors import ConfigError, MedgenFileNotFoundError, MedgenValueError

if TYPE_CHECKING:
    import pandas as pd
    import torch

log = logging.getLogger(__name__)

__all__ = ["Classifier"]

_CONFIG = "config.json"
_WEIGHTS = "model.safetensors"


def _label_key(value: Any) -> str:
    """A label value as text, so 1, 1.0, numpy 1 and "1" name the same class."""
    v = value.item() if hasattr(value, "item") else value
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class Classifier:
    """A trained image classifier: a MONAI network, its config and its calibration.

    Calling it on a ``BxCx[SPATIAL DIMS]`` tensor of preprocessed images returns ``BxK`` class
    probabilities (temperature applied). ``classes[k]`` is the label value of class ``k``.

    Attributes:
        net: the ``torch.nn.Module`` (eval mode, CPU).
        config: the resolved training config (``TrainConfig`` as a dict).
        temperature: softmax temperature fitted on the validation split (1.0 = none).
        metrics: training summary (best epoch, validation AUC, ECE before/after, ...).
        history: per-epoch metrics table (also written as ``metrics.csv``).
        provenance: manifest hash, seed, package versions.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        *,
        config: dict[str, Any],
        temperature: float = 1.0,
        metrics: dict[str, Any] | None = None,
        history: pd.DataFrame | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        import pandas as pd

        self.net = net.eval()
        self.config = dict(config)
        self.temperature = float(temperature)
        self.metrics = dict(metrics or {})
        self.history = history if history is not None else pd.DataFrame()
        self.provenance = dict(provenance or {})
        self.seen_image_ids: list[list[str]] = []

    # -- basic properties ---------------------------------------------------------------------
    @property
    def classes(self) -> list[Any]:
        """Label values, in logit order."""
        return list(self.config["classes"])

    @property
    def target(self) -> str:
        return str(self.config["target"])

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Classifier(model={c['model']!r}, target={c['target']!r}, classes={c['classes']}, "
            f"image_size={c['image_size']}, best_val_auc={self.metrics.get('best_val_auc')})"
        )

    # -- inference ----------------------------------------------------------------------------
    def preprocess(self, images: Any) -> torch.Tensor:
        """Resize to the training size and z-score each image, as training did.

        Args:
            images: ``Cx[SPATIAL DIMS]`` or ``BxCx[SPATIAL DIMS]`` tensor/array.

        Returns:
            ``BxCx[SPATIAL DIMS]`` float32 tensor.
        """
        import torch

        from medgen.transforms import normalize_intensity, resize

        if hasattr(images, "as_tensor"):  # MetaTensor -> plain tensor
            images = images.as_tensor()
        x = torch.as_tensor(images).float()
        sd = int(self.config["spatial_dims"])
        if x.ndim == sd + 1:
            x = x[None]
        if x.ndim != sd + 2:
            raise MedgenValueError(
                f"images must be Cx{'XY' if sd == 2 else 'XYZ'} or BxCx..., got shape {tuple(x.shape)}"
            )
        if x.shape[1] != int(self.config["in_channels"]):
            raise MedgenValueError(
                f"images have {x.shape[1]} channels, the model was trained on {self.config['in_channels']}"
            )
        size = tuple(self.config["image_size"])
        out = []
        for im in x:
            if tuple(im.shape[1:]) != size:
                im = resize(im, size)
                im = torch.as_tensor(im.as_tensor() if hasattr(im, "as_tensor") else im).float()
            out.append(normalize_intensity(im))
        return torch.stack(out)

    def predict_proba(self, x: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
        """Class probabilities ``BxK`` for preprocessed images ``BxCx[SPATIAL DIMS]``."""
        import torch

        outs = []
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                outs.append(
                    torch.softmax(self.net(x[i : i + batch_size]) / self.temperature, dim=1)
                )
        return torch.cat(outs) if outs else torch.zeros(0, len(self.classes))

    def __call__(self, images: Any) -> torch.Tensor:
        return self.predict_proba(self.preprocess(images))

    def predict(
        self,
        cohort: Any,
        *,
        split: str | Sequence[str] | None = None,
        batch_size: int = 64,
        progress: bool = True,
        labels: bool = True,
    ) -> pd.DataFrame:
        """Predict every image of a cohort.

        Args:
            cohort: a :class:`medgen.Cohort` or a manifest path.
            split: keep only rows of this split (or splits); ``None`` predicts all rows.
            batch_size: images per forward pass.
            progress: show a tqdm bar while loading.
            labels: read the target column into ``y_true``; its values must be classes the
                model knows (missing values stay missing). ``False`` ignores the column (a cohort
                labelled with another scheme, or unlabelled).

        Raises:
            MedgenValueError: the target column holds values that are not the model's classes.

        Returns:
            One row per image: every manifest column, then ``y_true`` (class index of the target,
            when the manifest has the target column), ``y_score`` (probability of ``classes[1]``;
            binary only), ``y_score_<class>`` per class when there are more than two, and
            ``y_pred`` (class index of the most probable class). Ready for ``medgen.audit.audit``.
        """
        import numpy as np
        import pandas as pd

        from medgen.classify._data import as_cohort, load_images, manifest_of

        co = as_cohort(cohort)
        df = manifest_of(co)
        if labels and self.target in df.columns:
            self._check_labels(df[self.target])
        if split is not None:
            splits = [split] if isinstance(split, str) else list(split)
            df = df[df["split"].astype(str).isin(splits)]
            if df.empty:
                raise MedgenValueError(
                    f"no rows with split in {splits}; splits present: "
                    f"{sorted(manifest_of(co)['split'].astype(str).unique())}"
                )
        df = df.reset_index(drop=True)
        x = load_images(
            co,
            df["image_id"].astype(str).tolist(),
            image_size=self.config["image_size"],
            spatial_dims=int(self.config["spatial_dims"]),
            progress=progress,
        )
        probs = self.predict_proba(x, batch_size=batch_size).numpy()
        out = df.copy()
        classes = self.classes
        if labels and self.target in out.columns:
            lookup = {_label_key(c): i for i, c in enumerate(classes)}
            mapped = out[self.target].map(
                lambda v: np.nan if pd.isna(v) else lookup.get(_label_key(v), np.nan)
            )
            out["y_true"] = mapped.astype("float").astype("Int64")
        if len(classes) == 2:
            out["y_score"] = probs[:, 1]
        else:
            for k, c in enumerate(classes):
                out[f"y_score_{c}"] = probs[:, k]
        out["y_pred"] = probs.argmax(axis=1)
        return out

    def _check_labels(self, values: pd.Series) -> None:
        """Refuse target values the model was not trained on (they would become NaN ``y_true``)."""
        known = {_label_key(c) for c in self.classes}
        seen = sorted({_label_key(v) for v in values.dropna().unique()})
        unknown = [v for v in seen if v not in known]
        if unknown:
            raise MedgenValueError(
                f"column {self.target!r} holds {len(unknown)} value(s) the model does not know "
                f"({', '.join(map(repr, unknown[:10]))}); the model's classes are "
                f"{[str(c) for c in self.classes]}. Map the labels to those classes, or predict "
                "without labels (labels=False; CLI --no-labels)."
            )

    # -- persistence --------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` (config, temperature, metrics, provenance), ``model.safetensors``
        and ``metrics.csv`` into ``directory`` (created). Files are written atomically."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": "medgen.classify/1",
            "config": self.config,
            "temperature": self.temperature,
            "metrics": self.metrics,
            "provenance": self.provenance,
        }
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        with atomic_path(d / _WEIGHTS) as tmp:
            save_file(state, str(tmp))
        write_text_atomic(d / _CONFIG, json.dumps(meta, indent=2, default=_json_default))
        if not self.history.empty:
            write_table(self.history, d / "metrics.csv")
        return d

    @classmethod
    def load(cls, directory: str | Path) -> Classifier:
        """Rebuild a classifier saved by :meth:`save` (no pickled objects are read)."""
        import pandas as pd
        from safetensors.torch import load_file

        from medgen.classify._registry import build_model

        d = Path(directory)
        if not (d / _CONFIG).is_file() or not (d / _WEIGHTS).is_file():
            raise MedgenFileNotFoundError(
                f"{d} is not a saved classifier: expected {_CONFIG} and {_WEIGHTS} in it "
                "(written by Classifier.save / `medgen train -o DIR`)"
            )
        try:
            meta = json.loads((d / _CONFIG).read_text())
            cfg = meta["config"]
        except (json.JSONDecodeError, KeyError) as err:
            raise ConfigError(f"{d / _CONFIG} is not a medgen classifier config: {err}") from err
        net = build_model(
            cfg["model"],
            spatial_dims=int(cfg["spatial_dims"]),
            in_channels=int(cfg["in_channels"]),
            num_classes=len(cfg["classes"]),
            image_size=cfg["image_size"],
            model_kwargs=cfg.get("model_kwargs") or {},
        )
        net.load_state_dict(load_file(str(d / _WEIGHTS)))
        hist = pd.read_csv(d / "metrics.csv") if (d / "metrics.csv").is_file() else None
        return cls(
            net,
            config=cfg,
            temperature=meta.get("temperature", 1.0),
            metrics=meta.get("metrics"),
            history=hist,
            provenance=meta.get("provenance"),
        )

    # -- explanations -------------------------------------------------------------------------
    def explain(
        self,
        images: Any,
        *,
        method: str = "gradcam",
        class_idx: int | None = None,
        target_layer: str | None = None,
        mask_size: int | None = None,
    ) -> torch.Tensor:
        """Explanation maps aligned with the (preprocessed) input. See :func:`medgen.classify.explain`."""
        from medgen.classify._explain import explain

        return explain(
            self,
            images,
            method=method,
            class_idx=class_idx,
            target_layer=target_layer,
            mask_size=mask_size,
        )
