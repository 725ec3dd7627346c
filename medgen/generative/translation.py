"""Image-to-image translation between groups of a cohort (e.g. site harmonisation), and its
evaluation against the simulator's counterfactual truth.

- :class:`Translator`: ``model="histogram"`` (``skimage.exposure.match_histograms`` to the
  pooled foreground intensities of the target's training images), ``"nyul"`` (TorchIO's
  ``HistogramStandardization`` landmarks of the target's training images, Nyul et al. 2000),
  ``"cyclegan"`` (the engine's ``cyclegan`` objective, Zhu et al. 2017) or ``"pix2pix"``
  (the engine's ``paired`` objective with a conditional PatchGAN, Isola et al. 2017, on aligned
  pairs: a ``pair_path`` column or the simulator's ``counterfactual_of`` links); ``fit``,
  ``apply``, ``save`` / :func:`medgen.generative.load` (kind ``"translator"``).
- :func:`evaluate_translation`: masked PSNR / SSIM to the counterfactual truth (the same subject
  rendered at the target site, contrast or severity by ``simulate(..., counterfactual=...)``),
  lesion-contrast preservation, PSNR inside and outside the lesions and, with
  ``target_classifier=True``, the rate at which a classifier of the target attribute trained on
  real images calls the output "target"; for the identity, baselines and the translator.
- :func:`transfer_style`: histogram matching of an image to one reference image (style
  transfer by a reference).
- :func:`counterfactual_score_test`: does a classifier's score rise along a translation
  (e.g. healthy to diseased)?

Intensities: every image is scaled by its own robust range (0.5th..99.5th percentile to 0..1,
as :class:`~medgen.generative.Synthesizer` does), translated in that space and mapped back
through the same range, so an image in any units (MR arbitrary units, CT in HU) comes back in
its own units. The foreground is :func:`foreground_mask` of the scaled image.

See docs/translation.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from medgen._internal.suggest import did_you_mean
from medgen.errors import ConfigError, MedgenValueError
from medgen.generative._model import GenerativeModel, register_model_kind

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd
    from torch import nn

    from medgen.generative.objectives.paired import Pix2PixConfig
    from medgen.generative.objectives.unpaired import CycleGANConfig

__all__ = [
    "MODELS",
    "NORM_PERCENTILES",
    "PAIR_COLUMN",
    "TargetClassifier",
    "Translator",
    "counterfactual_score_test",
    "evaluate_translation",
    "foreground_mask",
    "robust_range",
    "train_target_classifier",
    "transfer_style",
]

#: the translation models
MODELS = ("histogram", "nyul", "cyclegan", "pix2pix")
#: the models with networks trained by the engine
LEARNED = ("cyclegan", "pix2pix")
#: the manifest column naming each source row's aligned target image (pix2pix pairs)
PAIR_COLUMN = "pair_path"
#: columns compared to pick, among a subject's counterfactual renders that match the target,
#: the one that differs from the factual image in the fewest of them
COUNTERFACTUAL_COLUMNS = ("site", "contrast", "severity", "label", "manufacturer")
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
    for k, v in value.items():
        if isinstance(v, Mapping):
            bad = [b for b in v if b not in ("min", "max")]
            nums = [x for x in v.values() if isinstance(x, int | float) and not isinstance(x, bool)]
            if bad or not v or len(nums) != len(v):
                raise ConfigError(
                    f"Translator: {name}[{k!r}] = {dict(v)!r}: a range is a dict with numeric "
                    "'min' and/or 'max' (inclusive), e.g. {'severity': {'min': 0.3, 'max': 0.6}}."
                )
    return {str(k): dict(v) if isinstance(v, Mapping) else v for k, v in value.items()}


def _show(selector: Mapping[str, Any]) -> str:
    """The values of a selector, short: ``site_A``, ``t1,0``, ``0.3..0.6`` for a range."""
    parts = []
    for v in selector.values():
        if isinstance(v, Mapping):
            parts.append(f"{v.get('min', '')}..{v.get('max', '')}")
        else:
            parts.append(str(v))
    return ",".join(parts)


#: a learned model's config dataclass (CycleGANConfig, Pix2PixConfig)
_C = TypeVar("_C")


def _model_config(
    cls: type[_C],
    model: str,
    options: Mapping[str, Any] | None,
    *,
    spatial_dims: int,
    patch_size: int,
) -> _C:
    """``cls`` (a learned model's config dataclass) from the Translator's ``<model>=`` options;
    an unknown option is an error listing the known ones."""
    opts = dict(options or {})
    known = [f.name for f in fields(cls) if f.name not in ("spatial_dims", "patch_size")]  # type: ignore[arg-type]
    for key in opts:
        if key not in known:
            raise ConfigError(
                f"Translator: {model} option {key!r} is unknown; known: {known}."
                f"{did_you_mean(key, known)} (spatial_dims and patch_size are the Translator's "
                "own arguments)."
            )
    return cls(spatial_dims=spatial_dims, patch_size=patch_size, **opts)  # type: ignore[call-arg]


def _matches(df: pd.DataFrame, selector: Mapping[str, Any]) -> pd.Series:
    """Rows of ``df`` matching every ``column: value`` (a list/tuple/set: any of them)."""
    import pandas as pd

    keep = pd.Series(True, index=df.index)
    for k, v in selector.items():
        if isinstance(v, Mapping):  # a range: {"min": a, "max": b}, inclusive
            col = pd.to_numeric(df[k], errors="coerce")
            hit = col.notna()
            if "min" in v:
                hit &= col >= float(v["min"])
            if "max" in v:
                hit &= col <= float(v["max"])
            keep &= hit.fillna(False).astype(bool)
        else:
            keep &= df[k].isin(list(v) if isinstance(v, list | tuple | set) else [v])
    return keep


def _differences(fact: Any, row: Any) -> int:
    out = 0
    for c in COUNTERFACTUAL_COLUMNS:
        if c in fact and c in row and str(fact[c]) != str(row[c]):
            out += 1
    return out


def _counterfactual_pairs(
    df: pd.DataFrame,
    factual: pd.DataFrame,
    target: Mapping[str, Any],
    *,
    split: str | None,
) -> pd.DataFrame:
    """``factual`` rows joined to their counterfactual truth: the counterfactual row (of
    ``split``) of the same image that matches ``target`` and differs from it in the fewest
    :data:`COUNTERFACTUAL_COLUMNS` (the first in manifest order among equals). Adds
    ``truth_id``, ``truth_path``, ``truth_mask_path``."""
    cf = df[df["counterfactual_of"].notna()]
    if split is not None:
        cf = cf[cf["split"] == split]
    missing = [k for k in target if k not in cf.columns]
    if missing:
        return factual.iloc[:0].assign(truth_id=[], truth_path=[], truth_mask_path=[])
    cf = cf[_matches(cf, target)]
    best: dict[Any, Any] = {}
    facts = factual.set_index("image_id", drop=False)
    for _, row in cf.iterrows():
        key = row["counterfactual_of"]
        if key not in facts.index:
            continue
        fact = facts.loc[key]
        d = _differences(fact, row)
        if key not in best or d < _differences(fact, best[key]):
            best[key] = row
    truth = [
        {
            "image_id": key,
            "truth_id": row["image_id"],
            "truth_path": row["image_path"],
            "truth_mask_path": row.get("mask_path"),
        }
        for key, row in best.items()
    ]
    import pandas as pd

    cols = ["image_id", "truth_id", "truth_path", "truth_mask_path"]
    return factual.merge(pd.DataFrame(truth, columns=cols), on="image_id")


def _weights_sha256(nets: Mapping[str, nn.Module]) -> str:
    """SHA-256 of every network's tensors (names, shapes, bytes), in name order."""
    h = hashlib.sha256()
    for name in sorted(nets):
        for key, value in sorted(nets[name].state_dict().items()):
            t = value.detach().cpu().contiguous()
            h.update(f"{name}.{key}{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def _reflect_pad_apply(net: nn.Module, scaled: np.ndarray, k: int) -> np.ndarray:
    """``net`` on the whole image, reflect-padded to a multiple of ``k`` per axis."""
    import torch

    pads = [(0, (-s) % k) for s in scaled.shape]
    x = np.pad(scaled, pads, mode="reflect") if any(p for _, p in pads) else scaled
    dev = next(net.parameters()).device
    with torch.no_grad():
        y = net(torch.from_numpy(np.ascontiguousarray(x, np.float32))[None, None].to(dev))
    out = y.image[0, 0].float().cpu().numpy()
    return np.asarray(out[tuple(slice(0, s) for s in scaled.shape)])


def _sliding_window_apply(
    net: nn.Module, scaled: np.ndarray, patch_size: int, *, overlap: float, sw_batch_size: int
) -> np.ndarray:
    """``net`` over a volume by MONAI's ``sliding_window_inference`` (``patch_size`` cubes,
    Gaussian-weighted blending of the overlaps, reflect padding at the borders)."""
    import torch
    from monai.inferers import sliding_window_inference

    dev = next(net.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(scaled, np.float32))[None, None].to(dev)
    with torch.no_grad():
        y = sliding_window_inference(
            x,
            roi_size=(patch_size,) * scaled.ndim,
            sw_batch_size=sw_batch_size,
            predictor=lambda t: net(t).image,
            overlap=overlap,
            mode="gaussian",
            padding_mode="reflect",
        )
    assert isinstance(y, torch.Tensor)
    return np.asarray(y[0, 0].float().cpu().numpy())


def _quantile_reference(images: Sequence[np.ndarray]) -> np.ndarray:
    """:data:`N_QUANTILES` quantiles of the pooled foreground of the images, each scaled to its
    robust range: the histogram reference."""
    pooled = np.concatenate([_scaled(x)[foreground_mask(_scaled(x))] for x in images])
    if pooled.size == 0:
        pooled = np.concatenate([_scaled(x).ravel() for x in images])
    return np.asarray(np.quantile(pooled, np.linspace(0.0, 1.0, N_QUANTILES)))


def _match_histogram(scaled: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``match_histograms`` of the foreground of ``scaled`` onto ``reference`` (background kept)."""
    from skimage.exposure import match_histograms

    fg = foreground_mask(scaled)
    out = scaled.astype(np.float64)
    if fg.any():
        out[fg] = match_histograms(scaled[fg].astype(np.float64), reference)
    return out.astype(np.float32)


def _as_output(image: Any, out: np.ndarray, info: Mapping[str, Any]) -> Any:
    """``out`` (float32, ``image``'s spatial shape) in ``image``'s type; a MetaTensor keeps its
    affine and meta and gains ``meta["translation"] = info``."""
    import torch

    if isinstance(image, torch.Tensor):
        from monai.data import MetaTensor

        t = torch.from_numpy(np.ascontiguousarray(out)).reshape(image.shape)
        if isinstance(image, MetaTensor):
            meta = {k: v for k, v in image.meta.items() if k != "affine"}
            res = MetaTensor(t, affine=image.affine.clone(), meta=meta)
            res.meta["translation"] = dict(info)
            return res
        return t
    return out.reshape(np.shape(image))


def transfer_style(image: Any, reference: Any) -> Any:
    """Give ``image`` the intensity style of one ``reference`` image: histogram matching
    (``skimage.exposure.match_histograms``) of the image's foreground onto the reference's
    foreground, each scaled to its robust range (0.5th..99.5th percentile), the result mapped
    back into the image's own units (clipped to its span).

    Args:
        image: the image to restyle: a one-channel MetaTensor, a tensor or an array
            ``(X, Y[, Z])``, in its own units.
        reference: the image whose style to take (same kinds; any shape and units).

    Returns:
        ``image``'s type and shape, float32; a MetaTensor keeps its affine and meta, with
        ``meta["translation"] = {"model": "reference-histogram"}``.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = rng.gamma(2.0, 1.0, (32, 32))
        >>> ref = 500 - 40 * rng.gamma(2.0, 1.0, (32, 32))
        >>> transfer_style(x, ref).shape
        (32, 32)
    """
    from medgen.generative._restorer import as_spatial

    arr, _, _ = as_spatial(image, "image")
    ref, _, _ = as_spatial(reference, "reference")
    quantiles = _quantile_reference([ref])
    lo, hi = robust_range(arr)
    u = (arr - lo) / (hi - lo)
    low, high = min(float(u.min()), 0.0), max(float(u.max()), 1.0)
    out = lo + np.clip(_match_histogram(u, quantiles), low, high) * (hi - lo)
    return _as_output(image, out.astype(np.float32), {"model": "reference-histogram"})


@register_model_kind("translator")
class Translator(GenerativeModel):
    """Translate images of one group of a cohort (``source``) into the appearance of another
    (``target``), e.g. site A to site B.

    Args:
        model: ``"histogram"``, ``"nyul"``, ``"cyclegan"`` or ``"pix2pix"`` (see the module
            docstring).
        source, target: selectors, dicts of manifest column -> value (a list means any of the
            values; a dict ``{"min": a, "max": b}`` an inclusive range of a numeric column),
            e.g. ``{"site": "site_A"}``, ``{"contrast": "t2"}``, ``{"label": 1}`` (disease
            progression) or ``{"severity": {"min": 0.3, "max": 0.6}}`` (a severity bin); :meth:`fit` trains on the training-split rows each selects,
            never on counterfactual rows, except that ``"pix2pix"`` (paired training, asked
            for by choosing it) takes each source row's target image from its
            :data:`PAIR_COLUMN` or from its counterfactual render that matches ``target``.
        spatial_dims: 2 or 3: what the learned models train on and apply to (2: the foreground
            slices of volumes for training; a volume at :meth:`apply` only with
            ``slices=True``; 3: patches of volumes, applied by sliding-window inference). The
            baselines work on any image.
        patch_size: training patch edge of the learned models (pixels/voxels), divisible by
            ``2**(len(channels)-1)``; images must be at least this large; the sliding window
            of 3D inference.
        cyclegan: other :class:`~medgen.generative.objectives.unpaired.CycleGANConfig` options
            (``channels``, ``num_res_units``, ``cycle_weight``, ...).
        pix2pix: other :class:`~medgen.generative.objectives.paired.Pix2PixConfig` options
            (``channels``, ``l1_weight``, ``mse_weight``, ``adv_weight``, ``lr_g``,
            ``detail_weight`` / ``detail_sigma``: an L1 weighted by the target's local
            contrast, ``lesion_weight``: by the training rows' lesion masks, ...). An option
            missing from a saved model's ``config.json`` (a run made before it existed) takes
            its default, the behaviour of that time.

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
        pix2pix: Mapping[str, Any] | None = None,
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
        self.pix2pix_options = dict(pix2pix or {})
        self._nets: dict[str, nn.Module] = {}
        if model == "pix2pix":
            from medgen.generative.objectives.paired import build_pix2pix_networks

            self._nets = {"generator": build_pix2pix_networks(self.pix2pix_config())["generator"]}
            self._nets["generator"].eval()
        elif model == "cyclegan":
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
        from medgen.generative.objectives.unpaired import CycleGANConfig

        return _model_config(
            CycleGANConfig, "cyclegan", self.cyclegan_options,
            spatial_dims=self.spatial_dims, patch_size=self.patch_size,
        )  # fmt: skip

    def pix2pix_config(self) -> Pix2PixConfig:
        """The :class:`~medgen.generative.objectives.paired.Pix2PixConfig` of this model."""
        from medgen.generative.objectives.paired import Pix2PixConfig

        return _model_config(
            Pix2PixConfig, "pix2pix", self.pix2pix_options,
            spatial_dims=self.spatial_dims, patch_size=self.patch_size,
        )  # fmt: skip

    def _downsampling(self) -> int:
        cfg = self.cyclegan_config() if self.model == "cyclegan" else self.pix2pix_config()
        return int(2 ** (len(cfg.channels) - 1))

    def networks(self) -> dict[str, nn.Module]:
        return dict(self._nets)

    @property
    def weights_sha256(self) -> str:
        """SHA-256 of the model's tensors (the fitted arrays of a baseline, the generators of a
        learned model): names the exact model that made an output."""
        return _weights_sha256(self._nets)

    @property
    def description(self) -> str:
        """One line naming the model for DICOM DerivationDescription / NIfTI ``descrip`` (at
        most 64 characters), e.g. ``"medgen translator pix2pix 2D site_A->site_B w=1f2e3d4c5b6a"``:
        kind, model, dimensions, source and target values, the first 12 hex digits of
        :attr:`weights_sha256`."""

        head = f"medgen translator {self.model} {self.spatial_dims}D"
        tail = f"w={self.weights_sha256[:12]}"
        room = 64 - len(head) - len(tail) - 2
        groups = f"{_show(self.source)}->{_show(self.target)}"
        if len(groups) > room:
            groups = groups[: max(room - 1, 0)] + "~"
        return f"{head} {groups} {tail}"

    def model_config(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "source": self.source,
            "target": self.target,
            "spatial_dims": self.spatial_dims,
            "patch_size": self.patch_size,
            "cyclegan": self.cyclegan_options,
            "pix2pix": self.pix2pix_options,
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
            pix2pix=config.get("pix2pix") or None,
        )

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` (or a load of a fitted model) gave it its mapping."""
        if self.model in LEARNED:
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
    def _rows(
        self, cohort: Any, selector: Mapping[str, Any], name: str, *, allow_all: bool = False
    ) -> Any:
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
        plain = {k: v for k, v in selector.items() if not isinstance(v, Mapping)}
        ranges = {k: v for k, v in selector.items() if isinstance(v, Mapping)}
        sub = train.select(**plain)
        if ranges:
            ids = list(sub.df.loc[_matches(sub.df, ranges), "image_id"])
            sub = train.select(image_id=ids)
        if len(sub.df) == 0:
            raise MedgenValueError(
                f"Translator.fit: {name}={selector} matches no training-split rows (of "
                f"{len(train.df)}); values present: "
                + ", ".join(f"{k}: {sorted(map(str, df[k].dropna().unique()))}" for k in selector)
                + "."
            )
        if len(sub.df) == len(train.df) and not allow_all:
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
        resume: bool = False,
    ) -> Translator:
        """Fit on the training split of ``cohort`` (a :class:`~medgen.cohort.Cohort` or a
        manifest path): ``source`` rows and ``target`` rows (``counterfactual_of`` rows are
        never used).

        ``"pix2pix"`` trains on aligned pairs instead: each factual training row of the source
        with the image named by its :data:`PAIR_COLUMN` (``pair_path``, relative to the
        manifest's folder) when the manifest has that column, otherwise with its
        counterfactual render (``counterfactual_of``, training split) that matches ``target``
        (the one differing from it in the fewest of site, contrast, severity, label,
        manufacturer). Choosing pix2pix is asking for paired training: only then does a fit
        see counterfactual renders, and only those of training subjects.

        Args:
            cohort: the cohort.
            run_dir: save the fitted model there (a new or empty folder; ``overwrite`` to
                replace a model). A learned model trains there as an engine run: its
                ``checkpoint.pt``, ``train_state.json`` and ``metrics.csv`` stay beside the
                model, holding the folder's lock throughout.
            resume: continue the interrupted (or finished) training run of a learned model in
                ``run_dir``: the same options and data (checked), continuing bitwise; more
                ``epochs`` or another ``time_budget_s`` train a finished run longer.
            config: engine options of ``"cyclegan"`` (an :class:`EngineConfig` or a dict
                overriding :data:`TRAIN_DEFAULTS`); ignored by the baselines.
            progress: show the engine's progress bar.

        Raises:
            MedgenValueError: a selector names a missing column, or matches no training row or
                every one; the two selectors share rows; pix2pix: no pairs, or a pair whose
                images differ in shape or affine (paired training needs the same voxel grid).
        """
        from pathlib import Path

        from medgen.cohort import Cohort

        if resume and self.model not in LEARNED:
            raise ConfigError(
                f"Translator.fit: resume (CLI --resume) continues the training run of a learned "
                f"model (cyclegan, pix2pix); model {self.model!r} has no training to resume. "
                "Fit it again instead."
            )
        if resume and run_dir is None:
            raise ConfigError(
                "Translator.fit: resume=True needs the run_dir of the run to continue."
            )
        if not isinstance(cohort, Cohort):
            cohort = Cohort.from_manifest(cohort)
        if run_dir is None or self.model not in LEARNED:
            a, b, paths, masks = self._training_images(cohort)
            self.fit_images(
                a, b, config=config, progress=progress, _target_paths=paths, _masks=masks
            )
            if run_dir is not None:
                self.save(run_dir, overwrite=overwrite)
            return self
        from medgen._internal.runs import run_lock
        from medgen.generative._run import OWNED, check_training, prepare_training

        rd = Path(run_dir).expanduser()
        what = "translator training run"
        check_training(rd, resume=resume, overwrite=overwrite, what=what)
        a, b, paths, masks = self._training_images(cohort)
        with run_lock(rd, what=what, owned=OWNED):

            def prepare() -> None:
                prepare_training(rd, resume=resume, overwrite=overwrite, what=what)

            early = not resume or overwrite
            if early:
                prepare()
            run = {"run_dir": rd, "resume": resume, "prepare": None if early else prepare}
            self.fit_images(
                a, b, config=config, progress=progress, _target_paths=paths, _run=run,
                _masks=masks,
            )  # fmt: skip
            self._write_model(rd)  # weights, config.json, then run_complete.json
        return self

    def _training_images(
        self, cohort: Any
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[str] | None, list[np.ndarray] | None]:
        """``(source images, target images, target paths, lesion masks)`` that :meth:`fit`
        trains on: the selected factual training rows, or pix2pix's aligned pairs (with their
        lesion masks when a lesion term (``Pix2PixConfig.needs_masks``) is on, else ``None``)."""
        from medgen.generative._restorer import load_images

        if self.model == "pix2pix":
            pa, pb, masks = self._pairs(cohort)
            return pa, pb, None, masks
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
        return a, b, [str(p) for p in tgt.paths], None

    def _pairs(
        self, cohort: Any
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray] | None]:
        """The aligned (source, target) training pairs of ``cohort`` (see :meth:`fit`) and,
        when a pix2pix lesion term is on (``Pix2PixConfig.needs_masks``), each pair's lesion mask: the union of the
        ``mask_path`` masks of the source training row and of its counterfactual target row
        (training rows only; all zeros where a row has none)."""
        from pathlib import Path

        from medgen.errors import MedgenFileNotFoundError
        from medgen.generative._restorer import as_spatial
        from medgen.io import load

        df = cohort.df
        has_column = PAIR_COLUMN in df.columns
        sdf = self._rows(cohort, self.source, "source", allow_all=has_column).df
        items: list[tuple[str, Any, str, Any]] = []
        mask_paths: list[tuple[Any, Any]] = []
        if has_column:
            col = sdf[PAIR_COLUMN]
            sdf = sdf[col.notna() & (col.astype(str).str.strip() != "")]
            if sdf.empty:
                raise MedgenValueError(
                    f"Translator.fit: pix2pix: the {PAIR_COLUMN!r} column is empty on every "
                    f"training-split row with source={self.source}; give each source row the "
                    "path of its aligned target image there."
                )
            root = Path(cohort.root) if cohort.root is not None else None
            for _, row in sdf.iterrows():
                path = Path(str(row[PAIR_COLUMN])).expanduser()
                if not path.is_absolute() and root is not None:
                    path = root / path
                if not path.exists():
                    raise MedgenFileNotFoundError(
                        f"Translator.fit: {PAIR_COLUMN} of image {row['image_id']!r} is "
                        f"{str(path)!r}, which does not exist; fix the manifest's "
                        f"{PAIR_COLUMN!r} column (paths relative to the manifest's folder)."
                    )
                iid = str(row["image_id"])
                items.append((iid, row["image_path"], f"{PAIR_COLUMN} of {iid}", path))
                mask_paths.append((row.get("mask_path"), None))
        elif "counterfactual_of" in df.columns:
            pairs = _counterfactual_pairs(df, sdf, self.target, split="train")
            if pairs.empty:
                raise MedgenValueError(
                    f"Translator.fit: pix2pix: no training-split image with source="
                    f"{self.source} has a counterfactual render with target={self.target}; "
                    "simulate the cohort with the counterfactual of the target's attribute "
                    "(counterfactual=('site',), ('contrast',) or ('severity',)) or give the "
                    f"pairs in a {PAIR_COLUMN!r} column."
                )
            for _, row in pairs.iterrows():
                items.append(
                    (
                        str(row["image_id"]),
                        row["image_path"],
                        str(row["truth_id"]),
                        row["truth_path"],
                    )
                )
                mask_paths.append((row.get("mask_path"), row.get("truth_mask_path")))
        else:
            raise MedgenValueError(
                "Translator.fit: pix2pix trains on aligned pairs, and the manifest has neither a "
                f"{PAIR_COLUMN!r} column (each source row's target image) nor counterfactual "
                "renders (a 'counterfactual_of' column); add one, or use model='cyclegan' for "
                "unpaired training."
            )
        a, b = [], []
        for sid, spath, tid, tpath in items:
            x, xa, _ = as_spatial(load(spath), f"image {sid}")
            y, ya, _ = as_spatial(load(tpath), str(tid))
            if x.shape != y.shape:
                raise MedgenValueError(
                    f"Translator.fit: paired training needs aligned pairs, but source image "
                    f"{sid!r} has shape {x.shape} and its target {tid!r} ({tpath}) has shape "
                    f"{y.shape}; resample the target onto the source's grid or fix the pair "
                    f"({PAIR_COLUMN!r} / counterfactual_of)."
                )
            if xa is not None and ya is not None and not np.allclose(xa, ya, atol=1e-3):
                raise MedgenValueError(
                    f"Translator.fit: paired training needs aligned pairs, but source image "
                    f"{sid!r} and its target {tid!r} have different affines "
                    f"({xa.round(3).tolist()} vs {ya.round(3).tolist()}); resample the target "
                    "onto the source's grid first."
                )
            a.append(x)
            b.append(y)
        if not self.pix2pix_config().needs_masks:
            return a, b, None
        masks = []
        for x, (ms, mt) in zip(a, mask_paths, strict=True):
            m = np.zeros(x.shape, dtype=bool)
            for path in (ms, mt):
                lesion = _load_mask(path)
                if lesion is not None and lesion.shape != x.shape:
                    raise MedgenValueError(
                        f"Translator.fit: pix2pix lesion_weight: the lesion mask {path} has "
                        f"shape {lesion.shape}, its image {x.shape}; fix the 'mask_path' column."
                    )
                if lesion is not None:
                    m |= lesion
            masks.append(m)
        if not any(m.any() for m in masks):
            from medgen.generative.objectives.paired import LESION_TERMS

            raise MedgenValueError(
                f"Translator.fit: pix2pix lesion terms ({', '.join(LESION_TERMS)} > 0) train on "
                "the training rows' lesion masks, but no training pair has one (manifest column "
                "'mask_path'); add the masks or use detail_weight, which needs none."
            )
        return a, b, masks

    def fit_images(
        self,
        source_images: Sequence[Any],
        target_images: Sequence[Any],
        *,
        config: Any = None,
        progress: bool = False,
        _target_paths: Sequence[str] | None = None,
        _run: Mapping[str, Any] | None = None,
        _masks: Sequence[np.ndarray] | None = None,
    ) -> Translator:
        """Fit on two lists of images (arrays ``(X, Y[, Z])`` in their own units); for
        ``"pix2pix"`` the lists are aligned pairs (``target_images[i]`` is ``source_images[i]``
        in the target's appearance, on the same grid). pix2pix's ``lesion_weight`` needs the
        lesion masks, which only :meth:`fit` reads (from the training rows' ``mask_path``)."""
        from medgen.generative._restorer import as_spatial

        a = [as_spatial(im, f"source_images[{i}]")[0] for i, im in enumerate(source_images)]
        b = [as_spatial(im, f"target_images[{i}]")[0] for i, im in enumerate(target_images)]
        if not a or not b:
            raise MedgenValueError(
                "Translator.fit: source and target each need at least one image; got "
                f"{len(a)} and {len(b)}."
            )
        if self.model == "pix2pix":
            if len(a) != len(b):
                raise MedgenValueError(
                    f"Translator.fit: pix2pix trains on pairs, but source_images has {len(a)} "
                    f"images and target_images {len(b)}; give one target per source image."
                )
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                if x.shape != y.shape:
                    raise MedgenValueError(
                        f"Translator.fit: paired training needs aligned pairs, but "
                        f"source_images[{i}] has shape {x.shape} and target_images[{i}] "
                        f"{y.shape}; resample one onto the other's grid."
                    )
        h = hashlib.sha256()
        for tag, imgs in (("a", a), ("b", b)):
            for i, arr in enumerate(imgs):
                h.update(f"{tag}{i}{arr.shape}".encode())
                h.update(np.ascontiguousarray(arr).tobytes())
        if self.model == "pix2pix" and self.pix2pix_config().needs_masks:
            if _masks is None:
                from medgen.generative.objectives.paired import LESION_TERMS

                raise ConfigError(
                    f"Translator.fit_images: pix2pix lesion terms ({', '.join(LESION_TERMS)} "
                    "> 0) need lesion masks, which "
                    "fit(cohort) reads from the training rows' 'mask_path' column; call fit, or "
                    "use detail_weight (no masks needed)."
                )
            for i, m in enumerate(_masks):  # the masks shape the training: part of the data
                h.update(f"m{i}".encode())
                h.update(np.ascontiguousarray(m).tobytes())
        self.data_hash = h.hexdigest()
        if self.model == "histogram":
            self._nets = {"state": _state_module({"reference": _quantile_reference(b)})}
        elif self.model == "nyul":
            self._nets = {"state": _state_module({"landmarks": _nyul_landmarks(b, _target_paths)})}
        elif self.model == "pix2pix":
            self._fit_pix2pix(a, b, config=config, progress=progress, run=_run, masks=_masks)
        else:
            self._fit_cyclegan(a, b, config=config, progress=progress, run=_run)
        return self

    def _run_engine(
        self, objective: Any, ec: Any, *, progress: bool, run: Mapping[str, Any] | None
    ) -> Any:
        """The engine on ``objective``: in memory, or as the run in ``run["run_dir"]`` whose
        lock the caller holds (checkpoints, ``resume``)."""
        from medgen.generative.engine import fit_objective, run_objective

        if run is None:
            return fit_objective(objective, config=ec, progress=progress)
        info = {"kind": "translator", "model": self.model_config(), "data_sha256": self.data_hash}
        return run_objective(
            objective,
            config=ec,
            run_dir=run["run_dir"],
            resume=bool(run["resume"]),
            run_info=json.loads(json.dumps(info, default=list)),
            progress=progress,
            prepare=run.get("prepare"),
        )

    def _engine_config(self, config: Any) -> Any:
        from medgen.generative.engine import EngineConfig

        if isinstance(config, EngineConfig):
            return config
        return EngineConfig.from_dict({**TRAIN_DEFAULTS, **dict(config or {})})

    def _fit_pix2pix(
        self,
        a: list[np.ndarray],
        b: list[np.ndarray],
        *,
        config: Any,
        progress: bool,
        run: Mapping[str, Any] | None = None,
        masks: Sequence[np.ndarray] | None = None,
    ) -> None:
        import torch

        from medgen.generative.objectives._common import foreground_slice_indices, unit_range
        from medgen.generative.objectives.paired import (
            PairedObjective,
            build_pix2pix_networks,
            paired_patches,
        )

        ec = self._engine_config(config)
        cfg = self.pix2pix_config()
        pairs: list[tuple[np.ndarray, ...]] = []
        use_masks = masks is not None and cfg.needs_masks
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            ux, uy = unit_range(x, NORM_PERCENTILES), unit_range(y, NORM_PERCENTILES)
            extra = (masks[i].astype(np.float32),) if use_masks and masks is not None else ()
            if self.spatial_dims == 2 and ux.ndim == 3:  # the source's foreground slices
                pairs.extend(
                    (ux[..., k], uy[..., k], *(e[..., k] for e in extra))
                    for k in foreground_slice_indices(ux)
                )
            else:
                pairs.append((ux, uy, *extra))
        for i, (ux, *_) in enumerate(pairs):
            if ux.ndim != self.spatial_dims or min(ux.shape) < cfg.patch_size:
                raise MedgenValueError(
                    f"Translator.fit: pair {i}: expected {self.spatial_dims}D images of at least "
                    f"{cfg.patch_size} pixels per axis (patch_size), got shape {ux.shape}; "
                    "lower patch_size or choose spatial_dims to match the images."
                )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(ec.seed))
            nets = build_pix2pix_networks(cfg)
        seed, bs = int(ec.seed), int(ec.batch_size)

        def sample_batch(step: int) -> dict[str, torch.Tensor]:
            rng = np.random.default_rng([seed, step])
            return paired_patches(pairs, bs, cfg.patch_size, rng)

        objective = PairedObjective(
            nets["generator"], sample_batch, config=cfg, discriminator=nets["discriminator"]
        )
        result = self._run_engine(objective, ec, progress=progress, run=run)
        self._nets = {"generator": result.inference_networks()["generator"].eval()}
        self.record_training(result, train_config=ec, data_hash=self.data_hash)

    def _fit_cyclegan(
        self,
        a: list[np.ndarray],
        b: list[np.ndarray],
        *,
        config: Any,
        progress: bool,
        run: Mapping[str, Any] | None = None,
    ) -> None:
        from medgen.generative.objectives._common import foreground_slices, unit_range
        from medgen.generative.objectives.unpaired import CycleGANObjective

        ec = self._engine_config(config)

        def pool(images: list[np.ndarray]) -> list[np.ndarray]:
            out: list[np.ndarray] = []
            for x in images:
                u = unit_range(x, NORM_PERCENTILES)
                out.extend(foreground_slices(u) if self.spatial_dims == 2 else [u])
            return out

        objective = CycleGANObjective(pool(a), pool(b), config=self.cyclegan_config())
        result = self._run_engine(objective, ec, progress=progress, run=run)
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

    def _translate(
        self, scaled: np.ndarray, *, overlap: float = 0.25, sw_batch_size: int = 4
    ) -> np.ndarray:
        if self.model == "histogram":
            return _match_histogram(scaled, self._buffer())
        if self.model == "nyul":
            return _nyul_apply(scaled, self._buffer())
        net = self._nets["g_ab" if self.model == "cyclegan" else "generator"]
        if self.spatial_dims == 3:
            return _sliding_window_apply(
                net, scaled, self.patch_size, overlap=overlap, sw_batch_size=sw_batch_size
            )
        if scaled.ndim == 3:  # a volume, slice by slice (apply(slices=True))
            return np.stack(
                [
                    _reflect_pad_apply(net, scaled[..., k], self._downsampling())
                    for k in range(scaled.shape[-1])
                ],
                axis=-1,
            )
        return _reflect_pad_apply(net, scaled, self._downsampling())

    def _cyclegan_apply(self, scaled: np.ndarray) -> np.ndarray:
        return _reflect_pad_apply(self._nets["g_ab"], scaled, self._downsampling())

    def apply(
        self,
        image: Any,
        *,
        slices: bool = False,
        reference: Any = None,
        overlap: float = 0.25,
        sw_batch_size: int = 4,
    ) -> Any:
        """Translate one image from the source's appearance to the target's.

        Args:
            image: a :class:`monai.data.MetaTensor` (one channel, as :func:`medgen.io.load`
                gives), a tensor or an array ``(X, Y[, Z])``, in its own units (any range, CT
                HU included).
            slices: allow a 2D learned model (``spatial_dims=2``) to translate a volume slice
                by slice along its last axis (every slice scaled by the volume's robust
                range). Without it a volume is refused: a 2D model never saw the third axis.
            reference: style transfer by a reference image (``model="histogram"`` only): match
                the image's foreground histogram to this image's instead of the fitted target's
                (:func:`transfer_style`); needs no fit.
            overlap, sw_batch_size: sliding-window inference of a 3D learned model
                (``monai.inferers.sliding_window_inference`` over ``patch_size`` cubes,
                Gaussian blending).

        Returns:
            The input's type and shape, float32, in the input's units (scaled back through its
            robust range, within the input's min..max span); a MetaTensor keeps its affine and meta, with
            ``meta["translation"]`` naming the model, source and target.

        Raises:
            MedgenValueError: not fitted; a 3D image for a 2D learned model without
                ``slices=True``, or a 2D image for a 3D one.
            ConfigError: ``reference`` with a model other than ``"histogram"``.
        """
        from medgen.generative._restorer import as_spatial

        if reference is not None:
            if self.model != "histogram":
                raise ConfigError(
                    f"Translator.apply: reference= (style transfer by a reference image) is "
                    f"histogram matching, for model='histogram', not {self.model!r}; use "
                    "medgen.generative.translation.transfer_style(image, reference)."
                )
            out = transfer_style(image, reference)
            if hasattr(out, "meta"):
                out.meta["translation"] = {
                    "model": "histogram",
                    "source": self.source,
                    "target": self.target,
                    "reference": True,
                }
            return out
        if not self.fitted:
            raise MedgenValueError(
                "Translator.apply: the translator is not fitted; call fit(cohort) first or "
                "load a fitted one with medgen.generative.load(run_dir)."
            )
        arr, _, _ = as_spatial(image, "image")
        sliced = self.spatial_dims == 2 and arr.ndim == 3 and slices
        if self.model in LEARNED and arr.ndim != self.spatial_dims and not sliced:
            raise MedgenValueError(
                f"Translator.apply: this {self.model} translator works on "
                f"{self.spatial_dims}D images, got a {arr.ndim}D image of shape {arr.shape}; "
                + (
                    "pass slices=True to apply it slice by slice along the last axis "
                    "(image[..., k])."
                    if self.spatial_dims == 2
                    else "train with spatial_dims=2 for 2D images."
                )
            )
        lo, hi = robust_range(arr)
        u = (arr - lo) / (hi - lo)
        low, high = min(float(u.min()), 0.0), max(float(u.max()), 1.0)
        y = np.clip(self._translate(u, overlap=overlap, sw_batch_size=sw_batch_size), low, high)
        out = (lo + y * (hi - lo)).astype(np.float32)
        info = {"model": self.model, "source": self.source, "target": self.target}
        return _as_output(image, out, info)


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


def _psnr(truth: np.ndarray, img: np.ndarray) -> float:
    """PSNR (data range 1) of ``img`` to ``truth`` (1D arrays of the same pixels), capped at
    100 dB (identical pixels); NaN for no pixels."""
    if truth.size == 0:
        return float("nan")
    mse = float(np.mean((truth.astype(np.float64) - img.astype(np.float64)) ** 2))
    return float(10.0 * np.log10(1.0 / max(mse, 1e-10)))


def _scaled_on(arr: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``arr`` scaled by the robust range of its pixels in ``region`` (the whole image when
    ``region`` is empty): with ``region`` the lesion-free pixels, lesions that come or go do not
    change the scale of the anatomy."""
    from medgen.generative._restorer import robust_range as percentile_range

    lo, hi = percentile_range(arr[region] if region.any() else arr, NORM_PERCENTILES)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def _load_mask(path: Any) -> np.ndarray | None:
    from medgen.generative._restorer import as_spatial
    from medgen.io import load

    if not isinstance(path, str) or not path:
        return None
    return as_spatial(load(path), "mask")[0] > 0.5


class TargetClassifier:
    """A classifier of "source or target?" trained on real (factual) training images: the
    small MONAI DenseNet of the synthesis evaluation (:mod:`medgen.generative._synth_eval`) on
    images scaled to their robust range. :func:`train_target_classifier` makes one;
    :meth:`predict` gives P(target).

    Attributes:
        accuracy: its accuracy on the factual ``val`` images of the two groups (NaN without).
        n_train: training images (source + target).
        sha256: SHA-256 of its weights.
    """

    def __init__(self, clf: Any, *, accuracy: float, n_train: int, spatial_dims: int) -> None:
        self._clf = clf
        self.accuracy = float(accuracy)
        self.n_train = int(n_train)
        self.spatial_dims = int(spatial_dims)

    @property
    def sha256(self) -> str:
        """SHA-256 of the classifier's weights."""
        return str(self._clf.sha256)

    def predict(self, scaled: Sequence[np.ndarray]) -> np.ndarray:
        """P(target) of images scaled to their robust range (all of one shape), ``(N,)``."""
        import torch

        x = torch.from_numpy(np.stack([np.asarray(a, np.float32) for a in scaled])[:, None])
        return np.asarray(self._clf.predict(x)["target"][:, 1])

    def __repr__(self) -> str:
        return f"TargetClassifier(n_train={self.n_train}, accuracy={self.accuracy:.3f})"


def train_target_classifier(
    cohort: Any,
    source: Mapping[str, Any],
    target: Mapping[str, Any],
    *,
    epochs: int = 30,
    seed: int = 0,
) -> TargetClassifier:
    """Train a :class:`TargetClassifier` on the factual training images of ``source`` (0) and
    ``target`` (1) of ``cohort`` (never on counterfactual renders); its accuracy is measured on
    the factual ``val`` images.

    Raises:
        MedgenValueError: a group has no factual training image, or the images differ in shape
            (the classifier needs one grid).
    """
    from medgen.cohort import Cohort
    from medgen.generative._restorer import as_spatial
    from medgen.generative._synth_eval import train_classifier
    from medgen.io import load

    if not isinstance(cohort, Cohort):
        cohort = Cohort.from_manifest(cohort)
    df = cohort.df
    if "counterfactual_of" in df.columns:
        df = df[df["counterfactual_of"].isna()]

    def images(split: str) -> tuple[list[np.ndarray], list[int]]:
        xs, ys = [], []
        rows = df[df["split"] == split]
        for y, sel in ((0, source), (1, target)):
            for path in rows[_matches(rows, sel)]["image_path"]:
                xs.append(_scaled(as_spatial(load(path), str(path))[0]))
                ys.append(y)
        return xs, ys

    xs, ys = images("train")
    if len(set(ys)) < 2:
        raise MedgenValueError(
            f"train_target_classifier: source={dict(source)} and target={dict(target)} need "
            f"factual training images each; got {ys.count(0)} and {ys.count(1)}."
        )
    shapes = sorted({x.shape for x in xs})
    if len(shapes) > 1:
        raise MedgenValueError(
            f"train_target_classifier: the training images have several shapes {shapes[:3]}; "
            "the classifier needs one grid (resample them first)."
        )
    import torch

    dims = xs[0].ndim
    x = torch.from_numpy(np.stack(xs)[:, None].astype(np.float32))
    clf = train_classifier(
        x, {"target": np.asarray(ys)}, {"target": 2}, spatial_dims=dims, epochs=epochs, seed=seed
    )
    tc = TargetClassifier(clf, accuracy=float("nan"), n_train=len(xs), spatial_dims=dims)
    vx, vy = images("val")
    vx = [v for v in vx if v.shape == shapes[0]]
    if vx and len(vx) == len(vy):
        tc.accuracy = float(np.mean((tc.predict(vx) > 0.5) == np.asarray(vy, bool)))
    return tc


def _methods(
    translator: Translator, baselines: Sequence[Any], cohort: Any
) -> list[tuple[str, Translator | None]]:
    out: list[tuple[str, Translator | None]] = [("identity", None)]
    for b in baselines:
        if isinstance(b, Translator):
            t = b
        elif isinstance(b, str) and b in ("histogram", "nyul"):
            t = Translator(b, source=translator.source, target=translator.target).fit(cohort)
        else:
            raise ConfigError(
                f"evaluate_translation: baselines must hold 'histogram', 'nyul' or fitted "
                f"Translators, not {b!r}.{did_you_mean(str(b), ('histogram', 'nyul'))}"
            )
        if t.model not in [m for m, _ in out] and t.model != translator.model:
            out.append((t.model, t))
    out.append((translator.model, translator))
    return out


#: the fewest foreground pixels of a truth slice that ``evaluate_translation(per_slice=True)``
#: scores (slices at the edge of the head are left out)
MIN_SLICE_FOREGROUND = 16


def _slice(mask: np.ndarray | None, k: int) -> np.ndarray | None:
    return None if mask is None else mask[..., k]


class _TruthScorer:
    """The measures of :func:`evaluate_translation` of any output against one truth image (a
    volume or one of its slices): its foreground, lesion masks and scalings computed once."""

    def __init__(
        self, truth_raw: np.ndarray, src_lesion: np.ndarray | None, lesion: np.ndarray | None
    ) -> None:
        from scipy import ndimage

        self.truth = _scaled(truth_raw)
        self.fg = foreground_mask(self.truth)
        masks = [m for m in (src_lesion, lesion) if m is not None]
        self.union = np.logical_or.reduce(masks) if masks else np.zeros(self.fg.shape, bool)
        self.clear = (
            ~ndimage.binary_dilation(self.union, iterations=2) if self.union.any() else ~self.union
        )
        self.outside = self.fg & self.clear
        self.truth_clear = _scaled_on(truth_raw, self.clear)
        self.lesion = lesion if lesion is not None else np.zeros(self.fg.shape, bool)
        self.truth_contrast = (
            _lesion_contrast(self.truth, self.lesion, self.fg) if self.lesion.any() else np.nan
        )

    def score(self, raw: np.ndarray) -> dict[str, float]:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity

        sc = _scaled(raw)
        sc_clear = _scaled_on(raw, self.clear)
        fg = self.fg
        psnr = peak_signal_noise_ratio(self.truth[fg], sc[fg], data_range=1.0)
        win = min(7, *(d if d % 2 else d - 1 for d in sc.shape))
        _, smap = structural_similarity(self.truth, sc, data_range=1.0, full=True, win_size=win)
        tc = self.truth_contrast
        contrast = _lesion_contrast(sc, self.lesion, fg) if self.lesion.any() else np.nan
        ratio = contrast / tc if np.isfinite(tc) and tc != 0 else np.nan
        return {
            "psnr": float(psnr),
            "ssim": float(np.mean(smap[fg])),
            "lesion_contrast_ratio": float(ratio),
            "lesion_contrast": float(contrast),
            "truth_lesion_contrast": float(tc),
            "psnr_lesion": _psnr(self.truth_clear[self.union], sc_clear[self.union]),
            "psnr_outside": _psnr(self.truth_clear[self.outside], sc_clear[self.outside]),
        }


def evaluate_translation(
    translator: Translator,
    cohort: Any,
    *,
    n: int | None = None,
    split: str = "test",
    baselines: Sequence[Any] = (),
    truth: Mapping[str, Any] | None = None,
    target_classifier: bool | TargetClassifier = False,
    classifier_epochs: int = 30,
    slices: bool = False,
    per_slice: bool = False,
    seed: int = 0,
) -> pd.DataFrame:
    r"""Score ``translator`` against the counterfactual truth of a simulated cohort.

    For each ``split`` image of the translator's source that has a counterfactual render
    matching its target (``simulate(..., counterfactual=("site",))``, ``("contrast",)`` or
    ``("severity",)``; among several, the one differing from the image in the fewest of site,
    contrast, severity, label, manufacturer, narrowed by ``truth``): the source image
    (``"identity"``, no change), each baseline and the translation (``translator.model``),
    each scaled to its robust range, are compared with the truth (scaled likewise) inside the
    truth's :func:`foreground_mask`: masked PSNR (``skimage.metrics.peak_signal_noise_ratio``,
    data range 1) and SSIM (mean of ``skimage.metrics.structural_similarity``'s map over the
    mask); with lesion masks (``mask_path``), ``lesion_contrast_ratio`` = lesion-to-surround
    contrast of the output over that of the truth, on the truth's lesion mask (1 = preserved;
    NaN without lesions); ``psnr_lesion`` (inside the union of the source's and the truth's
    lesion masks: the disease's appearance) and ``psnr_outside`` (the foreground outside that
    union dilated by 2 pixels: the anatomy that should not change), capped at 100 dB; for these
    two, every image is scaled by the robust range of its pixels outside the dilated union, so
    lesions that appear or vanish do not rescale the anatomy.

    Args:
        translator: a fitted :class:`Translator`.
        cohort: a :class:`~medgen.cohort.Cohort` or manifest path with ``counterfactual_of``.
        n: score at most the first ``n`` pairs.
        split: the split to score (default ``"test"``).
        baselines: ``"histogram"`` / ``"nyul"`` (fitted here on the cohort's training split
            with the translator's selectors) or fitted :class:`Translator`\ s: more rows.
        truth: narrow the truths further, e.g. ``{"severity": 1.0}`` when a healthy subject
            has renders at several severities that all match ``target``.
        target_classifier: ``True`` trains a :class:`TargetClassifier` (source vs target on
            the real training images, ``classifier_epochs`` epochs, ``seed``), or pass one;
            adds ``target_score`` (P(target)) and ``target_rate`` (1 when called target).
            The table's ``attrs["target_classifier"]`` holds its validation accuracy and its
            rate on the truth images.
        slices: apply a 2D learned translator to volumes slice by slice.
        per_slice: for volumes, score every axial slice (last axis) on its own as well: one
            more row per image, method and slice whose truth has at least
            :data:`MIN_SLICE_FOREGROUND` foreground pixels, with the same measures computed on
            that slice (its own foreground, lesion mask and scaling; the SSIM window fitted to
            the slice); the whole-volume rows keep ``slice`` NaN. A volume's
            ``target_score`` / ``target_rate`` (the classifier sees whole volumes) is repeated
            on its slice rows. An error for 2D images.

    Returns:
        A tidy DataFrame, one row per image and method: ``image_id``, ``truth_id``,
        ``subject_id``, ``method``, ``psnr``, ``ssim``, ``lesion_contrast_ratio``,
        ``psnr_lesion``, ``psnr_outside``, ``lesion_contrast`` and ``truth_lesion_contrast``
        (the ratio's numerator and denominator, in robust-range units: a pooled ratio over
        images, ``sum(lesion_contrast) / sum(truth_lesion_contrast)``, is not dominated by
        truths whose lesions barely stand out) (and ``target_score``, ``target_rate``) and the
        subgroup columns (``sex``, ``age_group``, ``label``, ``site``) the manifest has; with
        ``per_slice``, a ``slice`` column and the slice rows after each volume's row.

    Raises:
        MedgenValueError: the cohort has no ``counterfactual_of`` column, or no ``split`` source
            image has a counterfactual at the target; ``n`` is not positive; ``per_slice`` on
            2D images.
    """
    import pandas as pd

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
    missing = [k for k in translator.source if k not in factual.columns]
    if missing:
        raise MedgenValueError(
            f"evaluate_translation: source={translator.source} selects on column(s) {missing} "
            "that the manifest does not have."
        )
    factual = factual[_matches(factual, translator.source)]
    wanted = {**translator.target, **dict(truth or {})}
    pairs = _counterfactual_pairs(df, factual, wanted, split=split)
    if pairs.empty:
        raise MedgenValueError(
            f"evaluate_translation: no {split!r}-split image with source={translator.source} "
            f"has a counterfactual with target={wanted}; simulate the cohort with the "
            "counterfactual of the target's attribute (counterfactual=('site',), "
            "('contrast',) or ('severity',))."
        )
    if n is not None:
        pairs = pairs.iloc[:n]
    clf: TargetClassifier | None = None
    if isinstance(target_classifier, TargetClassifier):
        clf = target_classifier
    elif target_classifier:
        clf = train_target_classifier(
            cohort,
            translator.source,
            translator.target,
            epochs=classifier_epochs,
            seed=seed,
        )
    methods = _methods(translator, baselines, cohort)
    groups = [c for c in ("sex", "age_group", "label", "site") if c in pairs.columns]
    out = []
    outputs: list[np.ndarray] = []
    owners: list[int] = []  # the output each row scores (slice rows share their volume's)
    truths: list[np.ndarray] = []
    for _, row in pairs.iterrows():
        x = as_spatial(load(row["image_path"]), str(row["image_id"]))[0]
        truth_raw = as_spatial(load(row["truth_path"]), str(row["truth_id"]))[0]
        if per_slice and truth_raw.ndim != 3:
            raise MedgenValueError(
                f"evaluate_translation: per_slice=True scores the slices of volumes, but "
                f"{row['truth_id']!r} is a {truth_raw.ndim}D image; leave per_slice off for 2D "
                "cohorts."
            )
        truths.append(_scaled(truth_raw))
        src_lesion = _load_mask(row.get("mask_path"))
        lesion = _load_mask(row.get("truth_mask_path"))
        if lesion is None:
            lesion = src_lesion
        ident = {
            "image_id": row["image_id"],
            "truth_id": row["truth_id"],
            "subject_id": row["subject_id"],
        }
        groups_of = {g: row[g] for g in groups}
        truth_scores = _TruthScorer(truth_raw, src_lesion, lesion)
        slice_scorers = (
            [
                (k, _TruthScorer(truth_raw[..., k], _slice(src_lesion, k), _slice(lesion, k)))
                for k in range(truth_raw.shape[-1])
            ]
            if per_slice
            else []
        )
        slice_scorers = [(k, t) for k, t in slice_scorers if t.fg.sum() >= MIN_SLICE_FOREGROUND]
        for method, t in methods:
            img = x if t is None else t.apply(x, slices=slices)
            raw = as_spatial(img, "output")[0]
            outputs.append(_scaled(raw))
            base = {**ident, "method": method}
            if per_slice:
                base["slice"] = np.nan
            out.append({**base, **truth_scores.score(raw), **groups_of})
            owners.append(len(outputs) - 1)
            for k, scorer in slice_scorers:
                out.append({**base, "slice": k, **scorer.score(raw[..., k]), **groups_of})
                owners.append(len(outputs) - 1)
    table = pd.DataFrame(out)
    if clf is not None:
        score = clf.predict(outputs)[np.asarray(owners, dtype=int)]
        table["target_score"] = score
        table["target_rate"] = (score > 0.5).astype(float)
        table.attrs["target_classifier"] = {
            "accuracy_val": clf.accuracy,
            "n_train": clf.n_train,
            "truth_rate": float(np.mean(clf.predict(truths) > 0.5)),
            "sha256": clf.sha256,
        }
    return table


def counterfactual_score_test(
    score: Callable[[np.ndarray], float],
    translator: Translator,
    images: Any,
    *,
    steps: int = 5,
    split: str = "test",
    slices: bool = False,
) -> pd.DataFrame:
    """Does a classifier's score rise along a translation? (a counterfactual test of
    classifiers, e.g. with a healthy-to-diseased translator: source ``{"label": 0}``, target
    ``{"label": 1}``).

    Each image ``x`` is moved toward its translation ``T(x)`` in ``steps`` equal steps,
    ``x + alpha * (T(x) - x)`` for ``alpha`` in ``linspace(0, 1, steps)`` (in the image's
    units), and scored by ``score``. A classifier that reads the disease scores higher as the
    translated disease grows.

    Args:
        score: image (array ``(X, Y[, Z])`` in its units) -> the classifier's score (e.g. P(label 1)).
        translator: a fitted :class:`Translator`.
        images: arrays / MetaTensors, or a Cohort / manifest (its factual ``split`` rows that
            match the translator's source).
        steps: points along the path, at least 2.

    Returns:
        A DataFrame ``image``, ``alpha``, ``score`` (one row per image and step);
        ``attrs["summary"]``: ``n_images``, ``rising_fraction`` (share of images scored higher
        at alpha 1 than at 0), ``mean_score_change`` and ``mean_spearman`` (mean rank
        correlation of score with alpha over the images).
    """
    import pandas as pd
    from scipy import stats

    from medgen.cohort import Cohort
    from medgen.generative._restorer import as_spatial
    from medgen.io import load

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ConfigError(
            f"counterfactual_score_test: steps must be an integer >= 2, not {steps!r}."
        )
    if (
        isinstance(images, str)
        or type(images).__name__ == "Cohort"
        or hasattr(images, "__fspath__")
    ):
        cohort = images if isinstance(images, Cohort) else Cohort.from_manifest(images)
        df = cohort.df[cohort.df["split"] == split]
        if "counterfactual_of" in df.columns:
            df = df[df["counterfactual_of"].isna()]
        df = df[_matches(df, translator.source)]
        named = [(str(r["image_id"]), load(r["image_path"])) for _, r in df.iterrows()]
    else:
        named = [(f"image{i}", im) for i, im in enumerate(images)]
    if not named:
        raise MedgenValueError(
            f"counterfactual_score_test: no images to test (source={translator.source}, "
            f"split={split!r})."
        )
    alphas = np.linspace(0.0, 1.0, steps)
    rows: list[dict[str, Any]] = []
    rhos: list[float] = []
    changes: list[float] = []
    for name, im in named:
        x = as_spatial(im, name)[0]
        tx = as_spatial(translator.apply(x, slices=slices), name)[0]
        scores = [float(score((x + a * (tx - x)).astype(np.float32))) for a in alphas]
        rows.extend(
            {"image": name, "alpha": float(a), "score": s}
            for a, s in zip(alphas, scores, strict=True)
        )
        changes.append(scores[-1] - scores[0])
        rho = stats.spearmanr(alphas, scores).statistic if np.ptp(scores) > 0 else 0.0
        rhos.append(float(rho))
    table = pd.DataFrame(rows)
    table.attrs["summary"] = {
        "n_images": len(named),
        "rising_fraction": float(np.mean(np.asarray(changes) > 0)),
        "mean_score_change": float(np.mean(changes)),
        "mean_spearman": float(np.mean(rhos)),
    }
    return table
