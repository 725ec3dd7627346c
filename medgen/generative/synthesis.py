"""Conditional synthesis: generate images for chosen labels and subgroups (issue 12, core).

:class:`Synthesizer` trains a conditional generative model on the ``train`` split of a cohort,
conditioned on categorical manifest columns (``label``, ``sex``, ``site``, ...), and draws,
encodes, decodes, interpolates and varies images; :meth:`Synthesizer.write` saves samples as
NIfTI or DICOM marked synthetic, with a manifest in the cohort schema. Two models, both of MONAI
building blocks (:mod:`medgen.generative.objectives.conditional`):

- ``"vae-gan"``: a conditional VAE (``AutoencoderKL`` + learned condition embeddings added to
  the latent) with a conditional ``PatchDiscriminator``; a sample is one decoder pass;
- ``"ldm"``: latent diffusion: an ``AutoencoderKL`` (trained first in the same run, then frozen)
  and a class-conditional ``DiffusionModelUNet`` with classifier-free guidance, sampled with DDIM
  in few steps.

Intensities: every training image is resized to ``image_size`` and scaled by its own robust
range, ``(x - p0.5) / (p99.5 - p0.5)`` (about 0..1; the networks work in these *unit*
intensities; the per-image ranges are kept in :attr:`Synthesizer.normalisation` and saved).
Outputs are in *image units*: unit intensities mapped back with the median training range
(interpolations and variations of given images: with those images' own ranges).

Example (tiny, CPU, seconds; random images, so the samples mean nothing):
    >>> import numpy as np, pandas as pd, tempfile, pathlib
    >>> from medgen.io import save
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> rng = np.random.default_rng(0)
    >>> rows = []
    >>> for i in range(8):
    ...     _ = save(rng.random((1, 16, 16), dtype=np.float32), d / f"i{i}.nii.gz")
    ...     rows.append({"image_id": f"i{i}", "image_path": f"i{i}.nii.gz", "subject_id": f"s{i}",
    ...                  "split": "train", "source": "real", "label": i % 2})
    >>> _ = pd.DataFrame(rows).to_csv(d / "manifest.csv", index=False)
    >>> syn = Synthesizer("vae-gan", ("label",), image_size=(16, 16), channels=(4, 8),
    ...                   latent_channels=1, adv_weight=0.0)
    >>> syn = syn.fit(d / "manifest.csv", config={"epochs": 1, "steps_per_epoch": 2,
    ...               "batch_size": 2, "device": "cpu"}, progress=False)
    >>> out = syn.sample(3, {"label": 1}, seed=0)
    >>> tuple(out.images.shape), out.conditions["label"].tolist()
    ((3, 1, 16, 16), [1, 1, 1])
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medgen._internal.suggest import did_you_mean
from medgen.errors import ConfigError, MedgenRuntimeError, MedgenValueError
from medgen.generative._model import GenerativeModel, register_model_kind
from medgen.generative._restorer import robust_range

if TYPE_CHECKING:
    from typing import Self

    import torch
    from torch import nn

log = logging.getLogger(__name__)

__all__ = ["MODELS", "SynthesisResult", "Synthesizer"]

#: the model names :class:`Synthesizer` takes
MODELS = ("vae-gan", "ldm")
#: how the VAE-GAN draws latents: a Gaussian fitted per condition combination to the training
#: latents (:mod:`medgen.generative._latent_prior`), or the standard normal
LATENT_PRIORS = ("fitted", "normal")
#: a numeric column with more distinct values than this is continuous (bin it first)
MAX_LEVELS = 20
#: percentiles of each image that map to 0 and 1
NORM_PERCENTILES = (0.5, 99.5)
#: engine options of fit() when the caller gives none (a few CPU minutes at 64x64)
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 20,
    "steps_per_epoch": 50,
    "batch_size": 16,
    "ema_decay": 0.99,
}
#: the manifest file :meth:`Synthesizer.write` writes
MANIFEST = "manifest.csv"
#: ``spawn_key`` streams of the per-item randomness of :meth:`Synthesizer.sample_items`: item
#: ``i``'s draw ``r`` takes its latent noise from ``SeedSequence(seed, spawn_key=(NOISE_STREAM,
#: i, r))`` and its drawn conditions from ``SeedSequence(seed, spawn_key=(CONDITION_STREAM, i))``
NOISE_STREAM = 1
CONDITION_STREAM = 2
#: draws per item :meth:`Synthesizer.sample_items` makes before it gives up on the memorisation
#: gate (the first draw and up to ``MAX_DRAWS - 1`` replacements)
MAX_DRAWS = 20


@dataclass
class SynthesisResult:
    """Images drawn by a :class:`Synthesizer`.

    Attributes:
        images: ``BxCx[SPATIAL]`` float32 tensor, in image units (see the module docstring).
        conditions: one row per image (index ``sample``), a column per condition.
        seed: the seed the images were drawn with.
        guidance_scale: the classifier-free guidance scale (``"ldm"``), else ``None``.
        memorisation: the memorisation gate's per-sample table (indexed ``sample``, with
            ``near_copy`` and ``nearest_train_id``) when the samples were checked
            (``sample(..., reference=...)``), else ``None``.
        sample_index: the index ``k`` of each image in the draw (its ``image_id`` suffix);
            ``None``: ``0..len-1``. :meth:`select` keeps it, so ids stay stable when images
            are dropped. :meth:`Synthesizer.sample_items`: the item indices.
        draw: :meth:`Synthesizer.sample_items`: the draw ``r`` each image is (0: the item's
            first draw; ``r``: ``r`` earlier draws were near-copies and replaced), else ``None``.
        rejected: :meth:`Synthesizer.sample_items` with a gate: one row per rejected draw
            (``item``, ``draw`` and the gate's columns), else ``None``.
        masks: a mask-conditioned model (``mask_condition=True``): the lesion mask each image
            was decoded under (``Bx1x[SPATIAL]``, 0/1, on the model's grid), else ``None``.
    """

    images: torch.Tensor
    conditions: pd.DataFrame
    seed: int
    guidance_scale: float | None = None
    memorisation: pd.DataFrame | None = None
    sample_index: np.ndarray | None = None
    draw: np.ndarray | None = None
    rejected: pd.DataFrame | None = None
    masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def indices(self) -> np.ndarray:
        """The draw index of each image (see ``sample_index``)."""
        if self.sample_index is None:
            return np.arange(len(self), dtype=np.int64)
        return np.asarray(self.sample_index, dtype=np.int64)

    def select(self, keep: Any) -> SynthesisResult:
        """The images where the boolean mask ``keep`` is true (tables and indices follow)."""
        import torch

        mask = np.asarray(keep, dtype=bool)
        if mask.shape != (len(self),):
            raise MedgenValueError(
                f"select: keep must be a boolean mask of {len(self)} values, not {mask.shape}."
            )
        memo = None if self.memorisation is None else self.memorisation[mask]
        return SynthesisResult(
            images=self.images[torch.from_numpy(mask)],
            conditions=self.conditions[mask],
            seed=self.seed,
            guidance_scale=self.guidance_scale,
            memorisation=memo,
            sample_index=self.indices[mask],
            draw=None if self.draw is None else np.asarray(self.draw)[mask],
            rejected=self.rejected,
            masks=None if self.masks is None else self.masks[torch.from_numpy(mask)],
        )

    def _repr_html_(self) -> str:
        shape = "x".join(str(s) for s in self.images.shape)
        copies = ""
        if self.memorisation is not None:
            copies = f", {int(self.memorisation['near_copy'].sum())} near-copies flagged"
        return f"<p>SynthesisResult: {shape}, seed {self.seed}{copies}</p>" + str(
            self.conditions._repr_html_()  # type: ignore[operator]
        )


def _py(v: Any) -> Any:
    """A manifest value as a plain JSON-able Python value."""
    if isinstance(v, np.generic):
        return v.item()
    return v


def _to_tuple(v: Any, name: str) -> tuple[str, ...]:
    if isinstance(v, str):
        return (v,)
    out = tuple(str(c) for c in v)
    if not out:
        raise ConfigError(f"Synthesizer: {name} must name at least one manifest column.")
    if len(set(out)) != len(out):
        raise ConfigError(f"Synthesizer: {name} names a column twice: {list(out)}.")
    return out


def _check_vocabulary(df: pd.DataFrame, conditions: Sequence[str]) -> dict[str, list[Any]]:
    """The sorted values of each condition column of the training rows, checked."""
    vocab: dict[str, list[Any]] = {}
    for col in conditions:
        if col not in df.columns:
            cols = [str(c) for c in df.columns]
            raise ConfigError(
                f"Synthesizer: condition {col!r} is not a column of the manifest (columns: "
                f"{cols}).{did_you_mean(col, cols)} Pass conditions=(...) with categorical "
                "manifest columns."
            )
        s = df[col]
        if s.isna().any() or (s.astype(str) == "").any():
            n = int((s.isna() | (s.astype(str) == "")).sum())
            raise MedgenValueError(
                f"Synthesizer: condition {col!r} is missing in {n} training row(s); fill it or "
                "drop those rows from the train split."
            )
        values = pd.unique(s)
        if pd.api.types.is_float_dtype(s) and not np.all(np.mod(s.to_numpy(float), 1) == 0):
            continuous = True
        else:
            continuous = pd.api.types.is_numeric_dtype(s) and len(values) > MAX_LEVELS
        if continuous:
            raise ConfigError(
                f"Synthesizer: condition {col!r} is continuous ({len(values)} distinct numeric "
                f"values); conditions are categorical. Bin it first, e.g. "
                f"df['{col}_group'] = pd.cut(df['{col}'], bins=[0, 40, 60, 120]).astype(str), "
                "and condition on the binned column (the simulator writes age_group for age)."
            )
        if len(values) < 2:
            raise ConfigError(
                f"Synthesizer: condition {col!r} has one value ({_py(values[0])!r}) in the "
                "training rows; a condition needs at least two. Drop it from conditions."
            )
        vocab[col] = sorted((_py(v) for v in values), key=lambda v: (str(type(v)), v))
    return vocab


def _as_cohort(cohort: Any) -> Any:
    from medgen.cohort import Cohort

    if isinstance(cohort, Cohort):
        return cohort
    if isinstance(cohort, str | os.PathLike | pd.DataFrame):
        return Cohort.from_manifest(cohort)
    raise MedgenValueError(
        f"fit: cohort must be a medgen.Cohort or a manifest path, not {type(cohort).__name__}."
    )


def _spatial_array(img: Any, spatial_dims: int, name: str) -> np.ndarray:
    """One image as ``[SPATIAL]`` float32 (a channel axis of size 1 is dropped, as is a last
    axis of size 1 for 2D: a one-slice DICOM)."""
    import torch

    if isinstance(img, torch.Tensor):
        arr = img.detach().cpu().float().numpy()
    else:
        arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == spatial_dims + 1 and arr.shape[0] == 1:
        arr = arr[0]
    if spatial_dims == 2 and arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != spatial_dims:
        raise MedgenValueError(
            f"{name}: expected a one-channel {spatial_dims}D image, got shape {arr.shape}; "
            f"use spatial_dims={arr.ndim if arr.ndim in (2, 3) else 2} or extract "
            f"{spatial_dims}D images first."
        )
    return arr.astype(np.float32)


def _resize(arr: np.ndarray, size: Sequence[int]) -> np.ndarray:
    import torch

    if tuple(arr.shape) == tuple(size):
        return arr
    t = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
    mode = "bilinear" if arr.ndim == 2 else "trilinear"
    down = any(s < a for s, a in zip(size, arr.shape, strict=True))
    out = torch.nn.functional.interpolate(
        t, size=tuple(size), mode=mode, align_corners=False, antialias=down and arr.ndim == 2
    )
    return np.asarray(out[0, 0].numpy(), dtype=np.float32)


def _slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of two Gaussian latents (Shoemake 1985; White 2016)."""
    import torch

    fa, fb = a.flatten(), b.flatten()
    cos = torch.clamp(torch.dot(fa, fb) / (fa.norm() * fb.norm() + 1e-12), -1.0, 1.0)
    omega = torch.arccos(cos)
    if float(omega) < 1e-4:
        return (1 - t) * a + t * b
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


def hash_image(h: Any, image_id: str, arr: np.ndarray) -> None:
    """Add one training image (its id, shape and voxels, resized) to the training-data hash."""
    h.update(f"{image_id}{arr.shape}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())


def condition_index(
    df: pd.DataFrame, conditions: Sequence[str], vocabulary: Mapping[str, Sequence[Any]]
) -> np.ndarray:
    """``N x K`` indices of each row's condition values in ``vocabulary``.

    Raises:
        KeyError: a value the vocabulary does not hold.
    """
    lookup = {col: {str(v): i for i, v in enumerate(vocabulary[col])} for col in conditions}
    return np.stack(
        [
            df[col].map(lambda v, m=lookup[col]: m[str(_py(v))]).to_numpy(np.int64)
            for col in conditions
        ],
        axis=1,
    )


def hash_conditions(h: Any, vocabulary: Mapping[str, Sequence[Any]], index: np.ndarray) -> None:
    """Add the vocabulary and the condition indices to the training-data hash."""
    h.update(repr(vocabulary).encode())
    h.update(index.tobytes())


@register_model_kind("synthesizer")
class Synthesizer(GenerativeModel):
    """Conditional image synthesis from a cohort (see the module docstring).

    Args:
        model: ``"vae-gan"`` or ``"ldm"``.
        conditions: categorical manifest columns to condition on (``("label", "sex")``).
        spatial_dims: 2 or 3.
        image_size: the model's image size (each axis divisible by ``2**(len(channels)-1)``).
        resize: resize images of another size to ``image_size`` (bilinear/trilinear,
            antialiased when shrinking in 2D); ``False``: such images are an error.
        channels: autoencoder widths per level.
        latent_channels: channels of the latent.
        kl_weight, adv_weight: loss weights of the autoencoder (``None``: the model's default:
            VAE-GAN 1e-4 / 0.05, LDM stage 1 1e-6 / 0).
        unet_channels: ``"ldm"``: U-Net widths per level.
        num_train_timesteps, num_inference_steps: ``"ldm"``: diffusion steps ``T`` and DDIM
            sampling steps.
        guidance_scale: ``"ldm"``: default classifier-free guidance scale of :meth:`sample`.
        cond_dropout: ``"ldm"``: probability of training a step's condition as "none".
        autoencoder_steps: ``"ldm"``: steps of stage 1 (``None``: 40% of the first fit's
            steps; pass the same value to resume or train longer).
        latent_prior: ``"vae-gan"``: where :meth:`sample` draws latents. ``"fitted"``: a
            Gaussian per condition combination fitted to the training images' latents at the
            end of :meth:`fit` (saved with the weights; coverage 0.013 -> 0.66 on the demo
            cohort, docs/synthesis.md); ``"normal"``: ``N(0, I)``. Ignored by ``"ldm"``.
        guide_weight: ``"vae-gan"``: weight of the classifier guidance during training (0: off;
            :class:`~medgen.generative.objectives.conditional.ConditionalVAEGANConfig`): a
            classifier learning the conditions from the real images alongside makes the decoder
            draw what the conditions say, also under the conditions of another image.
        guide_warmup_steps: ``"vae-gan"``: steps the guide classifier trains alone first.
        guide_conditions: ``"vae-gan"``: the conditions the guide learns and guides
            (``None``: all); leave out conditions the images barely show.
        lesion_weight: the autoencoder's L1 (the VAE-GAN's, the LDM's stage 1) weighs pixels
            inside each training image's lesion mask ``1 + lesion_weight`` (0: off). Why: a
            lesion of a few pixels is a thousandth of the plain L1, so the latent drops it and
            samples conditioned on the label carry none (docs/synthesis.md). Needs masks:
            :meth:`fit` reads ``mask_column`` of the train rows (an empty cell: no lesion).
        mask_column: the manifest column of the lesion masks (same grid as each image).
    """

    def __init__(
        self,
        model: str = "vae-gan",
        conditions: str | Sequence[str] = ("label",),
        *,
        spatial_dims: int = 2,
        image_size: Sequence[int] = (64, 64),
        resize: bool = True,
        channels: Sequence[int] = (16, 32, 64),
        latent_channels: int = 3,
        kl_weight: float | None = None,
        adv_weight: float | None = None,
        unet_channels: Sequence[int] = (32, 64),
        num_train_timesteps: int = 1000,
        num_inference_steps: int = 20,
        guidance_scale: float = 2.0,
        cond_dropout: float = 0.1,
        autoencoder_steps: int | None = None,
        latent_prior: str = "fitted",
        guide_weight: float = 0.0,
        guide_warmup_steps: int = 200,
        guide_conditions: str | Sequence[str] | None = None,
        lesion_weight: float = 0.0,
        mask_column: str = "mask_path",
        mask_condition: bool = False,
    ) -> None:
        super().__init__()
        if model not in MODELS:
            raise ConfigError(
                f"Synthesizer: model must be one of {MODELS}, not {model!r}."
                f"{did_you_mean(str(model), MODELS)}"
            )
        if spatial_dims not in (2, 3):
            raise ConfigError(f"Synthesizer: spatial_dims must be 2 or 3, not {spatial_dims!r}.")
        if latent_prior not in LATENT_PRIORS:
            raise ConfigError(
                f"Synthesizer: latent_prior must be one of {LATENT_PRIORS}, not {latent_prior!r}."
            )
        size = tuple(int(s) for s in image_size)
        if len(size) != spatial_dims:
            raise ConfigError(
                f"Synthesizer: image_size {size} must have spatial_dims={spatial_dims} sizes."
            )
        self.options: dict[str, Any] = {
            "model": model,
            "conditions": list(_to_tuple(conditions, "conditions")),
            "spatial_dims": int(spatial_dims),
            "image_size": list(size),
            "resize": bool(resize),
            "channels": [int(c) for c in channels],
            "latent_channels": int(latent_channels),
            "kl_weight": kl_weight,
            "adv_weight": adv_weight,
            "unet_channels": [int(c) for c in unet_channels],
            "num_train_timesteps": int(num_train_timesteps),
            "num_inference_steps": int(num_inference_steps),
            "guidance_scale": float(guidance_scale),
            "cond_dropout": float(cond_dropout),
            "autoencoder_steps": autoencoder_steps,
            "latent_prior": latent_prior,
            "guide_weight": float(guide_weight),
            "guide_warmup_steps": int(guide_warmup_steps),
            "guide_conditions": (
                None
                if guide_conditions is None
                else list(_to_tuple(guide_conditions, "guide_conditions"))
            ),
            "lesion_weight": float(lesion_weight),
            "mask_column": str(mask_column),
            "mask_condition": bool(mask_condition),
        }
        if self.options["mask_condition"] and model != "vae-gan":
            raise ConfigError(
                f"Synthesizer: mask_condition=True needs model='vae-gan' (its decoder takes the "
                f"mask), not {model!r}."
            )
        if self.options["mask_condition"] and self.options["guide_weight"] > 0:
            raise ConfigError(
                "Synthesizer: mask_condition=True and guide_weight > 0 do not combine; use one."
            )
        if not math.isfinite(self.options["lesion_weight"]) or self.options["lesion_weight"] < 0:
            raise ConfigError(
                f"Synthesizer: lesion_weight must be a number >= 0 (0: off), not {lesion_weight!r}."
            )
        unknown = [g for g in self.options["guide_conditions"] or [] if g not in self.conditions]
        if unknown:
            raise ConfigError(
                f"Synthesizer: guide_conditions {unknown} are not conditions of the model "
                f"{list(self.conditions)}; guide a subset of them (or None: all)."
            )
        if not num_inference_steps >= 1:
            raise ConfigError(
                f"Synthesizer: num_inference_steps must be >= 1, not {num_inference_steps!r}."
            )
        # set by fit (or load): the condition vocabulary and training statistics
        self.vocabulary: dict[str, list[Any]] = {}
        self.combinations: pd.DataFrame = pd.DataFrame()  # each training combination + count
        self.normalisation: pd.DataFrame = pd.DataFrame(columns=["low", "high"])
        self.intensity: tuple[float, float] = (0.0, 1.0)
        self.spacing: list[float] = [1.0] * spatial_dims
        self.scale_factor = 1.0
        self.vae_config: Any = None
        self.ae_config: Any = None
        self.diffusion_config: Any = None
        self.nets: dict[str, nn.Module] = {}
        self._weights_sha: str | None = None
        #: the manifest fit() read (resolved path), the memorisation gate's default reference
        self.training_manifest: str | None = None
        self._gate: Any = None  # the memorisation gate of training_manifest, built once
        self._build_configs()

    # ------------------------------------------------------------------ configs and networks
    @property
    def model(self) -> str:
        """``"vae-gan"`` or ``"ldm"``."""
        return str(self.options["model"])

    @property
    def conditions(self) -> tuple[str, ...]:
        """The condition columns."""
        return tuple(self.options["conditions"])

    @property
    def image_size(self) -> tuple[int, ...]:
        return tuple(self.options["image_size"])

    def __repr__(self) -> str:
        o = self.options
        return (
            f"Synthesizer(model={o['model']!r}, conditions={tuple(o['conditions'])}, "
            f"spatial_dims={o['spatial_dims']}, image_size={tuple(o['image_size'])}, "
            f"trained={self.steps_trained > 0})"
        )

    def _num_classes(self) -> tuple[int, ...]:
        if self.vocabulary:
            return tuple(len(self.vocabulary[c]) for c in self.conditions)
        return (2,) * len(self.conditions)  # placeholder until fit() knows the vocabulary

    def _build_configs(self, total_steps: int | None = None) -> None:
        from medgen.generative.objectives.conditional import (
            ConditionalDiffusionConfig,
            ConditionalVAEGANConfig,
            check_image_size,
        )
        from medgen.generative.objectives.latent import AutoencoderConfig

        o = self.options
        check_image_size(o["image_size"], o["channels"], "Synthesizer")
        common = {
            "spatial_dims": o["spatial_dims"],
            "channels": tuple(o["channels"]),
            "latent_channels": o["latent_channels"],
        }
        weights = {k: o[k] for k in ("kl_weight", "adv_weight") if o[k] is not None}
        weights["lesion_weight"] = float(o.get("lesion_weight", 0.0))
        if self.model == "vae-gan":
            self.vae_config = ConditionalVAEGANConfig(
                **common,
                image_size=tuple(o["image_size"]),
                num_classes=self._num_classes(),
                guide_weight=o["guide_weight"],
                guide_warmup_steps=o["guide_warmup_steps"],
                guide_conditions=tuple(
                    self.conditions.index(g) for g in o["guide_conditions"] or []
                ),
                mask_condition=bool(o.get("mask_condition", False)),
                **weights,
            )
            return
        self.ae_config = AutoencoderConfig(**common, patch_size=min(o["image_size"]), **weights)
        ae_steps = o["autoencoder_steps"]
        if ae_steps is None:
            ae_steps = max(1, (2 * total_steps) // 5) if total_steps else 0
        n_combos = max(1, math.prod(self._num_classes()))
        self.diffusion_config = ConditionalDiffusionConfig(
            spatial_dims=o["spatial_dims"],
            channels=tuple(o["unet_channels"]),
            num_train_timesteps=o["num_train_timesteps"],
            num_class_embeds=n_combos,
            cond_dropout=o["cond_dropout"],
            autoencoder_steps=int(ae_steps),
            patch_size=min(o["image_size"]),
        )

    def _build_networks(self) -> dict[str, nn.Module]:
        from medgen.generative.objectives.conditional import (
            build_conditional_autoencoder,
            build_conditional_unet,
        )
        from medgen.generative.objectives.latent import build_autoencoder

        if self.model == "vae-gan":
            return {"autoencoder": build_conditional_autoencoder(self.vae_config)}
        return {
            "autoencoder": build_autoencoder(self.ae_config),
            "unet": build_conditional_unet(
                self.diffusion_config, int(self.options["latent_channels"])
            ),
        }

    def networks(self) -> dict[str, nn.Module]:
        """The inference networks (what :meth:`save` writes): ``"autoencoder"`` (and
        ``"unet"`` for ``"ldm"``)."""
        if not self.nets:
            self.nets = self._build_networks()
        return self.nets

    def _check_trained(self, what: str) -> None:
        if not self.vocabulary or not self.nets:
            raise MedgenValueError(
                f"Synthesizer.{what}: the model is not trained; call fit(cohort) or load a "
                "trained run with medgen.generative.load(run_dir)."
            )

    @property
    def device(self) -> torch.device:
        return next(self.networks()["autoencoder"].parameters()).device

    # ------------------------------------------------------------------ data
    def _training_masks(
        self, df: pd.DataFrame, shapes: Sequence[tuple[int, ...]]
    ) -> np.ndarray | None:
        """The train rows' lesion masks (``lesion_weight`` > 0 or ``mask_condition``) on the
        model's grid: ``N x [SPATIAL]`` occupancy 0..1 (``mask > 0.5``, resized like the
        images), zeros for an empty cell; ``None`` when neither uses them."""
        weighted = float(self.options.get("lesion_weight", 0.0)) > 0
        conditioned = bool(self.options.get("mask_condition", False))
        if not (weighted or conditioned):
            return None
        why = "lesion_weight > 0 weights the L1 by" if weighted else "mask_condition decodes under"
        off = "lesion_weight=0" if weighted else "mask_condition=False"
        col = str(self.options.get("mask_column", "mask_path"))
        masks, found = self._row_masks(df, "fit", shapes, because=f"{why} lesion masks", off=off)
        if found == 0:
            raise MedgenValueError(
                f"fit: {why} lesion masks but no train row's {col!r} mask has a lesion; check "
                f"the column, or pass {off}."
            )
        if weighted:
            w = 1 + float(self.options["lesion_weight"])
            log.info("fit: lesion-weighted L1 (x%g) on %d train images with lesions", w, found)
        return masks

    def _row_masks(
        self,
        df: pd.DataFrame,
        what: str,
        shapes: Sequence[tuple[int, ...]] | None = None,
        *,
        because: str,
        off: str = "",
    ) -> tuple[np.ndarray, int]:
        """``(masks N x [SPATIAL] float32 occupancy 0..1 on the model's grid, rows with a
        lesion)`` of the manifest rows ``df`` (column ``mask_column``; an empty cell: no
        lesion). ``shapes``: the rows' image shapes, which each mask must have. ``because``
        (why masks are needed) and ``off`` (the option that turns that off) go into the error
        of a missing column."""
        from medgen.io import load

        col = str(self.options.get("mask_column", "mask_path"))
        if col not in df.columns:
            fix = f"pass mask_column=, or {off}" if off else "or pass mask_column="
            raise MedgenValueError(
                f"{what}: {because}, but the manifest has no column {col!r}; add one (a mask "
                f"file per row, empty for none), {fix}."
            )
        sd = int(self.options["spatial_dims"])
        masks, found = [], 0
        rows = df.to_dict("records")
        for i, row in enumerate(rows):
            path, iid = row.get(col), str(row["image_id"])
            if not isinstance(path, str) or not path:  # an empty cell (NaN in a CSV): no lesion
                masks.append(np.zeros(self.image_size, dtype=np.float32))
                continue
            m = _spatial_array(load(path), sd, f"mask {path}")
            if shapes is not None and m.shape != tuple(shapes[i]):
                raise MedgenValueError(
                    f"{what}: the lesion mask {path} (column {col!r}, image {iid}) has shape "
                    f"{m.shape}, its image {tuple(shapes[i])}; give masks on the images' grid."
                )
            # binarised at 0.5 as translation's masks are (a probability map: its confident part)
            lesion = m > 0.5
            found += int(bool(lesion.any()))
            masks.append(np.clip(_resize(lesion.astype(np.float32), self.image_size), 0, 1))
        if not masks:
            return np.zeros((0, *self.image_size), dtype=np.float32), 0
        return np.stack(masks).astype(np.float32), found

    def _training_data(
        self, cohort: Any
    ) -> tuple[np.ndarray, pd.DataFrame, np.ndarray, str, np.ndarray | None]:
        """``(images N x [SPATIAL] in unit intensities, condition rows, indices N x K,
        data hash, lesion masks or None)`` of the train split (:meth:`_training_masks`); sets
        the vocabulary and the training statistics."""
        from medgen.io import load

        c = _as_cohort(cohort)
        train = c.select(split="train")
        if len(train) == 0:
            raise MedgenValueError(
                f"fit: the cohort has no 'train' rows (splits: {c.splits}); the synthesizer "
                "trains on the train split only. Assign splits with cohort.split(...)."
            )
        df = train.df
        vocab = _check_vocabulary(df, self.conditions)
        size = self.image_size
        sd = int(self.options["spatial_dims"])
        images, lows, highs, spacings, shapes = [], [], [], [], []
        h = hashlib.sha256()
        for row in df.to_dict("records"):
            iid = str(row["image_id"])
            img = load(row["image_path"])
            arr = _spatial_array(img, sd, f"image {iid}")
            if tuple(arr.shape) != size and not self.options["resize"]:
                raise MedgenValueError(
                    f"fit: image {iid} has size {tuple(arr.shape)}, not image_size={size}, and "
                    "resize=False; pass resize=True, or image_size equal to the images' size "
                    "(resample them to one grid first)."
                )
            sp = [float(s) for s in (img.meta.get("spacing") or [1.0] * sd)][:sd]
            sp += [1.0] * (sd - len(sp))
            spacings.append([s * a / b for s, a, b in zip(sp, arr.shape, size, strict=True)])
            shapes.append(tuple(arr.shape))
            arr = _resize(arr, size)
            lo, hi = robust_range(arr, NORM_PERCENTILES)
            images.append((arr - lo) / (hi - lo))
            lows.append(lo)
            highs.append(hi)
            hash_image(h, iid, arr)
        cond = df[list(self.conditions)].copy()
        index = condition_index(cond, self.conditions, vocab)
        hash_conditions(h, vocab, index)
        self.vocabulary = vocab
        self.normalisation = pd.DataFrame(
            {"low": lows, "high": highs},
            index=pd.Index(df["image_id"].astype(str), name="image_id"),
        )
        self.intensity = (float(np.median(lows)), float(np.median(highs)))
        self.spacing = [float(v) for v in np.median(np.asarray(spacings), axis=0)]
        counts = (
            pd.DataFrame(index, columns=list(self.conditions))
            .value_counts()
            .sort_index()
            .rename("count")
            .reset_index()
        )
        self.combinations = counts
        masks = self._training_masks(df, shapes)
        return np.stack(images).astype(np.float32), cond, index, h.hexdigest(), masks

    def _combined(self, index: np.ndarray) -> np.ndarray:
        """Combined condition index (row-major over the vocabularies) of ``N x K`` indices."""
        return np.ravel_multi_index(tuple(index.T), self._num_classes()).astype(np.int64)

    # ------------------------------------------------------------------ training
    def fit(
        self,
        cohort: Any,
        *,
        run_dir: str | os.PathLike[str] | None = None,
        config: Any = None,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
    ) -> Synthesizer:
        """Train on the ``train`` split of ``cohort``.

        Args:
            cohort: a :class:`~medgen.cohort.Cohort` or a manifest path.
            run_dir: run folder (checkpoints, ``metrics.csv``, then the model; new or empty
                unless ``resume``/``overwrite``); ``None``: in memory.
            config: an :class:`~medgen.generative.EngineConfig` or a dict of its options
                (defaults: :data:`TRAIN_DEFAULTS`).
            resume: continue an interrupted run in ``run_dir`` (or train a finished one longer).
            overwrite: replace the run in ``run_dir`` (its files only).
            progress: tqdm progress bar.

        Returns:
            ``self``, trained (EMA weights of the EMA networks).

        Raises:
            ConfigError: an unknown, continuous or one-valued condition column.
            MedgenValueError: no train rows, missing condition values, images of another size
                with ``resize=False``.
            RunFolderError, RunLockedError: see :meth:`GenerativeModel.save`.
        """
        from medgen.generative.engine import EngineConfig

        if isinstance(config, EngineConfig):
            ec = config
        else:
            ec = EngineConfig.from_dict({**TRAIN_DEFAULTS, **dict(config or {})})
        if run_dir is None:
            return self._fit(cohort, ec, None, resume=resume, progress=progress)
        from medgen._internal.runs import run_lock
        from medgen.generative._run import OWNED, check_training, prepare_training

        rd = Path(run_dir).expanduser()
        what = "synthesizer training run"
        # owned=: a folder of someone else's files is refused before the lock file is made there
        with run_lock(rd, what=what, owned=OWNED):

            def prepare() -> None:
                prepare_training(rd, resume=resume, overwrite=overwrite, what=what)

            early = not resume or overwrite
            if early:
                prepare()
            else:
                check_training(rd, resume=resume, overwrite=overwrite, what=what)
            self._fit(
                cohort, ec, rd, resume=resume, progress=progress, prepare=None if early else prepare
            )
            self._write_model(rd)  # weights, config.json, then run_complete.json
        return self

    def _fit(
        self,
        cohort: Any,
        ec: Any,
        run_dir: Path | None,
        *,
        resume: bool,
        progress: bool,
        prepare: Any = None,
    ) -> Synthesizer:
        from medgen.generative.engine import run_objective
        from medgen.generative.objectives.conditional import (
            ConditionalLDMObjective,
            ConditionalVAEGANObjective,
        )

        images, _, index, data_hash, masks = self._training_data(cohort)
        from medgen.generative._synth_eval import _reference_name

        ref = _reference_name(cohort)
        self.training_manifest = None if ref.startswith("<") else ref
        self._gate = None
        self._build_configs(total_steps=ec.total_steps)
        objective: Any
        if self.model == "vae-gan":
            objective = ConditionalVAEGANObjective(
                images, index, config=self.vae_config, masks=masks
            )
        else:
            objective = ConditionalLDMObjective(
                images,
                self._combined(index),
                config=self.diffusion_config,
                autoencoder_config=self.ae_config,
                masks=masks,
            )
        run_info = {
            "synthesizer": {**self.options},
            "vocabulary": {k: [str(v) for v in vs] for k, vs in self.vocabulary.items()},
            "n_images": len(images),
            "data_sha256": data_hash,
        }
        result = run_objective(
            objective,
            config=ec,
            run_dir=run_dir,
            resume=resume,
            run_info=run_info,
            progress=progress,
            prepare=prepare,
        )
        self.nets = {n: net.eval() for n, net in result.inference_networks().items()}
        if self.model == "ldm":
            sf = objective.scale_factor
            if sf is None:
                raise MedgenValueError(
                    "fit: training ended before the diffusion stage began (autoencoder_steps="
                    f"{self.diffusion_config.autoencoder_steps} of {result.step} steps); train "
                    "longer or lower autoencoder_steps."
                )
            self.scale_factor = float(sf)
        elif self.options["latent_prior"] == "fitted":
            self._fit_latent_prior(images, index)
        if self.options.get("mask_condition") and masks is not None:
            from medgen.generative._mask_bank import MaskBank

            self.nets["mask_bank"] = MaskBank.fit(masks, index).to(self.device)
        self.record_training(result, train_config=ec, data_hash=data_hash)
        self._weights_sha = None
        return self

    def _fit_latent_prior(self, images: np.ndarray, index: np.ndarray) -> None:
        """The VAE-GAN's sampling density: a Gaussian per condition combination fitted to the
        posterior means of the training images (:mod:`medgen.generative._latent_prior`)."""

        from medgen.generative._latent_prior import LatentPrior

        n_cells = math.prod(self._num_classes())
        prior = LatentPrior.fit(self._posterior_means(images), self._combined(index), n_cells)
        self.nets["latent_prior"] = prior.to(self.device)

    def _posterior_means(self, images: np.ndarray) -> np.ndarray:
        """The autoencoder's posterior means of ``images`` (``N x [SPATIAL]`` in unit
        intensities), flattened: ``N x D`` float64, in batches of 64."""
        import torch

        ae: Any = self.nets["autoencoder"]
        mus = []
        with torch.no_grad():
            for i in range(0, len(images), 64):
                x = torch.from_numpy(images[i : i + 64][:, None]).to(self.device)
                mus.append(ae.encode(x)[0].double().cpu())
        return torch.cat(mus).reshape(len(images), -1).numpy()

    # ------------------------------------------------------------------ conditions
    def _value_index(self, col: str, value: Any) -> int:
        known = self.vocabulary[col]
        text = [str(v) for v in known]
        try:
            return text.index(str(_py(value)))
        except ValueError:
            raise MedgenValueError(
                f"condition {col}={value!r} was not seen in training; known values of {col!r}: "
                f"{known}.{did_you_mean(str(value), text)}"
            ) from None

    def _check_columns(self, cols: Sequence[Any], what: str) -> None:
        unknown = [str(c) for c in cols if c not in self.conditions]
        if unknown:
            raise MedgenValueError(
                f"{what}: {unknown} are not conditions of this model; its conditions are "
                f"{list(self.conditions)}.{did_you_mean(unknown[0], self.conditions)}"
            )

    def _condition_rows(
        self, n: int | None, where: Any, seed: int
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """``(condition rows, indices N x K)`` of ``where`` (dict, DataFrame or ``None``); the
        unspecified conditions of a row are drawn from the training combinations that match its
        specified ones (their frequencies), deterministically from ``seed``."""
        from medgen._internal.conditions import condition_rows

        rows = condition_rows(n, where, unit="images")
        self._check_columns(list(rows.columns), "sample(where=...)")
        rng = np.random.default_rng([int(seed), 12])
        combos = self.combinations
        index = np.zeros((len(rows), len(self.conditions)), dtype=np.int64)
        given = {
            col: [
                None if v is None or (isinstance(v, float) and math.isnan(v)) else v
                for v in rows[col].tolist()
            ]
            for col in rows.columns
        }
        for i in range(len(rows)):
            fixed = {
                k: self._value_index(col, given[col][i])
                for k, col in enumerate(self.conditions)
                if col in given and given[col][i] is not None
            }
            match = np.ones(len(combos), dtype=bool)
            for k, v in fixed.items():
                match &= combos[self.conditions[k]].to_numpy() == v
            if not match.any():  # a combination never seen together: the marginals
                log.warning(
                    "sample: the combination %s was not seen in training; drawing the other "
                    "conditions from their marginal frequencies",
                    {
                        self.conditions[k]: self.vocabulary[self.conditions[k]][v]
                        for k, v in fixed.items()
                    },
                )
                match[:] = True
            w = combos["count"].to_numpy(float) * match
            pick = combos.iloc[int(rng.choice(len(combos), p=w / w.sum()))]
            for k, col in enumerate(self.conditions):
                index[i, k] = fixed.get(k, int(pick[col]))
        table = pd.DataFrame(
            {
                col: [self.vocabulary[col][j] for j in index[:, k]]
                for k, col in enumerate(self.conditions)
            },
            index=pd.RangeIndex(len(rows), name="sample"),
        )
        return table, index

    def _weights(self, index: np.ndarray | None, n: int) -> list[torch.Tensor]:
        """Per-condition weight matrices ``n x V_k``: one-hot rows of ``index``, or (``None``)
        the training frequencies ("unconditioned")."""
        import torch

        out = []
        for k, col in enumerate(self.conditions):
            v = len(self.vocabulary[col])
            if index is None:
                freq = self.combinations.groupby(col)["count"].sum().reindex(range(v), fill_value=0)
                p = torch.tensor(freq.to_numpy(float) / float(freq.sum()), dtype=torch.float32)
                out.append(p.expand(n, v).clone())
            else:
                out.append(torch.nn.functional.one_hot(torch.from_numpy(index[:, k]), v).float())
        return [w.to(self.device) for w in out]

    def _optional_conditions(self, conditions: Any, n: int, what: str) -> np.ndarray | None:
        """Indices of ``conditions`` (dict: the same for all ``n``; DataFrame: ``n`` rows) or
        ``None``; every condition must be given."""
        if conditions is None:
            return None
        rows = (
            conditions.reset_index(drop=True)
            if isinstance(conditions, pd.DataFrame)
            else pd.DataFrame([dict(conditions)] * n)
        )
        self._check_columns(list(rows.columns), what)
        missing = [c for c in self.conditions if c not in rows.columns]
        if missing:
            raise MedgenValueError(
                f"{what}: conditions must give every condition of the model; missing {missing} "
                "(or pass conditions=None for unconditioned decoding)."
            )
        if len(rows) not in (1, n):
            raise MedgenValueError(f"{what}: conditions must have 1 or {n} rows, not {len(rows)}.")
        if len(rows) == 1 and n > 1:
            rows = pd.concat([rows] * n, ignore_index=True)
        return np.array(
            [
                [self._value_index(c, r[c]) for c in self.conditions]
                for r in rows.to_dict("records")
            ],
            dtype=np.int64,
        )

    # ------------------------------------------------------------------ intensities
    def _to_units(self, images: Any, what: str) -> tuple[torch.Tensor, np.ndarray]:
        """``(unit images Bx1x[SPATIAL], ranges B x 2)`` of images in their own units (a
        ``BxCx[SPATIAL]`` tensor/array, or a list of images as :func:`medgen.io.load` gives)."""
        import torch

        sd = int(self.options["spatial_dims"])
        batch = isinstance(images, torch.Tensor | np.ndarray) and np.ndim(images) == sd + 2
        items = list(images) if batch or isinstance(images, list | tuple) else [images]
        arrs, ranges = [], []
        for i, im in enumerate(items):
            a = _spatial_array(im, sd, f"{what}[{i}]")
            if tuple(a.shape) != self.image_size and not self.options["resize"]:
                raise MedgenValueError(
                    f"{what}[{i}]: size {tuple(a.shape)} is not image_size={self.image_size} "
                    "and the model was built with resize=False; resize the image first."
                )
            a = _resize(a, self.image_size)
            lo, hi = robust_range(a, NORM_PERCENTILES)
            arrs.append((a - lo) / (hi - lo))
            ranges.append((lo, hi))
        x = torch.from_numpy(np.stack(arrs)[:, None].astype(np.float32)).to(self.device)
        return x, np.asarray(ranges, dtype=np.float64)

    def _from_units(self, x: torch.Tensor, ranges: np.ndarray | None = None) -> torch.Tensor:
        import torch

        x = x.detach().float().cpu()
        if ranges is None:
            lo, hi = self.intensity
            return x * (hi - lo) + lo
        r = torch.as_tensor(ranges, dtype=torch.float32)
        shape = (-1,) + (1,) * (x.ndim - 1)
        return x * (r[:, 1] - r[:, 0]).view(shape) + r[:, 0].view(shape)

    # ------------------------------------------------------------------ inference
    def _decode_units(
        self,
        z: torch.Tensor,
        weights: list[torch.Tensor] | None,
        masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Unit images of latents ``z`` (``"vae-gan"``: under condition ``weights`` and, for a
        mask-conditioned model, lesion ``masks`` ``Bx1x[SPATIAL]``; ``None``: no lesion)."""
        import torch

        ae: Any = self.networks()["autoencoder"]
        with torch.no_grad():
            if self.model == "vae-gan":
                assert weights is not None
                m = None if masks is None else masks.to(self.device)
                return torch.as_tensor(ae.decode(z, weights, m))
            return torch.as_tensor(ae.decode_stage_2_outputs(z / self.scale_factor))

    def _latent_shape(self) -> tuple[int, ...]:
        from medgen.generative.objectives.conditional import latent_shape

        o = self.options
        return latent_shape(o["image_size"], o["channels"], o["latent_channels"])

    def sample(
        self,
        n: int | None,
        where: Mapping[str, Any] | pd.DataFrame | None = None,
        *,
        seed: int = 0,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        batch_size: int = 64,
        reference: Any = None,
    ) -> SynthesisResult:
        """Draw ``n`` images for the conditions ``where``.

        Args:
            n: the number of images (``None`` with a DataFrame ``where``: one per row).
            where: ``{"label": 1, "sex": "F"}`` (the same for every image) or a DataFrame with a
                row of conditions per image; conditions not given are drawn from the training
                combinations that match the given ones (in proportion to their counts).
            seed: the source of all randomness: the same seed gives the same images.
            guidance_scale: ``"ldm"``: classifier-free guidance (default: the model's).
            num_inference_steps: ``"ldm"``: DDIM steps (default: the model's).
            batch_size: images per forward pass.
            reference: check every sample with the memorisation gate (:meth:`memorisation_gate`)
                against this cohort (a manifest path, a Cohort, a gate, or ``True``: the
                training manifest) and keep the table in ``memorisation``.

        Returns:
            :class:`SynthesisResult` (``images`` ``Bx1x[SPATIAL]`` in image units).

        Raises:
            MedgenValueError: ``n <= 0``, an unknown condition column or value (the message
                lists the known ones), an untrained model.
        """
        import torch

        self._check_trained("sample")
        table, index = self._condition_rows(n, where, seed)
        total = len(table)
        gen = torch.Generator().manual_seed(int(seed))
        noise = torch.randn((total, *self._latent_shape()), generator=gen)
        gs = self.options["guidance_scale"] if guidance_scale is None else float(guidance_scale)
        steps = int(num_inference_steps or self.options["num_inference_steps"])
        units, masks = self._generate_units(noise, index, gs, steps, batch_size)
        out = SynthesisResult(
            images=self._from_units(units),
            conditions=table,
            seed=int(seed),
            guidance_scale=gs if self.model == "ldm" else None,
            masks=masks,
        )
        if reference is not None and reference is not False:
            out.memorisation = self._resolve_gate(reference, "sample").check(self, out)
        return out

    def _generate_units(
        self, noise: torch.Tensor, index: np.ndarray, gs: float, steps: int, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(unit-intensity images Nx1x[SPATIAL], lesion masks or None)`` of latent ``noise``
        under the condition indices ``index`` (``N x K``), in consecutive batches of
        ``batch_size``; masks (``Nx1x[SPATIAL]``, 0/1) from a mask-conditioned model only."""
        import torch

        outs, mask_outs = [], []
        bank: Any = self.nets.get("mask_bank")
        for i in range(0, len(noise), batch_size):
            z = noise[i : i + batch_size].to(self.device)
            idx = index[i : i + batch_size]
            if self.model == "vae-gan":
                m = None if bank is None else bank.draw(z, idx)
                z = self._prior_latents(z, idx)
                outs.append(self._decode_units(z, self._weights(idx, len(idx)), m))
                if m is not None:
                    mask_outs.append(m.cpu())
            else:
                from medgen.generative.objectives.conditional import sample_ddim

                labels = torch.from_numpy(self._combined(idx)).to(self.device)
                lat = sample_ddim(
                    self.networks()["unet"],
                    config=self.diffusion_config,
                    labels=labels,
                    noise=z,
                    num_inference_steps=steps,
                    guidance_scale=gs,
                )
                outs.append(self._decode_units(lat, None))
        return torch.cat(outs), (torch.cat(mask_outs) if mask_outs else None)

    # ------------------------------------------------------------------ per-item sampling
    @staticmethod
    def _items(items: Any, what: str) -> np.ndarray:
        arr = np.asarray(list(items) if not isinstance(items, np.ndarray) else items)
        if arr.ndim != 1 or len(arr) == 0:
            raise MedgenValueError(
                f"{what}: items must be a non-empty sequence of item indices, not shape "
                f"{arr.shape}."
            )
        if not np.issubdtype(arr.dtype, np.integer) or (arr < 0).any():
            raise MedgenValueError(
                f"{what}: items must be non-negative integers (item indices), got {arr[:5]!r}."
            )
        if len(np.unique(arr)) != len(arr):
            raise MedgenValueError(f"{what}: items must not repeat an index.")
        return arr.astype(np.int64)

    @staticmethod
    def _check_seed(seed: Any, what: str) -> int:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise MedgenValueError(
                f"{what}: seed must be a non-negative integer (per-item randomness is keyed by "
                f"numpy.random.SeedSequence(seed, ...)), not {seed!r}."
            )
        return int(seed)

    def _combination_weights(self, fixed: Mapping[int, int]) -> np.ndarray:
        """Probabilities of the training combinations that match ``fixed`` (condition number ->
        value index), in proportion to their counts; the marginals when none matches."""
        combos = self.combinations
        match = np.ones(len(combos), dtype=bool)
        for k, v in fixed.items():
            match &= combos[self.conditions[k]].to_numpy() == v
        if not match.any():
            log.warning(
                "sample_items: the combination %s was not seen in training; drawing the other "
                "conditions from their marginal frequencies",
                {
                    self.conditions[k]: self.vocabulary[self.conditions[k]][v]
                    for k, v in fixed.items()
                },
            )
            match[:] = True
        w = combos["count"].to_numpy(float) * match
        return w / w.sum()

    def item_conditions(
        self,
        items: Sequence[int] | np.ndarray,
        where: Mapping[str, Any] | pd.DataFrame | None = None,
        *,
        seed: int = 0,
    ) -> pd.DataFrame:
        """The conditions of items ``items``: a pure function of ``(seed, item)``.

        Conditions given by ``where`` are kept; the others are drawn from the training
        combinations that match the given ones (in proportion to their counts) with a generator
        seeded by ``numpy.random.SeedSequence(seed, spawn_key=(CONDITION_STREAM, item))``, so
        item ``i`` gets the same conditions whatever other items are asked for with it.

        Args:
            items: item indices (non-negative, distinct).
            where: ``{"label": 1}`` (every item) or a DataFrame with one row per item (missing
                values: drawn).
            seed: a non-negative integer.

        Returns:
            One row per item (index ``sample`` = the item), a column per condition, values
            from :attr:`vocabulary`.

        Raises:
            MedgenValueError: an unknown condition column or value, a where of another length.
        """
        table, _ = self._item_conditions(items, where, seed, "item_conditions")
        return table

    def _item_conditions(
        self, items: Any, where: Any, seed: Any, what: str
    ) -> tuple[pd.DataFrame, np.ndarray]:
        self._check_trained(what)
        arr = self._items(items, what)
        seed = self._check_seed(seed, what)
        k_all = len(self.conditions)
        given: dict[int, list[Any]] = {}
        if isinstance(where, pd.DataFrame):
            if len(where) != len(arr):
                raise MedgenValueError(
                    f"{what}: where has {len(where)} rows for {len(arr)} items; pass one row "
                    "per item (or a dict for all)."
                )
            self._check_columns(list(where.columns), f"{what}(where=...)")
            for col in where.columns:
                given[self.conditions.index(col)] = where[col].tolist()
        elif where is not None:
            spec = dict(where)
            self._check_columns(list(spec), f"{what}(where=...)")
            for col, v in spec.items():
                given[self.conditions.index(col)] = [v] * len(arr)
        lookup: dict[tuple[int, str], int] = {}

        def value_index(k: int, v: Any) -> int:
            key = (k, str(_py(v)))
            if key not in lookup:
                try:
                    lookup[key] = self._value_index(self.conditions[k], v)
                except MedgenValueError:
                    # an integer column that pandas made float by a missing cell: 1.0 is 1
                    if not (isinstance(v, float | np.floating) and float(v).is_integer()):
                        raise
                    lookup[key] = self._value_index(self.conditions[k], int(v))
            return lookup[key]

        weights: dict[tuple[tuple[int, int], ...], np.ndarray] = {}
        combos = self.combinations[list(self.conditions)].to_numpy(np.int64)
        index = np.zeros((len(arr), k_all), dtype=np.int64)
        for j, item in enumerate(arr.tolist()):
            fixed = {
                k: value_index(k, vals[j])
                for k, vals in given.items()
                if not (vals[j] is None or (isinstance(vals[j], float) and math.isnan(vals[j])))
            }
            if len(fixed) < k_all:
                key = tuple(sorted(fixed.items()))
                if key not in weights:
                    weights[key] = self._combination_weights(fixed)
                ss = np.random.SeedSequence(seed, spawn_key=(CONDITION_STREAM, item))
                pick = combos[int(np.random.default_rng(ss).choice(len(combos), p=weights[key]))]
                for k in range(k_all):
                    index[j, k] = fixed.get(k, int(pick[k]))
            else:
                index[j] = [fixed[k] for k in range(k_all)]
        table = pd.DataFrame(
            {
                col: [self.vocabulary[col][v] for v in index[:, k]]
                for k, col in enumerate(self.conditions)
            },
            index=pd.Index(arr, name="sample"),
        )
        return table, index

    def item_noise(
        self, items: Sequence[int] | np.ndarray, *, seed: int = 0, draw: Any = 0
    ) -> torch.Tensor:
        """The latent noise ``N x [latent shape]`` of draws ``draw`` of items ``items``.

        Draw ``r`` of item ``i`` is ``torch.randn`` from a ``torch.Generator`` seeded with 64
        bits of ``numpy.random.SeedSequence(seed, spawn_key=(NOISE_STREAM, i, r))``: a pure
        function of ``(seed, i, r)``, whatever else is drawn with it.

        Args:
            items: item indices.
            seed: a non-negative integer.
            draw: the draw of each item (an integer for all, or one per item); 0 is the
                first, ``r > 0`` the ``r``-th replacement of a rejected draw.
        """
        import torch

        arr = self._items(items, "item_noise")
        seed = self._check_seed(seed, "item_noise")
        draws = np.broadcast_to(np.asarray(draw, dtype=np.int64), arr.shape)
        shape = self._latent_shape()
        out = torch.empty((len(arr), *shape), dtype=torch.float32)
        for j, (i, r) in enumerate(zip(arr.tolist(), draws.tolist(), strict=True)):
            words = np.random.SeedSequence(seed, spawn_key=(NOISE_STREAM, i, r)).generate_state(
                2, np.uint32
            )
            gen = torch.Generator().manual_seed(int(words[0]) | (int(words[1]) << 32))
            out[j] = torch.randn(shape, generator=gen)
        return out

    def sample_items(
        self,
        items: Sequence[int] | np.ndarray,
        conditions: Mapping[str, Any] | pd.DataFrame | None = None,
        *,
        seed: int = 0,
        gate: Any = None,
        max_draws: int = MAX_DRAWS,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        batch_size: int = 64,
    ) -> SynthesisResult:
        """Images of items ``items``, each a pure function of ``(seed, item)``.

        Where :meth:`sample` draws ``n`` images from one generator (image ``k`` depends on how
        many were drawn before it), here item ``i``'s conditions come from
        :meth:`item_conditions` and its noise from :meth:`item_noise`, keyed by ``(seed, i)``:
        the basis of batch generation (:func:`medgen.batch.generate`), where the same item gets
        the same image in any shard, on any worker, in any resumed run.

        **Bytes**: the networks run in consecutive batches of ``batch_size`` items in the order
        given, and a batched convolution can differ in the last bits with the batch's size and
        content (and with the torch thread count: the tiny LDM's do); the same ``items`` in the
        same order (with the same ``batch_size``, device, torch build and thread count) give
        bitwise the same images. ``"ldm"``: DDIM with eta 0 is
        deterministic given the noise.

        **Memorisation gate** (``gate``, from :meth:`memorisation_gate`): every image is
        checked; a near-copy of a training image is replaced by the item's next draw (same
        conditions, noise of ``(seed, i, r + 1)``), the replacements of a round sampled
        together in item order, until every item passes.

        Args:
            items: item indices (non-negative, distinct).
            conditions: as ``where`` of :meth:`item_conditions` (missing conditions are drawn).
            seed: a non-negative integer.
            gate: a memorisation gate, or ``None`` (unchecked).
            max_draws: draws per item before giving up (a model that keeps reproducing
                training images for an item raises :class:`~medgen.errors.MedgenRuntimeError`).
            guidance_scale, num_inference_steps: ``"ldm"`` (defaults: the model's).
            batch_size: items per forward pass.

        Returns:
            :class:`SynthesisResult` with ``sample_index`` = the items, ``draw`` (the accepted
            draw of each), and with a gate ``memorisation`` (of the accepted draws) and
            ``rejected`` (a row per rejected draw).
        """
        import torch

        items_arr = self._items(items, "sample_items")
        table, index = self._item_conditions(items_arr, conditions, seed, "sample_items")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise MedgenValueError(
                f"sample_items: batch_size must be a positive integer, not {batch_size!r}."
            )
        if isinstance(max_draws, bool) or not isinstance(max_draws, int) or max_draws < 1:
            raise MedgenValueError(
                f"sample_items: max_draws must be a positive integer, not {max_draws!r}."
            )
        gs = self.options["guidance_scale"] if guidance_scale is None else float(guidance_scale)
        steps = int(num_inference_steps or self.options["num_inference_steps"])
        draws = np.zeros(len(items_arr), dtype=np.int64)

        def draw_images(pos: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
            noise = self.item_noise(items_arr[pos], seed=seed, draw=draws[pos])
            units, masks = self._generate_units(noise, index[pos], gs, steps, batch_size)
            return self._from_units(units), masks

        images, masks = draw_images(np.arange(len(items_arr)))
        out = SynthesisResult(
            images=images,
            masks=masks,
            conditions=table,
            seed=int(seed),
            guidance_scale=gs if self.model == "ldm" else None,
            sample_index=items_arr,
            draw=draws,
        )
        if gate is None:
            return out
        first = gate.check(self, out)
        attrs = dict(first.attrs)  # the gate's settings and thresholds
        memo = first.reset_index(drop=True)
        rejected: list[pd.DataFrame] = []
        while True:
            pos = np.flatnonzero(memo["near_copy"].to_numpy(dtype=bool))
            if len(pos) == 0:
                break
            rows = memo.iloc[pos].copy()
            rows.insert(0, "item", items_arr[pos])
            rows.insert(1, "draw", draws[pos].copy())
            rejected.append(rows)
            stuck = pos[draws[pos] + 1 >= max_draws]
            if len(stuck):
                first_stuck = {c: _py(v) for c, v in table.iloc[int(stuck[0])].items()}
                raise MedgenRuntimeError(
                    f"sample_items: item {int(items_arr[stuck[0]])} ({first_stuck}) was a "
                    "near-copy of a training image in "
                    f"all of its {max_draws} draws (and {len(stuck) - 1} other item(s) too): the "
                    "model reproduces its training images for these conditions. Check it with "
                    "`medgen synth evaluate`, retrain (more data, fewer steps), or raise "
                    "max_draws."
                )
            draws[pos] += 1
            sub_images, sub_masks = draw_images(pos)
            sub = SynthesisResult(
                images=sub_images,
                conditions=table.iloc[pos],
                seed=int(seed),
                guidance_scale=out.guidance_scale,
                masks=sub_masks,
            )
            images[torch.from_numpy(pos)] = sub.images
            if masks is not None and sub_masks is not None:
                masks[torch.from_numpy(pos)] = sub_masks
            sub_memo = gate.check(self, sub).reset_index(drop=True)
            for col in memo.columns:
                values = memo[col].to_numpy().copy()
                values[pos] = sub_memo[col].to_numpy()
                memo[col] = values
        memo.index = pd.Index(items_arr, name="sample")
        memo.attrs = dict(attrs)
        out.memorisation = memo
        out.rejected = (
            pd.concat(rejected, ignore_index=True)
            if rejected
            else pd.DataFrame(columns=["item", "draw", *memo.columns])
        )
        return out

    # ------------------------------------------------------------------ memorisation gate
    def memorisation_gate(self, cohort: Any, *, quantile: float = 0.01) -> Any:
        """The memorisation gate of this model: the images a sample is compared with.

        ``cohort``'s train split must be the model's training data (checked by its hash); its
        val/test real rows are the held-out reference: a sample is a near-copy when it is closer
        to a training image (encoder features, or pixels by NCC) than all but ``quantile`` of
        the held-out images are (:func:`~medgen.generative.synthesis_metrics.memorisation`).

        Returns:
            a ``MemorisationGate``; ``gate.check(syn, samples)`` gives the per-sample table.
        """
        from medgen.generative._synth_eval import build_gate

        self._check_trained("memorisation_gate")
        return build_gate(self, cohort, quantile=quantile)

    def _resolve_gate(self, reference: Any, what: str, quantile: float = 0.01) -> Any:
        from medgen.generative._synth_eval import MemorisationGate

        if isinstance(reference, MemorisationGate):
            return reference
        if reference is True or reference is None:
            if not self.training_manifest or not Path(self.training_manifest).is_file():
                raise MedgenValueError(
                    f"{what}: samples must be checked for copies of training images, but this "
                    "model does not know a readable training manifest "
                    f"({self.training_manifest!r}); pass reference= the training cohort "
                    "(manifest path or Cohort), or allow_copies=True to write unchecked."
                )
            if self._gate is None or self._gate.quantile != quantile:
                self._gate = self.memorisation_gate(self.training_manifest, quantile=quantile)
            return self._gate
        return self.memorisation_gate(reference, quantile=quantile)

    def evaluate(
        self,
        cohort: Any,
        *,
        n: int | None = None,
        by: str | Sequence[str] | None = None,
        target: str | None = "label",
        seed: int = 0,
        classifier_epochs: int = 20,
        kid_subsets: int = 100,
        k: int = 5,
        quantile: float = 0.01,
        figures: bool = True,
    ) -> Any:
        """Quality, conditioning fidelity, TSTR and memorisation against a real cohort.

        Samples are drawn conditioned like the real held-out (val/test) rows (``n=None``: one per
        row; else ``n`` rows drawn from them), then:

        - ``quality``: :func:`~medgen.generative.synthesis_metrics.quality_table` overall and per
          ``by`` column (default: the conditions), each beside its real-vs-real floor;
        - ``fidelity``: a classifier trained on the real train images predicts each condition
          on samples conditioned on it (accuracy, AUC), beside the same on held-out real images;
        - ``tstr``: the ``target`` AUC on the real test images of that classifier trained on
          synthetic images (conditioned like the train rows, row ``synthetic``), on the real
          train images (``real``) and on the model's reconstructions of them
          (``reconstructions``: the best any sampler could do with this decoder);
        - ``near_copies`` / ``memorisation``: the memorisation gate of the samples.

        Features: this model's encoder (trained on real images only; hashed as
        ``weights_sha256``); see docs/synthesis.md.

        Args:
            cohort: the training cohort (manifest path or Cohort): train split = the model's
                training data, val/test = the real reference.
            n: samples to draw (``None``: one per held-out row).
            by: condition columns to split the quality and near-copy tables by.
            target: the TSTR target (a condition), or ``None`` to skip TSTR.
            seed: all randomness (samples, halves, classifiers).
            classifier_epochs: epochs of the fidelity and TSTR classifiers.
            kid_subsets, k: KID subsets, PRDC neighbours.
            quantile: the memorisation gate's held-out quantile.
            figures: keep the arrays the HTML page draws.

        Returns:
            a ``SynthesisEvaluation`` (tables, ``to_html``, ``to_csv``, ``_repr_html_``).
        """
        from medgen.generative._synth_eval import evaluate

        return evaluate(
            self,
            cohort,
            n=n,
            by=by,
            target=target,
            seed=seed,
            classifier_epochs=classifier_epochs,
            kid_subsets=kid_subsets,
            k=k,
            quantile=quantile,
            figures=figures,
        )

    def encode(self, images: Any) -> torch.Tensor:
        """Latents ``Bx[latent shape]`` of images in their own units (each resized and scaled by
        its own robust range, as in training): the posterior mean (``"ldm"``: scaled like the
        diffusion latents). The encoder sees the image only, not its conditions."""
        import torch

        self._check_trained("encode")
        x, _ = self._to_units(images, "encode(images)")
        ae: Any = self.networks()["autoencoder"]
        with torch.no_grad():
            mu, _ = ae.encode(x)
        return mu * (self.scale_factor if self.model == "ldm" else 1.0)

    def decode(
        self, latents: torch.Tensor, conditions: Any = None, *, masks: Any = None
    ) -> torch.Tensor:
        """Images ``Bx1x[SPATIAL]`` (image units: the median training range) of ``latents``.

        Args:
            latents: ``Bx[latent shape]`` (from :meth:`encode`, or ``N(0, I)`` for ``"vae-gan"``).
            conditions: a dict (the same for every latent) or a DataFrame (one row per latent)
                giving every condition; ``None``: unconditioned (``"vae-gan"``: the training
                frequencies' mix of the condition embeddings). ``"ldm"``: the autoencoder is
                unconditional, so conditions are checked but do not change the decoding (they
                steer the diffusion in :meth:`sample` and :meth:`variations`).
            masks: a mask-conditioned model (``mask_condition=True``): the lesion masks to
                decode under, ``Bx1x[SPATIAL]`` or ``Bx[SPATIAL]`` on the model's grid (0..1);
                ``None``: no lesion anywhere.
        """
        import torch

        self._check_trained("decode")
        z = torch.as_tensor(latents, dtype=torch.float32).to(self.device)
        if z.ndim == len(self._latent_shape()):
            z = z[None]
        idx = self._optional_conditions(conditions, z.shape[0], "decode")
        weights = self._weights(idx, z.shape[0]) if self.model == "vae-gan" else None
        m = self._check_masks(masks, z.shape[0], "decode")
        return self._from_units(self._decode_units(z, weights, m))

    def _check_masks(self, masks: Any, n: int, what: str) -> torch.Tensor | None:
        """``masks`` as float ``n x 1 x [SPATIAL]`` (0..1), or ``None``."""
        import torch

        if masks is None:
            return None
        if "mask_bank" not in self.nets:
            raise MedgenValueError(
                f"{what}: masks= needs a mask-conditioned model (Synthesizer(mask_condition="
                "True)); this one decodes from its latents and conditions alone."
            )
        m = torch.as_tensor(np.asarray(masks, dtype=np.float32))
        if m.ndim == len(self.image_size) + 1:
            m = m[:, None]
        if tuple(m.shape) != (n, 1, *self.image_size):
            raise MedgenValueError(
                f"{what}: masks must be {n} x 1 x {'x'.join(map(str, self.image_size))} (one per "
                f"latent, on the model's grid), not {tuple(m.shape)}."
            )
        return m.clamp(0.0, 1.0)

    def _is_latent(self, x: Any) -> bool:
        shape = tuple(np.shape(x))
        lat = self._latent_shape()
        return shape in (lat, (1, *lat)) and lat[1:] != self.image_size

    def interpolate(
        self, a: Any, b: Any, steps: int = 8, *, conditions: Any = None
    ) -> torch.Tensor:
        """``steps`` images from ``a`` to ``b`` (both images or both latents).

        The latents are interpolated spherically (slerp) for ``"vae-gan"``, whose latent is
        Gaussian (``N(0, I)`` prior), and linearly for ``"ldm"`` (its autoencoder's latent is
        only weakly regularised). Endpoints are the reconstructions of ``a`` and ``b``.

        Args:
            a, b: images (in their own units, as for :meth:`encode`) or latents.
            steps: number of images (>= 2), endpoints included.
            conditions: ``None`` (unconditioned), a dict (every step) or a 2-row DataFrame (the
                conditions of ``a`` and ``b``; their embeddings are interpolated linearly).

        Returns:
            ``steps x 1 x [SPATIAL]``: in image units, the intensity range moving linearly from
            ``a``'s to ``b``'s (the median training range for latents).
        """
        import torch

        self._check_trained("interpolate")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
            raise MedgenValueError(f"interpolate: steps must be an integer >= 2, not {steps!r}.")
        latent = [self._is_latent(a), self._is_latent(b)]
        if latent[0] != latent[1]:
            raise MedgenValueError(
                "interpolate: a and b must both be images or both be latents (of shape "
                f"{self._latent_shape()})."
            )
        ranges = None
        if latent[0]:
            za = torch.as_tensor(a, dtype=torch.float32).reshape(self._latent_shape())
            zb = torch.as_tensor(b, dtype=torch.float32).reshape(self._latent_shape())
        else:
            _, r = self._to_units([a, b], "interpolate(a, b)")
            za, zb = self.encode([a, b])
            ranges = r
        ts = [k / (steps - 1) for k in range(steps)]
        if self.model == "vae-gan":
            z = torch.stack([_slerp(za.cpu(), zb.cpu(), t) for t in ts])
        else:
            z = torch.stack([(1 - t) * za.cpu() + t * zb.cpu() for t in ts])
        z = z.to(self.device)
        weights = None
        if self.model == "vae-gan":
            if isinstance(conditions, pd.DataFrame) and len(conditions) == 2:
                idx = self._optional_conditions(conditions, 2, "interpolate")
                wa_wb = self._weights(idx, 2)
                tt = torch.tensor(ts, dtype=torch.float32, device=self.device)[:, None]
                weights = [(1 - tt) * w[0:1] + tt * w[1:2] for w in wa_wb]
            else:
                idx = self._optional_conditions(conditions, steps, "interpolate")
                weights = self._weights(idx, steps)
        out = self._decode_units(z, weights)
        if ranges is None:
            return self._from_units(out)
        t_arr = np.asarray(ts)[:, None]
        per = (1 - t_arr) * ranges[0][None] + t_arr * ranges[1][None]
        return self._from_units(out, per)

    def variations(
        self,
        image: Any,
        n: int = 4,
        strength: float = 0.5,
        *,
        seed: int = 0,
        conditions: Any = None,
        guidance_scale: float | None = None,
    ) -> SynthesisResult:
        """``n`` variations of one image (its own units in, its own units out).

        ``"vae-gan"``: ``z = mu + strength * eps``, decoded with ``conditions``; ``"ldm"``:
        SDEdit (Meng et al. 2022): its latent noised to ``t = strength * T`` and denoised with
        DDIM under ``conditions`` (``None``: unconditioned).

        Args:
            image: one image (as for :meth:`encode`).
            n: number of variations (> 0).
            strength: in (0, 1]: how far from the image (1: about a new sample).
            seed: the source of all randomness.
            conditions: a dict giving every condition, or ``None``.
            guidance_scale: ``"ldm"``: classifier-free guidance (default: the model's).
        """
        import torch

        self._check_trained("variations")
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise MedgenValueError(f"variations: n must be a positive integer, not {n!r}.")
        if not 0.0 < float(strength) <= 1.0:
            raise MedgenValueError(f"variations: strength must be in (0, 1], not {strength!r}.")
        _, r = self._to_units([image], "variations(image)")
        mu = self.encode([image])
        idx = self._optional_conditions(conditions, n, "variations")
        gen = torch.Generator().manual_seed(int(seed))
        eps = torch.randn((n, *self._latent_shape()), generator=gen).to(self.device)
        z0 = mu.expand(n, *mu.shape[1:])
        gs = None
        if self.model == "vae-gan":
            out = self._decode_units(z0 + float(strength) * eps, self._weights(idx, n))
        else:
            from medgen.generative.objectives.conditional import sample_ddim

            gs = self.options["guidance_scale"] if guidance_scale is None else float(guidance_scale)
            dc = self.diffusion_config
            labels = (
                torch.full((n,), dc.null_class, dtype=torch.long)
                if idx is None
                else torch.from_numpy(self._combined(idx))
            ).to(self.device)
            lat = sample_ddim(
                self.networks()["unet"],
                config=dc,
                labels=labels,
                noise=eps,
                num_inference_steps=int(self.options["num_inference_steps"]),
                guidance_scale=gs if idx is not None else 1.0,
                start=float(strength),
                latents=z0,
            )
            out = self._decode_units(lat, None)
        if idx is None:
            table = pd.DataFrame(
                {c: [None] * n for c in self.conditions}, index=pd.RangeIndex(n, name="sample")
            )
        else:
            table = pd.DataFrame(
                {
                    c: [self.vocabulary[c][j] for j in idx[:, k]]
                    for k, c in enumerate(self.conditions)
                },
                index=pd.RangeIndex(n, name="sample"),
            )
        return SynthesisResult(
            images=self._from_units(out, np.repeat(r, n, axis=0)),
            conditions=table,
            seed=int(seed),
            guidance_scale=gs,
        )

    # ------------------------------------------------------------------ writing
    @property
    def weights_sha256(self) -> str:
        """SHA-256 of the inference networks' tensors (names, shapes, bytes): the model's id."""
        if self._weights_sha:
            return self._weights_sha
        h = hashlib.sha256()
        for name, net in sorted(self.networks().items()):
            for key, value in sorted(net.state_dict().items()):
                t = value.detach().cpu().contiguous()
                h.update(f"{name}.{key}{tuple(t.shape)}{t.dtype}".encode())
                h.update(t.numpy().tobytes())
        self._weights_sha = h.hexdigest()
        return self._weights_sha

    @property
    def model_id(self) -> str:
        """``synthesizer-<model>-<first 12 hex digits of weights_sha256>``."""
        return f"synthesizer-{self.model}-{self.weights_sha256[:12]}"

    def write(
        self,
        samples: SynthesisResult,
        out_dir: str | os.PathLike[str],
        *,
        format: str = "nifti",
        split: str = "",
        reference: Any = None,
        allow_copies: bool = False,
        quantile: float = 0.01,
    ) -> Path:
        """Save ``samples`` with :func:`medgen.io.save` (``synthetic=True``) and a manifest.

        **Memorisation gate**: every sample is checked against the training images (encoder
        features and pixels, relative to real held-out images; :meth:`memorisation_gate`)
        unless ``samples`` were already checked (``sample(..., reference=...)``). Near-copies
        are **not written** (logged; ``synthesis.json`` lists them): the folder then holds fewer
        images than ``samples``. ``allow_copies=True`` writes them too, marked
        ``near_copy = True`` in the manifest and ``allow_copies`` in ``synthesis.json``.

        Each image is one synthetic subject: ``image_id`` = ``subject_id`` =
        ``syn-<model hash>-s<seed>-<k>``. DICOM also gets ``SyntheticData = YES``
        (0008,001C); :func:`~medgen.io.save` writes ImageType ``DERIVED\\SECONDARY\\SYNTHETIC``,
        new UIDs and no patient identity. DerivationDescription / NIfTI ``descrip``: the model
        kind, its weights hash and the seed.

        Args:
            samples: what :meth:`sample` (or :meth:`variations`) returned.
            out_dir: a new or empty folder.
            format: ``"nifti"`` or ``"dicom"``.
            split: the ``split`` of the rows (``""`` or ``"train"``).
            reference: the gate's cohort (manifest path, Cohort or gate); ``None``: the
                manifest the model was trained from (:attr:`training_manifest`).
            allow_copies: write near-copies too (and, when no reference can be read, write
                unchecked); said in the manifest and ``synthesis.json``.
            quantile: the gate's held-out quantile.

        Returns:
            The path of the manifest (``manifest.csv``: ``image_id``, ``image_path``,
            ``subject_id``, ``split``, ``source`` = ``synthetic``, the condition columns,
            ``seed``, ``model_id``, ``near_copy``; a mask-conditioned model's samples also
            the ``mask_column`` of each image's lesion mask, saved under ``masks/`` like the
            image), which :meth:`medgen.Cohort.from_manifest` loads. Beside it:
            ``memorisation.csv`` (the gate's table of every sample, with ``image_id`` and
            ``written``) and ``synthesis.json`` (model, seed, counts requested / written /
            dropped, the gate's settings and thresholds).

        Raises:
            OutputPathError: ``out_dir`` exists and is not empty.
            MedgenValueError: an unknown ``format`` or ``split``; no readable reference for the
                gate (pass ``reference=`` or ``allow_copies=True``).
        """
        import json

        from medgen._internal.conditions import check_write_target
        from medgen._internal.files import write_table, write_text_atomic
        from medgen._internal.paths import confined, safe_file_name
        from medgen._internal.provenance import package_versions
        from medgen.generative._synth_write import save_sample

        out = check_write_target(out_dir, format=format, split=split, what="samples")
        memo = samples.memorisation
        if memo is None:
            try:
                memo = self._resolve_gate(reference, "write", quantile).check(self, samples)
            except MedgenValueError:
                if not allow_copies or reference is not None:
                    raise
                log.warning("write: allow_copies=True and no reference: samples written unchecked")
        requested = samples
        flags = (
            np.zeros(len(samples), dtype=bool)
            if memo is None
            else memo["near_copy"].to_numpy(dtype=bool)
        )
        keep = np.ones(len(samples), dtype=bool) if allow_copies else ~flags
        samples = self._fill_rejected(samples, keep)
        ids_all = [
            f"syn-{self.weights_sha256[:12]}-s{samples.seed}-{k:05d}" for k in requested.indices
        ]
        dropped = [ids_all[i] for i in np.flatnonzero(~keep)]
        if dropped:
            log.warning(
                "write: %d of %d samples are near-copies of training images and were not "
                "written (allow_copies=True writes them): %s",
                len(dropped),
                len(requested),
                dropped,
            )
        out.mkdir(parents=True, exist_ok=True)
        if samples.masks is not None:
            (out / "masks").mkdir(exist_ok=True)
        desc = f"medgen {self.model_id} seed {samples.seed}"
        rows = []
        short = self.weights_sha256[:12]
        near_of = dict(zip(ids_all, flags.tolist(), strict=True))
        for k, draw in enumerate(samples.indices):
            iid = safe_file_name(f"syn-{short}-s{samples.seed}-{draw:05d}", what="image_id")
            img = samples.images[k].detach().cpu().numpy().astype(np.float32)
            dicom = format == "dicom"
            name = iid if dicom else f"{iid}.nii.gz"
            mask = mask_name = None
            if samples.masks is not None:  # the lesion mask the image was decoded under
                mask = samples.masks[k].detach().cpu().numpy().astype(np.uint8)
                mask_name = f"masks/{iid}_mask" + ("" if dicom else ".nii.gz")
            save_sample(
                img,
                confined(out, name),
                format=format,
                spatial_dims=int(self.options["spatial_dims"]),
                spacing=self.spacing,
                description=desc,
                mask=mask,
                mask_path=None if mask_name is None else confined(out, mask_name),
            )
            row: dict[str, Any] = {
                "image_id": iid,
                "image_path": name,
                "subject_id": iid,
                "split": split,
                "source": "synthetic",
            }
            if mask_name is not None:
                row[str(self.options["mask_column"])] = mask_name
            for c in self.conditions:
                row[c] = _py(samples.conditions[c].iloc[k])
            row["seed"] = samples.seed
            row["model_id"] = self.model_id
            row["near_copy"] = near_of[iid] if memo is not None else ""
            rows.append(row)
        gate: dict[str, Any] = {"checked": memo is not None, "allow_copies": bool(allow_copies)}
        if memo is not None:
            table = memo.copy()
            table.insert(0, "image_id", ids_all)
            table.insert(1, "written", keep)
            write_table(table.reset_index(), out / "memorisation.csv", what="memorisation table")
            gate.update(
                {
                    "reference": memo.attrs.get("reference"),
                    "quantile": memo.attrs.get("quantile"),
                    "pixel_metric": memo.attrs.get("pixel_metric"),
                    "feature_threshold": memo.attrs.get("feature_threshold"),
                    "pixel_threshold": memo.attrs.get("pixel_threshold"),
                    "n_near_copies": int(flags.sum()),
                }
            )
        info = {
            "model_id": self.model_id,
            "weights_sha256": self.weights_sha256,
            "seed": samples.seed,
            "format": format,
            "n_requested": len(requested),
            "n_written": len(samples),
            "n_dropped": len(dropped),
            "dropped": dropped,
            "near_copies_written": [i for i in ids_all if near_of[i]] if allow_copies else [],
            "memorisation_gate": gate,
            "versions": package_versions(),
        }
        write_text_atomic(out / "synthesis.json", json.dumps(info, indent=1, default=str))
        path = out / MANIFEST
        write_table(pd.DataFrame(rows), path)
        return path

    def _fill_rejected(self, samples: SynthesisResult, keep: np.ndarray) -> SynthesisResult:
        """The samples :meth:`write` writes, given the gate's ``keep`` mask.

        The kept ones: rejected images are dropped, their draw indices ``k`` stay unused, so the
        ids of the others do not change. Batch generation delivers exactly the images asked for
        instead: :meth:`sample_items` with ``gate=`` replaces each rejected draw of item ``i``
        by its next draw, keyed by ``(seed, i, r)`` (:func:`medgen.batch.generate`)."""
        return samples if keep.all() else samples.select(keep)

    # ------------------------------------------------------------------ persistence
    def model_config(self) -> dict[str, Any]:
        """Options, vocabulary, training statistics and normalisation (JSON-able)."""
        return {
            "options": dict(self.options),
            "vocabulary": {k: list(v) for k, v in self.vocabulary.items()},
            "combinations": self.combinations.to_dict("list"),
            "intensity": list(self.intensity),
            "spacing": list(self.spacing),
            "training_manifest": self.training_manifest,
            "scale_factor": self.scale_factor,
            "autoencoder_steps": (
                self.diffusion_config.autoencoder_steps if self.model == "ldm" else None
            ),
            "latent_prior": self._latent_prior_shape(),
            "mask_bank": self._mask_bank_shape(),
            "normalisation": {
                "method": "per-image robust range: (x - low) / (high - low)",
                "percentiles": list(NORM_PERCENTILES),
                "image_id": [str(i) for i in self.normalisation.index],
                "low": [float(v) for v in self.normalisation["low"]],
                "high": [float(v) for v in self.normalisation["high"]],
            },
        }

    @classmethod
    def from_model_config(cls, config: Mapping[str, Any]) -> Self:
        """The untrained synthesizer of a saved :meth:`model_config`."""
        o = dict(config.get("options") or {})
        if config.get("autoencoder_steps") is not None:
            o["autoencoder_steps"] = int(config["autoencoder_steps"])
        obj = cls(**o)
        obj.vocabulary = {str(k): list(v) for k, v in dict(config.get("vocabulary") or {}).items()}
        obj.combinations = pd.DataFrame(dict(config.get("combinations") or {}))
        obj.intensity = tuple(float(v) for v in config.get("intensity") or (0.0, 1.0))  # type: ignore[assignment]
        obj.spacing = [float(v) for v in config.get("spacing") or []] or obj.spacing
        obj.scale_factor = float(config.get("scale_factor") or 1.0)
        tm = config.get("training_manifest")
        obj.training_manifest = str(tm) if tm else None
        norm = dict(config.get("normalisation") or {})
        obj.normalisation = pd.DataFrame(
            {"low": norm.get("low", []), "high": norm.get("high", [])},
            index=pd.Index([str(i) for i in norm.get("image_id", [])], name="image_id"),
        )
        obj._build_configs()
        obj.nets = obj._build_networks()
        shape = config.get("latent_prior")
        if shape:
            from medgen.generative._latent_prior import LatentPrior

            obj.nets["latent_prior"] = LatentPrior(
                int(shape["n_cells"]), int(shape["dim"]), int(shape["rank"])
            )
        elif obj.model == "vae-gan":
            obj.options["latent_prior"] = "normal"  # saved before the fitted prior existed
        bank = config.get("mask_bank")
        if bank:
            from medgen.generative._mask_bank import MaskBank

            obj.nets["mask_bank"] = MaskBank(
                int(bank["n"]), tuple(int(s) for s in bank["spatial"]), int(bank["k"])
            )
        return obj

    def _prior_latents(self, noise: torch.Tensor, index: np.ndarray) -> torch.Tensor:
        """``"vae-gan"``: the latents :meth:`sample` decodes for standard normal ``noise`` under
        the condition indices ``index`` (``N x K``): the fitted prior's, or ``noise`` itself."""
        import torch

        prior = self.nets.get("latent_prior")
        if prior is None:
            return noise
        return prior(noise, torch.from_numpy(self._combined(index)))

    def _latent_prior_shape(self) -> dict[str, int] | None:
        prior: Any = self.nets.get("latent_prior")
        if prior is None:
            return None
        return {"n_cells": prior.n_cells, "dim": int(prior.mean.shape[1]), "rank": prior.rank}

    def _mask_bank_shape(self) -> dict[str, Any] | None:
        bank: Any = self.nets.get("mask_bank")
        return None if bank is None else bank.shape()

    @classmethod
    def train_config_from_dict(cls, d: Mapping[str, Any]) -> Any:
        from medgen.generative.engine import EngineConfig

        return EngineConfig.from_dict(d)

    @classmethod
    def _missing_message(cls, directory: Path) -> str:
        return (
            f"{directory}: not a trained synthesizer run (needs config.json and "
            "model.safetensors); train one with `medgen synth train` or "
            "Synthesizer.fit(..., run_dir=...)."
        )
