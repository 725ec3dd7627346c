"""Image-to-image translation between groups of a cohort (e.g. site harmonisation), and its
evaluation against the simulator's counterfactual truth.

- :class:`Translator`: ``model="histogram"`` (``skimage.exposure.match_histograms`` to the
  pooled foreground intensities of the target's training images), ``"nyul"`` (TorchIO's
  ``HistogramStandardization`` landmarks of the target's training images, Nyul et al. 2000) or
  ``"cyclegan"`` (the engine's ``cyclegan`` objective, Zhu et al. 2017); ``fit``, ``apply``,
  ``save`` / :func:`medgen.generative.load` (kind ``"translator"``).
- :func:`evaluate_translation`: masked PSNR / SSIM to the counterfactual truth (the same subject
  rendered at the target site by ``simulate(..., counterfactual=("site",))``) and lesion-contrast
  preservation, for the identity and the translator.

Intensities: every image is scaled by its own robust range (0.5th..99.5th percentile to 0..1,
as :class:`~medgen.generative.Synthesizer` does), translated in that space and mapped back
through the same range, so an image in any units (MR arbitrary units, CT in HU) comes back in
its own units. The foreground is :func:`foreground_mask` of the scaled image.

See docs/translation.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import numpy as np

from medgen._internal.suggest import did_you_mean
from medgen.errors import ConfigError, MedgenValueError
from medgen.generative._model import GenerativeModel, register_model_kind

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

    from medgen.generative.objectives.unpaired import CycleGANConfig

__all__ = [
    "MODELS",
    "NORM_PERCENTILES",
    "Translator",
    "evaluate_translation",
    "foreground_mask",
    "robust_range",
]

#: the translation models
MODELS = ("histogram", "nyul", "cyclegan")
#: percentiles of each image that map to 0 and 1
NORM_PERCENTILES = (0.5, 99.5)
#: the foreground: scaled intensity above this, opened and hole-filled (:func:`foreground_mask`)
FOREGROUND_THRESHOLD = 0.1
#: quantiles of the target's pooled foreground intensities kept as the histogram reference
N_QUANTILES = 1024
#: landmarks of TorchIO's HistogramStandardization (cutoff 1%/99%, deciles, quartiles)
N_LANDMARKS = 13
#: engine options of a cyclegan fit when the caller gives none
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 10,
    "steps_per_epoch": 100,
    "batch_size": 8,
    "ema_decay": 0.99,
    "device": "auto",
}


def robust_range(arr: np.ndarray) -> tuple[float, float]:
    """``(low, high)``: the 0.5th and 99.5th percentiles of ``arr`` (``high = low + 1`` when
    they coincide)."""
    from medgen.generative._restorer import robust_range as percentile_range

    return percentile_range(arr, NORM_PERCENTILES)


def _scaled(arr: np.ndarray) -> np.ndarray:
    lo, hi = robust_range(arr)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def foreground_mask(scaled: np.ndarray) -> np.ndarray:
    """The foreground (e.g. the brain) of an image scaled to its robust range: pixels above
    :data:`FOREGROUND_THRESHOLD`, opened by a 3-pixel cross (isolated noise removed) and with
    holes filled (ventricles kept), computed over the non-singleton axes (a ``(1, X, Y)`` or
    ``(X, Y, 1)`` image is a 2D image). Boolean, the image's shape."""
    from scipy import ndimage

    arr = np.asarray(scaled)
    spatial = arr.reshape([d for d in arr.shape if d > 1] or [1])
    fg = ndimage.binary_opening(spatial > FOREGROUND_THRESHOLD)
    fg = ndimage.binary_fill_holes(fg)
    return np.asarray(fg, dtype=bool).reshape(arr.shape)


def _tio_mask(tensor: Any, *, scale: bool) -> np.ndarray:
    """:func:`foreground_mask` of a TorchIO tensor ``(1, X, Y, 1)`` / ``(1, X, Y, Z)`` (scaled to
    its robust range first when ``scale``), in the tensor's shape (for ``masking_method``)."""
    arr = np.asarray(tensor.numpy() if hasattr(tensor, "numpy") else tensor)
    return foreground_mask(_scaled(arr) if scale else arr)


def _state_module(buffers: Mapping[str, Any]) -> nn.Module:
    """An ``nn.Module`` holding the fitted arrays of a baseline as buffers (saved as weights)."""
    import torch
    from torch import nn

    module = nn.Module()
    for name, value in buffers.items():
        module.register_buffer(name, torch.as_tensor(np.asarray(value), dtype=torch.float64))
    return module


def _check_selector(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(
            f"Translator: {name} must be a non-empty dict of manifest column -> value, e.g. "
            f"{{'site': 'site_A'}}, not {value!r}."
        )
    return {str(k): v for k, v in value.items()}


def _cyclegan_config(
    options: Mapping[str, Any] | None, *, spatial_dims: int, patch_size: int
) -> CycleGANConfig:
    from medgen.generative.objectives.unpaired import CycleGANConfig

    opts = dict(options or {})
    known = [f.name for f in fields(CycleGANConfig) if f.name not in ("spatial_dims", "patch_size")]
    for key in opts:
        if key not in known:
            raise ConfigError(
                f"Translator: cyclegan option {key!r} is unknown; known: {known}."
                f"{did_you_mean(key, known)} (spatial_dims and patch_size are the Translator's "
                "own arguments)."
            )
    return CycleGANConfig(spatial_dims=spatial_dims, patch_size=patch_size, **opts)


@register_model_kind("translator")
class Translator(GenerativeModel):
    """Translate images of one group of a cohort (``source``) into the appearance of another
    (``target``), e.g. site A to site B.

    Args:
        model: ``"histogram"``, ``"nyul"`` or ``"cyclegan"`` (see the module docstring).
        source, target: selectors, dicts of manifest column -> value (a list means any of the
            values), e.g. ``{"site": "site_A"}``; :meth:`fit` trains on the training-split rows
            each selects (never on counterfactual rows).
        spatial_dims: 2 or 3: what ``"cyclegan"`` trains on and applies to (2: the foreground
            slices of volumes for training; 2D images only at :meth:`apply`). The baselines work
            on any image.
        patch_size: cyclegan training patch edge (pixels), divisible by
            ``2**(len(channels)-1)``; images must be at least this large.
        cyclegan: other :class:`~medgen.generative.objectives.unpaired.CycleGANConfig` options
            (``channels``, ``num_res_units``, ``cycle_weight``, ...).

    Example (histogram matching of 2D arrays; no cohort needed with ``fit_images``):
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> a = [rng.gamma(2.0, 1.0, (32, 32)) for _ in range(3)]
        >>> b = [100 + 10 * rng.normal(size=(32, 32)) ** 2 for _ in range(3)]
        >>> t = Translator("histogram", source={"site": "A"}, target={"site": "B"})
        >>> t = t.fit_images(a, b)
        >>> t.apply(a[0]).shape
        (32, 32)
    """

    def __init__(
        self,
        model: str = "histogram",
        *,
        source: Mapping[str, Any],
        target: Mapping[str, Any],
        spatial_dims: int = 2,
        patch_size: int = 32,
        cyclegan: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if model not in MODELS:
            raise ConfigError(
                f"Translator: model must be one of {list(MODELS)}, not {model!r}."
                f"{did_you_mean(model, MODELS)}"
            )
        if spatial_dims not in (2, 3):
            raise ConfigError(f"Translator: spatial_dims must be 2 or 3, not {spatial_dims!r}.")
        self.model = model
        self.source = _check_selector(source, "source")
        self.target = _check_selector(target, "target")
        if self.source == self.target:
            raise ConfigError(
                f"Translator: source and target are the same selector ({self.source}); "
                "choose two different groups, e.g. source={'site': 'site_A'}, "
                "target={'site': 'site_B'}."
            )
        self.spatial_dims = int(spatial_dims)
        self.patch_size = int(patch_size)
        self.cyclegan_options = dict(cyclegan or {})
        self._nets: dict[str, nn.Module] = {}
        if model == "cyclegan":
            from medgen.generative.objectives.unpaired import build_cyclegan_networks

            cfg = self.cyclegan_config()
            nets = build_cyclegan_networks(cfg)
            self._nets = {"g_ab": nets["g_ab"].eval(), "g_ba": nets["g_ba"].eval()}
        elif model == "histogram":
            self._nets = {"state": _state_module({"reference": np.zeros(N_QUANTILES)})}
        else:
            self._nets = {"state": _state_module({"landmarks": np.zeros(N_LANDMARKS)})}

    # ------------------------------------------------------------------ GenerativeModel
    def cyclegan_config(self) -> CycleGANConfig:
        """The :class:`~medgen.generative.objectives.unpaired.CycleGANConfig` of this model."""
        return _cyclegan_config(
            self.cyclegan_options, spatial_dims=self.spatial_dims, patch_size=self.patch_size
        )

    def networks(self) -> dict[str, nn.Module]:
        return dict(self._nets)

    def model_config(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "source": self.source,
            "target": self.target,
            "spatial_dims": self.spatial_dims,
            "patch_size": self.patch_size,
            "cyclegan": self.cyclegan_options,
        }

    @classmethod
    def from_model_config(cls, config: Mapping[str, Any]) -> Translator:
        return cls(
            config["model"],
            source=config["source"],
            target=config["target"],
            spatial_dims=int(config.get("spatial_dims", 2)),
            patch_size=int(config.get("patch_size", 32)),
            cyclegan=config.get("cyclegan") or None,
        )

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` (or a load of a fitted model) gave it its mapping."""
        if self.model == "cyclegan":
            return self.steps_trained > 0
        return bool(np.abs(self._buffer()).sum() > 0)

    def _buffer(self) -> np.ndarray:
        """The fitted array of a baseline: the histogram reference or the Nyul landmarks."""
        name = "reference" if self.model == "histogram" else "landmarks"
        return np.asarray(self._nets["state"].get_buffer(name).numpy())

    def __repr__(self) -> str:
        return (
            f"Translator({self.model!r}, source={self.source}, target={self.target}, "
            f"spatial_dims={self.spatial_dims}, fitted={self.fitted})"
        )

    # ------------------------------------------------------------------ fitting
    def _rows(self, cohort: Any, selector: Mapping[str, Any], name: str) -> Any:
        """The factual training rows of ``cohort`` matching ``selector``."""
        df = cohort.df
        missing = [k for k in selector if k not in df.columns]
        if missing:
            cols = list(df.columns)
            raise MedgenValueError(
                f"Translator.fit: {name} selects on column(s) {missing} that the manifest does "
                f"not have; its columns: {cols}.{did_you_mean(missing[0], cols)}"
            )
        extra = {"counterfactual_of": None} if "counterfactual_of" in df.columns else {}
        train = cohort.select(split="train", **extra)
        sub = train.select(**selector)
        if len(sub.df) == 0:
            raise MedgenValueError(
                f"Translator.fit: {name}={selector} matches no training-split rows (of "
                f"{len(train.df)}); values present: "
                + ", ".join(f"{k}: {sorted(map(str, df[k].dropna().unique()))}" for k in selector)
                + "."
            )
        if len(sub.df) == len(train.df):
            raise MedgenValueError(
                f"Translator.fit: {name}={selector} matches every training-split row "
                f"({len(train.df)}), so the other group is empty; select one group with "
                f"{name}= (e.g. one site)."
            )
        return sub

    def fit(
        self,
        cohort: Any,
        *,
        run_dir: Any = None,
        config: Any = None,
        progress: bool = False,
        overwrite: bool = False,
    ) -> Translator:
        """Fit on the training split of ``cohort`` (a :class:`~medgen.cohort.Cohort` or a
        manifest path): ``source`` rows and ``target`` rows (``counterfactual_of`` rows are
        never used).

        Args:
            cohort: the cohort.
            run_dir: save the fitted model there (a new or empty folder; ``overwrite`` to
                replace a model).
            config: engine options of ``"cyclegan"`` (an :class:`EngineConfig` or a dict
                overriding :data:`TRAIN_DEFAULTS`); ignored by the baselines.
            progress: show the engine's progress bar.

        Raises:
            MedgenValueError: a selector names a missing column, or matches no training row or
                every one; the two selectors share rows.
        """
        from medgen.cohort import Cohort
        from medgen.generative._restorer import load_images

        if not isinstance(cohort, Cohort):
            cohort = Cohort.from_manifest(cohort)
        src = self._rows(cohort, self.source, "source")
        tgt = self._rows(cohort, self.target, "target")
        shared = sorted(set(src.image_ids) & set(tgt.image_ids))
        if shared:
            raise MedgenValueError(
                f"Translator.fit: source={self.source} and target={self.target} both select "
                f"{len(shared)} row(s) (e.g. {shared[0]!r}); the groups must be disjoint."
            )
        a = [arr for _, arr, _ in load_images(src)]
        b = [arr for _, arr, _ in load_images(tgt)]
        paths = [str(p) for p in tgt.paths]
        self.fit_images(a, b, config=config, progress=progress, _target_paths=paths)
        if run_dir is not None:
            self.save(run_dir, overwrite=overwrite)
        return self

    def fit_images(
        self,
        source_images: Sequence[Any],
        target_images: Sequence[Any],
        *,
        config: Any = None,
        progress: bool = False,
        _target_paths: Sequence[str] | None = None,
    ) -> Translator:
        """Fit on two lists of images (arrays ``(X, Y[, Z])`` in their own units)."""
        from medgen.generative._restorer import as_spatial

        a = [as_spatial(im, f"source_images[{i}]")[0] for i, im in enumerate(source_images)]
        b = [as_spatial(im, f"target_images[{i}]")[0] for i, im in enumerate(target_images)]
        if not a or not b:
            raise MedgenValueError(
                "Translator.fit: source and target each need at least one image; got "
                f"{len(a)} and {len(b)}."
            )
        h = hashlib.sha256()
        for tag, imgs in (("a", a), ("b", b)):
            for i, arr in enumerate(imgs):
                h.update(f"{tag}{i}{arr.shape}".encode())
                h.update(np.ascontiguousarray(arr).tobytes())
        self.data_hash = h.hexdigest()
        if self.model == "histogram":
            pooled = np.concatenate([_scaled(x)[foreground_mask(_scaled(x))] for x in b])
            ref = np.quantile(pooled, np.linspace(0.0, 1.0, N_QUANTILES))
            self._nets = {"state": _state_module({"reference": ref})}
        elif self.model == "nyul":
            self._nets = {"state": _state_module({"landmarks": _nyul_landmarks(b, _target_paths)})}
        else:
            self._fit_cyclegan(a, b, config=config, progress=progress)
        return self

    def _fit_cyclegan(
        self, a: list[np.ndarray], b: list[np.ndarray], *, config: Any, progress: bool
    ) -> None:
        from medgen.generative.engine import EngineConfig, fit_objective
        from medgen.generative.objectives._common import foreground_slices, unit_range
        from medgen.generative.objectives.unpaired import CycleGANObjective

        if isinstance(config, EngineConfig):
            ec = config
        else:
            ec = EngineConfig.from_dict({**TRAIN_DEFAULTS, **dict(config or {})})

        def pool(images: list[np.ndarray]) -> list[np.ndarray]:
            out: list[np.ndarray] = []
            for x in images:
                u = unit_range(x, NORM_PERCENTILES)
                out.extend(foreground_slices(u) if self.spatial_dims == 2 else [u])
            return out

        objective = CycleGANObjective(pool(a), pool(b), config=self.cyclegan_config())
        result = fit_objective(objective, config=ec, progress=progress)
        nets = result.inference_networks()
        self._nets = {"g_ab": nets["g_ab"].eval(), "g_ba": nets["g_ba"].eval()}
        self.record_training(result, train_config=ec, data_hash=self.data_hash)

    # ------------------------------------------------------------------ applying
    def translate_scaled(self, scaled: np.ndarray) -> np.ndarray:
        """Translate an image already scaled to its robust range (0..1); same shape. The
        result is clipped to the input's own range (``[min(scaled.min(), 0),
        max(scaled.max(), 1)]``), so a translation never leaves the units' span it came in."""
        low, high = min(float(scaled.min()), 0.0), max(float(scaled.max()), 1.0)
        return np.clip(self._translate(scaled), low, high).astype(np.float32)

    def _translate(self, scaled: np.ndarray) -> np.ndarray:
        if self.model == "histogram":
            from skimage.exposure import match_histograms

            ref = self._buffer()
            fg = foreground_mask(scaled)
            out = scaled.astype(np.float64)
            if fg.any():
                out[fg] = match_histograms(scaled[fg].astype(np.float64), ref)
            return out.astype(np.float32)
        if self.model == "nyul":
            return _nyul_apply(scaled, self._buffer())
        return self._cyclegan_apply(scaled)

    def _cyclegan_apply(self, scaled: np.ndarray) -> np.ndarray:
        import torch

        g = self._nets["g_ab"]
        k = 2 ** (len(self.cyclegan_config().channels) - 1)
        pads = [(0, (-s) % k) for s in scaled.shape]
        x = np.pad(scaled, pads, mode="reflect") if any(p for _, p in pads) else scaled
        dev = next(g.parameters()).device
        with torch.no_grad():
            y = g(torch.from_numpy(np.ascontiguousarray(x, np.float32))[None, None].to(dev))
        out = y.image[0, 0].float().cpu().numpy()
        return np.asarray(out[tuple(slice(0, s) for s in scaled.shape)])

    def apply(self, image: Any) -> Any:
        """Translate one image from the source's appearance to the target's.

        Args:
            image: a :class:`monai.data.MetaTensor` (one channel, as :func:`medgen.io.load`
                gives), a tensor or an array ``(X, Y[, Z])``, in its own units (any range, CT
                HU included).

        Returns:
            The input's type and shape, float32, in the input's units (scaled back through its
            robust range, within the input's min..max span); a MetaTensor keeps its affine and meta, with
            ``meta["translation"]`` naming the model, source and target.

        Raises:
            MedgenValueError: not fitted; a 3D image for a 2D ``"cyclegan"`` (apply it slice
                by slice), or a 2D image for a 3D one.
        """
        import torch

        from medgen.generative._restorer import as_spatial

        if not self.fitted:
            raise MedgenValueError(
                "Translator.apply: the translator is not fitted; call fit(cohort) first or "
                "load a fitted one with medgen.generative.load(run_dir)."
            )
        arr, _, _ = as_spatial(image, "image")
        if self.model == "cyclegan" and arr.ndim != self.spatial_dims:
            raise MedgenValueError(
                f"Translator.apply: this cyclegan translator works on {self.spatial_dims}D "
                f"images, got a {arr.ndim}D image of shape {arr.shape}; "
                + (
                    "apply it slice by slice (image[..., k])."
                    if self.spatial_dims == 2
                    else "train with spatial_dims=2 for 2D images."
                )
            )
        lo, hi = robust_range(arr)
        out = (lo + self.translate_scaled((arr - lo) / (hi - lo)) * (hi - lo)).astype(np.float32)
        if isinstance(image, torch.Tensor):
            from monai.data import MetaTensor

            t = torch.from_numpy(out).reshape(image.shape)
            if isinstance(image, MetaTensor):
                meta = {k: v for k, v in image.meta.items() if k != "affine"}
                res = MetaTensor(t, affine=image.affine.clone(), meta=meta)
                res.meta["translation"] = {
                    "model": self.model,
                    "source": self.source,
                    "target": self.target,
                }
                return res
            return t
        return out.reshape(np.shape(image))


def _nyul_landmarks(images: list[np.ndarray], paths: Sequence[str] | None) -> np.ndarray:
    """TorchIO ``HistogramStandardization.train`` landmarks of the target images (foreground
    masks), mapped from TorchIO's standard scale (0..100) onto the target's scaled units (the
    mean per-image affine map of that scale to the robust range)."""
    import tempfile
    from pathlib import Path

    import nibabel as nib
    import torchio as tio
    from torchio.transforms.preprocessing.intensity.histogram_standardization import (
        STANDARD_RANGE,
    )

    with tempfile.TemporaryDirectory() as tmp:
        if (
            paths is None
            or len(paths) != len(images)
            or not all(p.endswith((".nii", ".nii.gz")) for p in paths)
        ):
            paths = []
            for i, x in enumerate(images):
                p = Path(tmp) / f"{i}.nii.gz"
                nib.save(nib.Nifti1Image(x, np.eye(4)), p)
                paths.append(str(p))
        landmarks = tio.HistogramStandardization.train(
            list(paths), masking_function=lambda t: _tio_mask(t, scale=True), progress=False
        )
    s1, s2 = STANDARD_RANGE
    slopes, offsets = [], []
    for x in images:  # standard scale s of image x: s1 + (s2 - s1) (x - p1) / (p99 - p1)
        u = _scaled(x)
        p1, p99 = np.percentile(u[foreground_mask(u)], (1, 99))
        slope = (p99 - p1) / (s2 - s1)
        slopes.append(slope)
        offsets.append(p1 - s1 * slope)
    return np.asarray(landmarks) * float(np.mean(slopes)) + float(np.mean(offsets))


def _nyul_apply(scaled: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """TorchIO ``HistogramStandardization`` of one scaled image onto ``landmarks``."""
    import torch
    import torchio as tio

    data = torch.from_numpy(np.ascontiguousarray(scaled, np.float32)).reshape(
        1, *scaled.shape, *([1] if scaled.ndim == 2 else [])
    )
    subject = tio.Subject(image=tio.ScalarImage(tensor=data))
    transform = tio.HistogramStandardization(
        {"image": landmarks}, masking_method=lambda t: torch.from_numpy(_tio_mask(t, scale=False))
    )
    result: Any = transform(subject)
    out = np.asarray(result["image"].data.numpy())
    return out.reshape(scaled.shape).astype(np.float32)


def _lesion_contrast(img: np.ndarray, lesion: np.ndarray, fg: np.ndarray) -> float:
    """Mean of ``img`` in the lesion minus its mean in the foreground outside a 2-pixel ring."""
    from scipy import ndimage

    ring = ndimage.binary_dilation(lesion, iterations=2)
    background = fg & ~ring
    if not lesion.any() or not background.any():
        return float("nan")
    return float(img[lesion].mean() - img[background].mean())


def evaluate_translation(
    translator: Translator, cohort: Any, *, n: int | None = None, split: str = "test"
) -> pd.DataFrame:
    """Score ``translator`` against the counterfactual truth of a simulated cohort.

    For each ``split`` image of the translator's source that has a counterfactual rendered at
    its target (``simulate(..., counterfactual=("site",))``): the source image (``"identity"``,
    no change) and its translation (``translator.model``), each scaled to its robust range, are
    compared with the truth (scaled likewise) inside the truth's :func:`foreground_mask`:
    masked PSNR (``skimage.metrics.peak_signal_noise_ratio``, data range 1) and SSIM (mean of
    ``skimage.metrics.structural_similarity``'s map over the mask); with lesion masks
    (``mask_path``), ``lesion_contrast_ratio`` = lesion-to-surround contrast of the output over
    that of the truth (1 = preserved; NaN without lesions).

    Args:
        translator: a fitted :class:`Translator`.
        cohort: a :class:`~medgen.cohort.Cohort` or manifest path with ``counterfactual_of``.
        n: score at most the first ``n`` pairs.
        split: the split to score (default ``"test"``).

    Returns:
        A tidy DataFrame, one row per image and method: ``image_id``, ``truth_id``,
        ``subject_id``, ``method``, ``psnr``, ``ssim``, ``lesion_contrast_ratio`` and the
        subgroup columns (``sex``, ``age_group``, ``label``) the manifest has.

    Raises:
        MedgenValueError: the cohort has no ``counterfactual_of`` column, or no ``split`` source
            image has a counterfactual at the target; ``n`` is not positive.
    """
    import pandas as pd
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from medgen.cohort import Cohort
    from medgen.generative._restorer import as_spatial
    from medgen.io import load

    if not isinstance(cohort, Cohort):
        cohort = Cohort.from_manifest(cohort)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise MedgenValueError(f"evaluate_translation: n must be a positive integer, not {n!r}.")
    df = cohort.df
    if "counterfactual_of" not in df.columns:
        raise MedgenValueError(
            "evaluate_translation: the cohort has no 'counterfactual_of' column, so there is no "
            "truth to compare with; simulate it with counterfactual=('site',) (CLI: medgen "
            "simulate --counterfactual site)."
        )
    rows = df[df["split"] == split]
    factual = rows[rows["counterfactual_of"].isna()]
    for k, v in translator.source.items():
        factual = factual[factual[k].isin(v if isinstance(v, list | tuple | set) else [v])]
    truths = rows[rows["counterfactual_of"].notna()].drop(columns="mask_path", errors="ignore")
    for k, v in translator.target.items():
        truths = truths[truths[k].isin(v if isinstance(v, list | tuple | set) else [v])]
    pairs = factual.merge(
        truths[["image_id", "image_path", "counterfactual_of"]].rename(
            columns={"image_id": "truth_id", "image_path": "truth_path"}
        ),
        left_on="image_id",
        right_on="counterfactual_of",
    )
    if pairs.empty:
        raise MedgenValueError(
            f"evaluate_translation: no {split!r}-split image with source={translator.source} "
            f"has a counterfactual with target={translator.target}; simulate the cohort with "
            "counterfactual=('site',)."
        )
    if n is not None:
        pairs = pairs.iloc[:n]
    groups = [c for c in ("sex", "age_group", "label", "site") if c in pairs.columns]
    out = []
    for _, row in pairs.iterrows():
        x = as_spatial(load(row["image_path"]), str(row["image_id"]))[0]
        truth = _scaled(as_spatial(load(row["truth_path"]), str(row["truth_id"]))[0])
        fg = foreground_mask(truth)
        lesion = None
        mp = row.get("mask_path")
        if isinstance(mp, str) and mp:
            lesion = as_spatial(load(mp), "mask")[0] > 0.5
        truth_contrast = _lesion_contrast(truth, lesion, fg) if lesion is not None else np.nan
        for method, img in (("identity", x), (translator.model, translator.apply(x))):
            s = _scaled(np.asarray(img))
            psnr = peak_signal_noise_ratio(truth[fg], s[fg], data_range=1.0)
            win = min(7, *(d if d % 2 else d - 1 for d in s.shape))
            _, smap = structural_similarity(truth, s, data_range=1.0, full=True, win_size=win)
            ratio = (
                _lesion_contrast(s, lesion, fg) / truth_contrast
                if lesion is not None and np.isfinite(truth_contrast) and truth_contrast != 0
                else np.nan
            )
            out.append(
                {
                    "image_id": row["image_id"],
                    "truth_id": row["truth_id"],
                    "subject_id": row["subject_id"],
                    "method": method,
                    "psnr": float(psnr),
                    "ssim": float(np.mean(smap[fg])),
                    "lesion_contrast_ratio": float(ratio),
                    **{g: row[g] for g in groups},
                }
            )
    return pd.DataFrame(out)
