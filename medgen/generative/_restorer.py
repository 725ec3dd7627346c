"""What :class:`~medgen.generative.Denoiser` and :class:`~medgen.generative.SuperResolver` share.

A restorer is three separate things (STYLE.md item 11):

- the *network* (:mod:`medgen.generative._nets`),
- the *process* that turns clean images into ``(input, target)`` training pairs and images into
  network inputs at inference (``_make_pair`` / ``_prepare``, defined by each task),
- the *trainer*: the generative engine (:mod:`medgen.generative.engine`) running the
  ``"paired"`` objective (:mod:`medgen.generative.objectives.paired`).

Persistence is :class:`~medgen.generative.GenerativeModel`'s (``config.json`` +
``model.safetensors``); folders of earlier versions (``model.pt``) still load.

Intensities: the network works on images scaled by the *input's* robust range,
``(x - p_lo) / (p_hi - p_lo)`` with ``(p_lo, p_hi)`` the ``norm_percentiles`` of the degraded
image (2D: of its slice; 3D: of the volume or of the training context crop); outputs are mapped
back to the input's units.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from medgen.errors import ConfigError, MedgenValueError
from medgen.generative._checks import check_network, check_patch_size
from medgen.generative._model import GenerativeModel
from medgen.generative._run import CONFIG, LEGACY_WEIGHTS, WEIGHTS

if TYPE_CHECKING:
    from typing import Self

    import torch
    from torch import nn

    from medgen.generative._trainer import TrainConfig

log = logging.getLogger(__name__)

# 2D models run on whole slices up to this size (the U-Net is fully convolutional, without
# normalisation layers: no tile seams, full context, faster; +0.05-0.1 dB mean PSNR over 64-px
# sliding windows in docs/restoration.md); larger slices and 3D volumes use sliding windows.
WHOLE_SLICE_MAX_PIXELS = 1024 * 1024


@dataclass
class RestorationOutput:
    """A restorer's output on a batch: ``image`` ``BxCx[SPATIAL]`` in network units (0..1)."""

    image: torch.Tensor


@dataclass
class RestorerConfig:
    """Network and process options of a restorer (saved in ``config.json``).

    Attributes:
        model: generator name (``"unet"`` or ``"vae"``).
        spatial_dims: 2 (slices; volumes are processed slice by slice along the last axis) or 3
            (patches of volumes).
        channels: feature widths per level of the generator.
        patch_size: training patch edge (pixels/voxels) and sliding-window size at inference.
        discriminator_channels: width of the PatchGAN's first layer (used when training with
            ``adv_weight > 0``).
        norm_percentiles: percentiles of the input giving the 0..1 intensity scale.
        overlap: sliding-window overlap at inference.
        self_ensemble: at inference, average the outputs for the 8 in-plane rotations (by
            multiples of 90 degrees) and flips of the input, each mapped back (Timofte et al.
            2016); 8x the inference time. In docs/restoration.md it added 0.28 dB (Gaussian 0.1)
            and 0.37 dB (0.05) to the benchmark denoiser's mean PSNR. Can be switched on for a
            trained model (``model.config.self_ensemble = True``; CLI ``apply --self-ensemble``).
        model_kwargs: extra generator options (``num_res_units``, ``latent_channels``).
        task_options: the task's own options (noise models and levels; scale and axes).
    """

    model: str = "unet"
    spatial_dims: int = 2
    channels: tuple[int, ...] = (16, 32, 64)
    patch_size: int = 48
    discriminator_channels: int = 16
    norm_percentiles: tuple[float, float] = (0.5, 99.5)
    overlap: float = 0.5
    self_ensemble: bool = False
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    task_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from medgen.generative._nets import check_generator_name

        check_generator_name(self.model)
        check_network(self, "")
        check_patch_size(self, "", minimum=8)
        lo, hi = (float(v) for v in self.norm_percentiles)
        if not 0.0 <= lo < hi <= 100.0:
            raise ConfigError(
                f"norm_percentiles must satisfy 0 <= low < high <= 100, not {self.norm_percentiles}."
            )
        self.norm_percentiles = (lo, hi)
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"overlap must be in [0, 1), not {self.overlap!r}.")


#: the constructor arguments of every restorer that its :class:`RestorerConfig` holds
NETWORK_ARGUMENTS = (
    "model",
    "spatial_dims",
    "channels",
    "patch_size",
    "discriminator_channels",
    "self_ensemble",
    "model_kwargs",
)


def task_config(arguments: Mapping[str, Any], task_options: dict[str, Any]) -> RestorerConfig:
    """The :class:`RestorerConfig` of a restorer's constructor: ``arguments`` holds (at least)
    the :data:`NETWORK_ARGUMENTS` by name (the constructor's ``locals()``), ``task_options`` the
    task's own options."""
    a = {k: arguments[k] for k in NETWORK_ARGUMENTS}
    return RestorerConfig(
        model=a["model"],
        spatial_dims=a["spatial_dims"],
        channels=tuple(a["channels"]),
        patch_size=a["patch_size"],
        discriminator_channels=a["discriminator_channels"],
        self_ensemble=bool(a["self_ensemble"]),
        model_kwargs=dict(a["model_kwargs"] or {}),
        task_options=task_options,
    )


def default_patch_size(spatial_dims: int) -> int:
    """Training patch edge when none is given: 64-px slices; 32-voxel cubes keep 3D training
    tractable on a CPU (the benchmark's recipe, docs/restoration.md)."""
    return 64 if spatial_dims == 2 else 32


def robust_range(x: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """``(low, high)`` percentiles of ``x``; ``high > low`` always (a flat image gets width 1)."""
    lo, hi = (float(v) for v in np.percentile(x, percentiles))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def as_spatial(image: Any, name: str = "image") -> tuple[np.ndarray, np.ndarray | None, bool]:
    """``(array (X, Y[, Z]) float32, affine or None, had_channel)`` from an image-like input.

    MetaTensors and channel-first arrays from :func:`medgen.io.load` must have one channel.
    """
    affine = None
    had_channel = False
    arr: np.ndarray
    try:
        import torch

        if isinstance(image, torch.Tensor):
            from monai.data import MetaTensor

            if isinstance(image, MetaTensor):
                affine = np.asarray(image.affine.detach().cpu().numpy(), dtype=np.float64)
                arr = image.as_tensor().detach().cpu().numpy()
                had_channel = True
            else:
                arr = image.detach().cpu().numpy()
        else:
            arr = np.asarray(image)
    except ImportError:  # pragma: no cover
        arr = np.asarray(image)
    if had_channel:
        if arr.shape[0] != 1:
            raise MedgenValueError(
                f"{name}: expected one channel, got shape {arr.shape}; select a channel "
                "(e.g. img[:1]) or a time point of a 4D series first."
            )
        arr = arr[0]
    if arr.ndim not in (2, 3):
        raise MedgenValueError(
            f"{name}: expected a 2D (X, Y) or 3D (X, Y, Z) image (or a one-channel MetaTensor), "
            f"got shape {arr.shape}."
        )
    if not np.issubdtype(arr.dtype, np.number):
        raise MedgenValueError(f"{name}: expected numbers, got dtype {arr.dtype}.")
    return arr.astype(np.float32), affine, had_channel


def load_images(data: Any) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """Load training data into ``(name, clean array, paired degraded array or None)``.

    ``data`` may be a :class:`~medgen.cohort.Cohort`, a manifest path, a DataFrame manifest, a
    single image, or a sequence of images (arrays, tensors, MetaTensors or paths), or of
    ``(clean, degraded)`` tuples. A manifest with a ``noisy_path`` column gives real pairs (clean
    from ``clean_path`` when present, else ``image_path``; or ``clean``/``noisy`` columns);
    otherwise its ``image_path`` images are the clean images.
    """
    import pandas as pd

    from medgen.io import load

    if isinstance(data, str | os.PathLike) and Path(data).suffix.lower() in (".csv", ".parquet"):
        from medgen.cohort import Cohort

        data = Cohort.from_manifest(data)
    if isinstance(data, pd.DataFrame):
        from medgen.cohort import Cohort

        data = Cohort.from_manifest(data)
    out: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    if type(data).__name__ == "Cohort":
        df = data.df
        root = Path(data.root) if data.root is not None else None
        cols = set(df.columns)
        pair = next(
            (
                (c, n)
                for c, n in (
                    ("clean_path", "noisy_path"),
                    ("clean", "noisy"),
                    ("image_path", "noisy_path"),
                )
                if c in cols and n in cols
            ),
            None,
        )
        for _, row in df.iterrows():
            iid = str(row["image_id"])
            if pair is None:
                arr, _, _ = as_spatial(load(row["image_path"]), f"image {iid}")
                out.append((iid, arr, None))
                continue
            paths = []
            for col in pair:
                p = Path(str(row[col]))
                if not p.is_absolute() and root is not None:
                    p = root / p
                paths.append(p)
            clean_img, noisy_img = load(paths[0]), load(paths[1])
            c, ca, _ = as_spatial(clean_img, f"{pair[0]} of {iid}")
            n, na, _ = as_spatial(noisy_img, f"{pair[1]} of {iid}")
            if c.shape != n.shape:
                raise MedgenValueError(
                    f"image {iid}: {pair[0]} {paths[0]} has shape {c.shape} but {pair[1]} "
                    f"{paths[1]} has shape {n.shape}; pairs must be on the same voxel grid "
                    "(resample one onto the other first)."
                )
            if ca is not None and na is not None and not np.allclose(ca, na, atol=1e-3):
                raise MedgenValueError(
                    f"image {iid}: {pair[0]} and {pair[1]} have different affines "
                    f"({ca.round(3).tolist()} vs {na.round(3).tolist()}); pairs must share "
                    "their geometry."
                )
            out.append((iid, c, n))
        return out
    items = [data] if _is_single_image(data) else list(data)
    if not items:
        raise MedgenValueError("fit: no training images given; pass a Cohort or a list of images.")
    for i, item in enumerate(items):
        if isinstance(item, str | os.PathLike):
            arr, _, _ = as_spatial(load(item), str(item))
            out.append((str(item), arr, None))
        elif isinstance(item, tuple) and len(item) == 2:
            c, _, _ = as_spatial(item[0], f"pair {i} clean")
            n, _, _ = as_spatial(item[1], f"pair {i} noisy")
            if c.shape != n.shape:
                raise MedgenValueError(
                    f"pair {i}: clean has shape {c.shape} but degraded has shape {n.shape}; "
                    "pairs must have the same shape."
                )
            out.append((f"pair{i}", c, n))
        else:
            arr, _, _ = as_spatial(item, f"image {i}")
            out.append((f"image{i}", arr, None))
    return out


def _is_single_image(data: Any) -> bool:
    if isinstance(data, np.ndarray | str | os.PathLike):
        return True
    try:
        import torch

        return isinstance(data, torch.Tensor)
    except ImportError:  # pragma: no cover
        return False


class Restorer(GenerativeModel):
    """Base class: holds a config, a generator and the training history.

    Subclasses set ``task`` (= their model ``kind``), register with
    :func:`~medgen.generative.register_model_kind` and implement ``_make_pair`` (training) and
    ``_prepare`` / ``_output_affine`` (inference).
    """

    task: ClassVar[str] = ""
    # TrainConfig options that differ from TrainConfig's own defaults for this task (the recipe
    # measured in docs/restoration.md); a dict passed to fit() overrides them
    train_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: RestorerConfig) -> None:
        super().__init__()
        self.config = config
        self.train_config: TrainConfig | None = None
        self.network: nn.Module = self._build_generator()
        self.network.eval()

    # ------------------------------------------------------------------ networks
    def _build_generator(self) -> nn.Module:
        from medgen.generative._nets import build_generator

        kwargs = dict(self.config.model_kwargs)
        if self.in_channels > 1:  # condition channels in, the image out
            kwargs["out_channels"] = 1
        return build_generator(
            self.config.model,
            spatial_dims=self.config.spatial_dims,
            in_channels=self.in_channels,
            channels=self.config.channels,
            **kwargs,
        )

    @property
    def in_channels(self) -> int:
        """Network input channels: the image, plus a noise-level map for noise-map denoisers."""
        return 1 + int(bool(self.config.task_options.get("noise_map", False)))

    def _condition(
        self, image: np.ndarray, lo: float, hi: float, sigma: float | None
    ) -> float | None:
        """The value of the constant condition channel for ``image`` (input units, scaled to
        the network by ``(lo, hi)``), or ``None`` when the network has none (the default)."""
        if sigma is not None:
            raise ConfigError(
                f"apply: sigma= is for denoisers with a noise-level map; this {self.task} model "
                "has none."
            )
        return None

    def __repr__(self) -> str:
        c = self.config
        return (
            f"{type(self).__name__}(model={c.model!r}, spatial_dims={c.spatial_dims}, "
            f"channels={c.channels}, {c.task_options})"
        )

    # ------------------------------------------------------------------ training
    def _slices(self, arr: np.ndarray) -> list[np.ndarray]:
        """2D models train on slices along the last axis that contain some foreground."""
        if self.config.spatial_dims == 3:
            if arr.ndim != 3:
                raise MedgenValueError(
                    f"spatial_dims=3 needs volumes (X, Y, Z); got an image of shape {arr.shape}."
                )
            return [arr]
        from medgen.generative.objectives._common import foreground_slices

        return foreground_slices(arr)

    def _make_pair(
        self, clean: np.ndarray, degraded: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """One ``(input, target)`` patch pair in network units, each ``[SPATIAL]``."""
        raise NotImplementedError

    def fit(
        self,
        data: Any,
        *,
        run_dir: str | os.PathLike[str] | None = None,
        config: TrainConfig | Mapping[str, Any] | None = None,
        resume: bool = False,
        overwrite: bool = False,
        progress: bool = True,
        init: str | os.PathLike[str] | None = None,
    ) -> Restorer:
        """Train on clean images (pairs made by the task's degradation) or on real pairs.

        Args:
            data: a Cohort, manifest, image or list of images (see :func:`load_images`).
            run_dir: run folder for checkpoints, ``metrics.csv`` and the final model (new or
                empty unless ``resume`` or ``overwrite``); ``None`` trains in memory. Training
                holds the folder's lock and writes ``run_complete.json`` after the model.
            config: :class:`~medgen.generative.TrainConfig` or a dict of its options.
            resume: continue an interrupted run in ``run_dir`` (identical continuation), or
                train a finished one longer (more ``epochs`` or another ``time_budget_s``).
            overwrite: replace the run in ``run_dir`` (its files only).
            progress: tqdm progress bar.
            init: fine-tune: start from the generator of ``"pretrained:NAME"`` (a model shipped
                with medgen) or of a trained run folder, instead of a random one. It must be
                the same kind and network (model, spatial dims, channels, model options, noise
                map, parameter shapes). Recorded (with its weights' SHA-256) in
                ``train_state.json`` and ``init_source``; with ``resume`` the checkpoint wins
                and ``init`` must be the one the run started with.

        Returns:
            ``self``, trained (the EMA weights when EMA is on).

        Raises:
            RunFolderError: ``run_dir`` holds a finished run, an interrupted one or a model of
                an earlier version (without ``overwrite``/``resume``), or files that are not a
                run's.
            RunLockedError: another process is training into ``run_dir``.
            ConfigError: ``resume`` with other options or data than the run was started with;
                an ``init`` of another kind or network (both named).
        """
        start = _init_state(self, init, run_dir=run_dir, resume=resume)
        if run_dir is None:
            return self._fit(
                data, None, config=config, resume=resume, progress=progress, init=start
            )
        from medgen._internal.runs import run_lock
        from medgen.generative._run import OWNED, check_training, prepare_training

        rd = Path(run_dir).expanduser()
        what = f"{self.task} training run"
        with run_lock(rd, what=what, owned=OWNED):

            def prepare() -> None:
                prepare_training(rd, resume=resume, overwrite=overwrite, what=what)

            early = not resume or overwrite
            if early:  # nothing to check first: refuse (or clear) the folder before loading data
                prepare()
            else:  # the clear refusals now; the marker goes once the resume is checked
                check_training(rd, resume=resume, overwrite=overwrite, what=what)
            self._fit(
                data,
                rd,
                config=config,
                resume=resume,
                progress=progress,
                prepare=None if early else prepare,
                init=start,
            )
            self._write_model(rd)  # weights, config.json, then run_complete.json
        return self

    def _fit(
        self,
        data: Any,
        run_dir: Path | None,
        *,
        config: TrainConfig | Mapping[str, Any] | None,
        resume: bool,
        progress: bool,
        prepare: Any = None,
        init: tuple[dict[str, torch.Tensor], dict[str, str]] | None = None,
    ) -> Restorer:
        """:meth:`fit` without the run folder's lifecycle (the caller holds ``run_dir``'s lock
        and saves the model there); ``init``: the generator state and record of
        :func:`_init_state`."""
        import torch

        from medgen.generative._nets import build_discriminator
        from medgen.generative._trainer import TrainConfig, fit_paired

        if isinstance(config, TrainConfig):
            tc = config
        else:  # the task's measured recipe, then the caller's options
            tc = TrainConfig.from_dict({**self.train_defaults, **dict(config or {})})
        images = load_images(data)
        pool: list[tuple[np.ndarray, np.ndarray | None]] = []
        for _, clean, deg in images:
            cs = self._slices(clean)
            ds = self._slices(deg) if deg is not None else [None] * len(cs)
            if deg is not None and self.config.spatial_dims == 2 and clean.ndim == 3:
                ds = [deg[..., k] for k in range(deg.shape[-1])]
                cs = [clean[..., k] for k in range(clean.shape[-1])]
            pool.extend(zip(cs, ds, strict=True))
        if not pool:
            raise MedgenValueError("fit: the training data hold no usable images.")
        seed = int(tc.seed)
        torch.manual_seed(seed)
        self.network = self._build_generator()
        if init is not None:  # fine-tuning: the init's generator (the checkpoint wins on resume)
            self.network.load_state_dict(init[0], strict=True)
        disc = None
        if tc.adv_weight > 0:
            disc = build_discriminator(
                spatial_dims=self.config.spatial_dims,
                in_channels=2,
                channels=self.config.discriminator_channels,
            )
        bs = tc.batch_size

        def sample_batch(step: int) -> dict[str, torch.Tensor]:
            rng = np.random.default_rng([seed, step])
            xs, ys = [], []
            for _ in range(bs):
                clean, deg = pool[int(rng.integers(len(pool)))]
                x, y = self._make_pair(clean, deg, rng)
                xs.append(x)
                ys.append(y)
            return {  # _make_pair's input may be channel-first already (condition channels)
                "input": torch.from_numpy(_batch_channels(xs, self.config.spatial_dims)),
                "target": torch.from_numpy(_batch_channels(ys, self.config.spatial_dims)),
            }

        import hashlib

        h = hashlib.sha256()
        for iid, clean, deg in images:
            for a in (clean, deg):
                if a is not None:
                    h.update(f"{iid}{a.shape}".encode())
                    h.update(np.ascontiguousarray(a).tobytes())
        self.data_hash = h.hexdigest()
        run_info = {
            "task": self.task,
            "restorer": self._config_dict(),
            "n_images": len(images),
            "data_sha256": self.data_hash,
        }
        if init is not None:
            run_info["init"] = init[1]
        result = fit_paired(
            self.network,
            sample_batch,
            config=tc,
            discriminator=disc,
            run_dir=run_dir,
            resume=resume,
            run_info=run_info,
            progress=progress,
            held=True,
            prepare=prepare,
        )
        self.network = result.inference_networks()["generator"].eval()
        self.record_training(result, train_config=tc, data_hash=self.data_hash)
        self.init_source = None if init is None else dict(init[1])
        return self

    # ------------------------------------------------------------------ patches
    def _crop(
        self, arrays: Sequence[np.ndarray], rng: np.random.Generator, multiple: Sequence[int] = ()
    ) -> list[np.ndarray]:
        """The same random patch from each array (padded when smaller), foreground preferred."""
        p = self.config.patch_size
        shape = arrays[0].shape
        pads = [(0, max(0, p - s)) for s in shape]
        if any(b for _, b in pads):
            arrays = [
                np.pad(a, pads, mode="reflect" if min(a.shape) > 1 else "edge") for a in arrays
            ]
            shape = arrays[0].shape
        ref = arrays[-1]
        thr = float(np.percentile(ref, 90)) * 0.2
        best: tuple[int, ...] = ()
        for attempt in range(8):
            start = []
            for ax, s in enumerate(shape):
                m = multiple[ax] if ax < len(multiple) else 1
                hi = (s - p) // m
                start.append(int(rng.integers(hi + 1)) * m)
            best = tuple(start)
            if attempt == 7 or (attempt == 0 and rng.random() < 0.25):
                break
            sl = tuple(slice(a, a + p) for a in best)
            if np.mean(ref[sl] > thr) > 0.25:
                break
        sl = tuple(slice(a, a + p) for a in best)
        return [np.ascontiguousarray(a[sl]) for a in arrays]

    # ------------------------------------------------------------------ inference
    def __call__(
        self, batch: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> RestorationOutput:
        """Restore a batch ``BxCx[SPATIAL]`` already in network units (see :meth:`apply`).

        2D slices up to ``WHOLE_SLICE_MAX_PIXELS`` go through the network whole; larger slices and
        3D volumes through MONAI's sliding-window inference (``patch_size`` windows, Gaussian
        blending). With ``config.self_ensemble`` the result is the mean over the in-plane
        rotations of :meth:`_ensemble_rotations` (all 4 quarter turns, so 8 passes; 0 and 180
        degrees for a plane that must keep its axes, 4 passes), each also flipped, every result
        mapped back.

        The output is deterministic (VAEs decode the posterior mean); ``generator`` is accepted
        for the common model signature and unused.
        """
        import torch

        if not self.config.self_ensemble:
            return RestorationOutput(image=self._restore(batch))
        plane = (2, 3)  # the first two spatial axes
        total = torch.zeros((batch.shape[0], 1, *batch.shape[2:]), dtype=torch.float32)
        ks = self._ensemble_rotations()
        for k in ks:
            for flip in (False, True):
                x = torch.rot90(batch, k, dims=plane)
                x = torch.flip(x, dims=(3,)) if flip else x
                y = self._restore(x)
                y = torch.flip(y, dims=(3,)) if flip else y
                total += torch.rot90(y, -k, dims=plane)
        return RestorationOutput(image=total / (2 * len(ks)))

    def _restore(self, batch: torch.Tensor) -> torch.Tensor:
        import torch
        from monai.inferers import sliding_window_inference

        net = self.network
        dev = next(net.parameters()).device
        roi = (self.config.patch_size,) * self.config.spatial_dims
        if self.config.spatial_dims == 2 and batch.shape[-2:].numel() <= WHOLE_SLICE_MAX_PIXELS:
            return self._whole(batch.to(dev)).cpu()
        with torch.no_grad():
            out = sliding_window_inference(
                batch.to(dev),
                roi_size=roi,
                sw_batch_size=16,
                predictor=lambda t: net(t).image,
                overlap=self.config.overlap,
                mode="gaussian",
                padding_mode="reflect" if self.config.spatial_dims == 2 else "replicate",
            )
        return torch.as_tensor(out).cpu()

    def _whole(self, batch: torch.Tensor) -> torch.Tensor:
        """The network on whole slices, padded (mirrored) to a multiple of its down-sampling."""
        import torch

        k = 2 ** (len(self.config.channels) - 1)
        h, w = batch.shape[-2:]
        ph, pw = -h % k, -w % k
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = torch.nn.functional.pad(batch, (0, pw, 0, ph), mode=mode) if ph or pw else batch
        per = max(1, (4 * WHOLE_SLICE_MAX_PIXELS) // int(x.shape[-2] * x.shape[-1]))
        with torch.no_grad():  # a few slices at a time: bounded memory for large slices
            outs = [self.network(x[i : i + per]).image for i in range(0, x.shape[0], per)]
        return torch.cat(outs)[..., :h, :w]

    def _prepare(self, arr: np.ndarray) -> np.ndarray:
        """Input image (X, Y[, Z]) -> network-grid image in input units (e.g. upsampled)."""
        return arr

    def _output_affine(self, affine: np.ndarray, ndim: int) -> np.ndarray:
        """The output grid's affine for an input of ``ndim`` spatial axes with ``affine``."""
        return affine

    def _plane_axes(self) -> tuple[int, ...]:
        """The axes a 2D model slices a volume along (the outputs of several are averaged)."""
        return (2,)

    def _ensemble_rotations(self) -> tuple[int, ...]:
        """Self-ensemble: the in-plane rotations (quarter turns), each also flipped."""
        return (0, 1, 2, 3)

    def apply(
        self,
        image: Any,
        *,
        slices: bool = False,
        sigma: float | None = None,
        batch_size: int = 16,
    ) -> Any:
        """Restore one image in its own units.

        Args:
            image: a one-channel MetaTensor ``(1, X, Y[, Z])`` (from :func:`medgen.io.load`), or
                an array/tensor ``(X, Y)`` / ``(X, Y, Z)``.
            slices: let a 2D model (``spatial_dims=2``) restore a volume slice by slice along
                its last axis (Z). Volumes of one slice need no flag, nor does a 2D through-plane
                super-resolver, which restores a volume's (Y, Z) and (X, Z) planes.
            sigma: noise s.d. in the image's units, for denoisers with a noise-level map
                (``Denoiser(noise_map=True)``); estimated from the image when ``None``.
            batch_size: slices per forward pass.

        Returns:
            The same type as ``image``: a MetaTensor keeps its metadata, with the affine (and
            ``meta["spacing"]``) of the output grid; arrays come back as float32 arrays.

        Raises:
            MedgenValueError: a 2D image for a 3D model, or a volume for a 2D model without
                ``slices=True``.
            ConfigError: ``sigma`` for a model without a noise-level map.
        """
        import torch

        arr, affine, had_channel = as_spatial(image, "apply(image)")
        if self.config.spatial_dims == 3 and arr.ndim != 3:
            raise MedgenValueError(
                f"apply: this model is 3D (spatial_dims=3) but the image has shape {arr.shape}; "
                "use a 2D model for 2D images."
            )
        planes = self._plane_axes()
        # slicing along Z needs the caller's consent (a 2D in-plane model may be the wrong model
        # for a volume); a model whose planes run along X and Y is a volume model by definition
        if (
            self.config.spatial_dims == 2
            and arr.ndim == 3
            and arr.shape[-1] > 1
            and not slices
            and planes == (2,)
        ):
            raise MedgenValueError(
                f"apply: this model is 2D but the image is a volume of shape {arr.shape}; pass "
                "slices=True to restore it slice by slice along the last axis (Z), or use a 3D "
                "model (spatial_dims=3)."
            )
        lo, hi = robust_range(arr, self.config.norm_percentiles)
        level = self._condition(arr, lo, hi, sigma)
        prepared = self._prepare(arr)
        x = (prepared - lo) / (hi - lo)

        def net_input(a: np.ndarray) -> torch.Tensor:  # BxCx[SPATIAL] with the condition
            t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
            if level is None:
                return t
            return torch.cat([t, torch.full_like(t, level)], dim=1)

        if self.config.spatial_dims == 2 and x.ndim == 3:
            results = []
            for ax in planes:  # slice by slice along each axis; the results averaged
                stack = np.moveaxis(x, ax, 0)[:, None]
                outs = []
                for i in range(0, stack.shape[0], batch_size):
                    outs.append(self(net_input(stack[i : i + batch_size])).image.numpy())
                results.append(np.moveaxis(np.concatenate(outs)[:, 0], 0, ax))
            y = (
                results[0]
                if len(results) == 1
                else np.asarray(np.mean(results, axis=0), np.float32)
            )
        else:
            y = self(net_input(x[None, None])).image.numpy()[0, 0]
        y = (y * (hi - lo) + lo).astype(np.float32)
        if not had_channel:
            if isinstance(image, np.ndarray):
                return y
            return torch.from_numpy(y)
        from monai.data import MetaTensor

        new_aff = self._output_affine(affine, arr.ndim) if affine is not None else None
        meta = dict(getattr(image, "meta", {}) or {})
        if new_aff is not None:
            meta["spacing"] = tuple(float(v) for v in np.linalg.norm(new_aff[:3, :3], axis=0))
        meta.pop("affine", None)
        meta["restoration"] = {"task": self.task, **self._config_dict()}
        return MetaTensor(torch.from_numpy(y[None]), affine=torch.as_tensor(new_aff), meta=meta)

    @property
    def description(self) -> str:
        """One line naming the model, for DICOM DerivationDescription / NIfTI descrip."""
        c = self.config
        if self.pretrained_name:
            sha = (self.pretrained_sha256 or "")[:12]
            return f"medgen {self.task} pretrained:{self.pretrained_name} {sha}"[:64]
        opts = ",".join(f"{k}={v}" for k, v in sorted(c.task_options.items()))
        return f"medgen {self.task} {c.model} {c.spatial_dims}D {opts}"[:64]

    # ------------------------------------------------------------------ persistence
    def _config_dict(self) -> dict[str, Any]:
        d = asdict(self.config)
        d["channels"] = list(self.config.channels)
        d["norm_percentiles"] = list(self.config.norm_percentiles)
        return json.loads(json.dumps(d, default=list))

    def networks(self) -> dict[str, nn.Module]:
        """``{"generator": the (EMA) generator}``: what :meth:`save` writes."""
        return {"generator": self.network}

    def model_config(self) -> dict[str, Any]:
        """The :class:`RestorerConfig` as JSON-able values."""
        return self._config_dict()

    @classmethod
    def from_model_config(cls, config: Mapping[str, Any]) -> Self:
        """The untrained restorer of a saved :class:`RestorerConfig` dict."""
        known = {f.name for f in fields(RestorerConfig)}
        rc = {k: v for k, v in dict(config).items() if k in known}
        rc["channels"] = tuple(rc.get("channels", RestorerConfig.channels))
        if "norm_percentiles" in rc:
            rc["norm_percentiles"] = tuple(rc["norm_percentiles"])
        obj = cls.__new__(cls)
        Restorer.__init__(obj, RestorerConfig(**rc))
        return obj

    @classmethod
    def train_config_from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        from medgen.generative._trainer import TrainConfig

        return TrainConfig.from_dict(d)

    def _extra_meta(self) -> dict[str, Any]:
        return {"task": self.task}  # the key of earlier versions

    @classmethod
    def _upgrade_meta(cls, meta: dict[str, Any]) -> dict[str, Any]:
        if "kind" not in meta and "task" in meta:  # config.json + model.pt of earlier versions
            meta = {
                **meta,
                "kind": meta["task"],
                "model": meta.get("restorer") or {},
                "weights": {"file": LEGACY_WEIGHTS, "format": "torch", "network": "generator"},
            }
        return meta

    @classmethod
    def _missing_message(cls, directory: Path) -> str:
        return (
            f"{directory}: not a trained {cls.task} run (needs {CONFIG} and {WEIGHTS}, or "
            f"{LEGACY_WEIGHTS} of earlier versions); train one with `medgen {cls.task} train` "
            f"or {cls.__name__}.fit(..., run_dir=...)."
        )


def _batch_channels(arrays: Sequence[np.ndarray], spatial_dims: int) -> np.ndarray:
    """``BxCx[SPATIAL]`` float32 from ``[SPATIAL]`` or ``Cx[SPATIAL]`` arrays."""
    out = np.stack(arrays).astype(np.float32)
    return out[:, None] if out.ndim == spatial_dims + 1 else out


def _init_state(
    restorer: Restorer,
    init: str | os.PathLike[str] | None,
    *,
    run_dir: str | os.PathLike[str] | None,
    resume: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """``(generator state dict, {"source", "sha256"})`` of ``fit(init=...)``, or ``None``.

    Refuses (``ConfigError``, naming both) an init of another kind or network than
    ``restorer``, and a resume whose run was started with another init (or none)."""
    from medgen._internal.provenance import file_sha256
    from medgen.generative._model import load
    from medgen.generative._pretrained import parse_pretrained
    from medgen.generative._run import TRAIN_STATE

    record: dict[str, str] | None = None
    src: Any = None
    if init is not None:
        if parse_pretrained(init) is not None:
            src = load(os.fspath(init))
            record = {"source": os.fspath(init), "sha256": str(src.pretrained_sha256)}
        else:
            folder = Path(init).expanduser().resolve()
            src = load(folder)
            weights = folder / WEIGHTS if (folder / WEIGHTS).is_file() else folder / LEGACY_WEIGHTS
            record = {"source": str(folder), "sha256": file_sha256(weights)}
    state_file = Path(run_dir).expanduser() / TRAIN_STATE if run_dir is not None else None
    if resume and state_file is not None and state_file.is_file():
        try:
            old = json.loads(state_file.read_text(encoding="utf-8")).get("run_info", {})
        except (OSError, ValueError, AttributeError):
            old = {}  # the engine names the damaged file
        if isinstance(old, dict) and old.get("init") != record:
            was = (old.get("init") or {}).get("source")
            raise ConfigError(
                f"fit(resume=True): the run in {state_file.parent} was started with "
                f"init={was!r}, not init={None if record is None else record['source']!r} "
                "(or its weights changed since); resume with the same init (--init), or start "
                "a new run folder."
            )
    if src is None or record is None:
        return None
    where = f"init={record['source']!r}"
    if src.kind != restorer.kind or not isinstance(src, Restorer):
        raise ConfigError(
            f"{where} holds a {src.kind!r} model; a {restorer.kind!r} model fine-tunes only from "
            f"a {restorer.kind!r} model (a run of `medgen {restorer.kind} train` or a pretrained "
            f"{restorer.kind!r} model: `medgen pretrained`)."
        )

    def network(c: RestorerConfig) -> dict[str, Any]:
        return {
            "model": c.model,
            "spatial_dims": c.spatial_dims,
            "channels": list(c.channels),
            "model_kwargs": dict(c.model_kwargs),
            "noise_map": bool(c.task_options.get("noise_map", False)),
        }

    theirs, mine = network(src.config), network(restorer.config)
    differ = [k for k in mine if mine[k] != theirs[k]]
    shapes = {k: tuple(v.shape) for k, v in src.network.state_dict().items()}
    own = {k: tuple(v.shape) for k, v in restorer.network.state_dict().items()}
    if not differ and shapes != own:
        keys = [k for k in sorted(set(shapes) | set(own)) if shapes.get(k) != own.get(k)]
        differ = [f"parameter {k} {shapes.get(k)} vs {own.get(k)}" for k in keys[:3]]
    if differ:
        show = ", ".join(f"{k}={theirs[k]!r} vs {mine[k]!r}" for k in differ if k in mine)
        raise ConfigError(
            f"{where} is another network than this {type(restorer).__name__} (differs in "
            f"{show or ', '.join(differ)}: init vs this model); build the model with the init's "
            f"options (CLI: leave the network options out with --init), or train without init."
        )
    state = {k: v.detach().cpu().clone() for k, v in src.network.state_dict().items()}
    return state, record
