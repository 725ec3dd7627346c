"""The trained classifier: prediction tables, save/load, explanations."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medgen._internal.files import atomic_path, write_table, write_text_atomic
from medgen.errors import ConfigError, MedgenFileNotFoundError, MedgenValueError, RunFolderError

if TYPE_CHECKING:
    import pandas as pd
    import torch

log = logging.getLogger(__name__)

__all__ = ["Classifier"]


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
        cache: str | None = None,
        cache_dir: str | Path | None = None,
        num_workers: int = 0,
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
            cache: ``None`` (default) streams the images in batches from their files, so memory
                holds a batch, not the cohort; ``"disk"`` streams from the disk cache in
                ``cache_dir`` (e.g. the one training filled); ``"memory"`` loads every image
                into one tensor first. The predictions are the same in every mode.
            cache_dir: the disk-cache folder (``cache="disk"`` only).
            num_workers: ``DataLoader`` worker processes that read the streamed batches.

        Raises:
            MedgenValueError: the target column holds values that are not the model's classes.
            ConfigError: an invalid ``cache``, ``cache_dir`` or ``num_workers``.

        Returns:
            One row per image: every manifest column, then ``y_true`` (class index of the target,
            when the manifest has the target column), ``y_score`` (probability of ``classes[1]``;
            binary only), ``y_score_<class>`` per class when there are more than two, and
            ``y_pred`` (class index of the most probable class). Ready for ``medgen.audit.audit``.
        """
        import numpy as np
        import pandas as pd
        import torch
        from tqdm.auto import tqdm

        from medgen.classify._data import as_cohort, check_cache_dir, image_source, manifest_of

        check_cache_dir(cache, cache_dir)
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
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, not {batch_size!r}")
        x = image_source(
            co,
            df["image_id"].astype(str).tolist(),
            image_size=self.config["image_size"],
            spatial_dims=int(self.config["spatial_dims"]),
            cache=cache,
            cache_dir=cache_dir,
            num_workers=num_workers,
            progress=progress,
        )
        n_batches = -(-len(x) // batch_size)
        parts = [
            self.predict_proba(xb, batch_size=batch_size)
            for xb in tqdm(
                x.sequential(batch_size),
                total=n_batches,
                desc="predict",
                disable=not progress,
                leave=False,
            )
        ]
        probs = torch.cat(parts).numpy()
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
    def save(self, directory: str | Path, *, overwrite: bool = False) -> Path:
        """Write a complete classifier folder: ``model.safetensors``, ``config.json`` (config,
        temperature, metrics, provenance), ``metrics.csv``, then ``run_complete.json``.

        The folder follows the run-folder rules (docs/classify.md): the write holds the folder's
        lock, every file is written atomically and the completion marker comes last.

        Args:
            directory: the folder (created); it must be new or empty unless ``overwrite``.
            overwrite: replace a classifier (finished, interrupted or legacy) already there;
                only its own files are deleted.

        Returns:
            ``directory`` as a :class:`~pathlib.Path`.

        Raises:
            RunFolderError: the folder holds a classifier or run (without ``overwrite``), or
                files that are not a classifier's (never deleted).
            RunLockedError: another process is writing the folder.
        """
        from medgen._internal.runs import mark_complete, run_lock
        from medgen.classify import _run

        d = Path(directory).expanduser()
        with run_lock(d, what="classifier", owned=_run.OWNED):
            _run.prepare(
                d,
                resume=False,
                overwrite=overwrite,
                what="classifier",
                resume_hint="train(..., out_dir=..., resume=True)",
                overwrite_hint="overwrite=True",
            )
            self._write(d)
            mark_complete(d, _run.RESULT_FILES, kind=_run.KIND)
        return d

    def _write(self, d: Path) -> None:
        """The files of a classifier, each written atomically; the caller holds the lock and
        marks the folder complete afterwards."""
        from safetensors.torch import save_file

        from medgen.classify import _run

        meta = {
            "format": _run.FORMAT,
            "config": self.config,
            "temperature": self.temperature,
            "metrics": self.metrics,
            "provenance": self.provenance,
        }
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        with atomic_path(d / _run.WEIGHTS) as tmp:
            save_file(state, str(tmp))
        write_text_atomic(d / _run.CONFIG, json.dumps(meta, indent=2, default=_json_default))
        if not self.history.empty:
            write_table(self.history, d / _run.METRICS)

    @classmethod
    def load(cls, directory: str | Path) -> Classifier:
        """Rebuild a classifier from a finished run folder (no pickled objects are read).

        The folder must hold ``run_complete.json`` whose SHA-256 of ``model.safetensors`` and
        ``config.json`` still match: an interrupted run (no marker) or a mixed folder (files
        changed after completion) is refused. A *legacy* folder, saved by a medgen without
        completion markers (``config.json`` of format ``medgen.classify/1`` beside
        ``model.safetensors``), loads without the marker when it holds no ``checkpoint.pt`` or
        ``train_state.json`` (which would mark it as an interrupted run of a newer medgen).

        Raises:
            MedgenFileNotFoundError: the folder holds no classifier.
            RunFolderError: an interrupted or mixed folder (the message says how to resume or
                clean it), or a run folder of another kind.
            ConfigError: ``config.json`` is unreadable or not a classifier config, or the
                weights do not fit the network it describes.
            MedgenValueError: ``model.safetensors`` (or ``metrics.csv``) is unreadable.
        """
        from medgen._internal.runs import COMPLETE, check_complete
        from medgen.classify import _run

        d = Path(directory).expanduser()
        present = [n for n in (*_run.OWNED, COMPLETE) if (d / n).exists()]
        if (d / COMPLETE).is_file():
            marker = check_complete(d, what="classifier", resume_hint=_run.RESUME_HINT)
            if marker.get("kind") != _run.KIND:
                raise RunFolderError(
                    f"{str(d)!r} holds a {marker.get('kind')!r} run, not a classifier; load it "
                    "with the matching medgen loader."
                )
        elif _run.is_legacy(d):
            log.info("%s: a classifier saved by an older medgen (no %s); loading it", d, COMPLETE)
        elif (d / _run.TRAIN_STATE).is_file():
            check_complete(d, what="classifier", resume_hint=_run.RESUME_HINT)  # raises
        elif present:
            raise RunFolderError(
                f"classifier folder {str(d)!r} is incomplete (it holds {', '.join(present)} but no "
                f"{COMPLETE}): it was being written when it was interrupted. Save or train it "
                f"again with {_run.OVERWRITE_HINT}, or into a new folder."
            )
        else:
            raise MedgenFileNotFoundError(
                f"{d} is not a saved classifier: expected {_run.CONFIG} and {_run.WEIGHTS} in it "
                "(written by Classifier.save / `medgen train -o DIR`)"
            )
        return cls._read(d)

    @classmethod
    def _read(cls, d: Path) -> Classifier:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from medgen._internal.files import read_table
        from medgen.classify import _run
        from medgen.classify._registry import build_model

        cfg_path, w_path = d / _run.CONFIG, d / _run.WEIGHTS
        try:
            meta = json.loads(cfg_path.read_text(encoding="utf-8"))
            cfg = meta["config"]
            model = str(cfg["model"])
            dims = {
                "spatial_dims": int(cfg["spatial_dims"]),
                "in_channels": int(cfg["in_channels"]),
                "num_classes": len(cfg["classes"]),
            }
            size = [int(v) for v in cfg["image_size"]]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(
                f"{cfg_path} is not a medgen classifier config ({type(err).__name__}: {err}); "
                "the folder is damaged. Retrain into a new folder."
            ) from err
        net = build_model(
            model, **dims, image_size=size, model_kwargs=cfg.get("model_kwargs") or {}
        )
        try:
            state = load_file(str(w_path))
        except (SafetensorError, OSError, ValueError) as err:
            raise MedgenValueError(
                f"{w_path}: cannot read the weights ({type(err).__name__}: {err}); the file is "
                "corrupt or truncated. Retrain into a new folder."
            ) from err
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            first = " ".join(str(err).split())[:300]
            raise ConfigError(
                f"{w_path} does not hold the weights of the network {cfg_path.name} describes "
                f"({first}); the folder mixes two runs. Retrain into a new folder."
            ) from err
        hist = None
        if (d / _run.METRICS).is_file():
            hist = read_table(d / _run.METRICS, what="training history")
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
        method: str = "auto",
        class_idx: int | Sequence[int] | None = None,
        target_layer: str | None = None,
        mask_size: int | None = None,
    ) -> torch.Tensor:
        """Explanation maps of images, by the method that fits the model family.

        Args:
            images: raw ``Cx[SPATIAL DIMS]`` or ``BxCx[SPATIAL DIMS]`` images (preprocessed as in
                training).
            method: ``"auto"`` (attention rollout for a ViT, GradCAM for a CNN with a registered
                layer, occlusion otherwise), ``"gradcam"``, ``"rollout"`` (ViT only) or
                ``"occlusion"`` (any network).
            class_idx: class to explain: one index, one per image, or ``None`` (the predicted
                class; occlusion on a binary model: ``classes[1]``). Rollout ignores it.
            target_layer: GradCAM layer (dotted name); default: the registry's layer for a CNN,
                the last transformer block's ``norm1`` for a ViT.
            mask_size: occlusion patch size in pixels.

        Returns:
            ``Bx1x[SPATIAL DIMS]`` maps at the images' spatial shape, in [0, 1] per image. See
            :func:`medgen.classify.explain` (methods, references) and docs/explanations.md.
        """
        from medgen.classify._explain import explain

        return explain(
            self,
            images,
            method=method,
            class_idx=class_idx,
            target_layer=target_layer,
            mask_size=mask_size,
        )
