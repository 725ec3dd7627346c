"""Restoration quality per image and per subgroup: PSNR and SSIM, whole image and foreground.

:func:`evaluate` degrades every clean image of a cohort the way the model was trained to undo
(noise for a :class:`~medgen.generative.Denoiser`, down-sampling for a
:class:`~medgen.generative.SuperResolver`), restores it with the classical baselines and the
model, and returns a tidy table, one row per ``(image_id, method)``. :func:`summarize` groups it
(by ``method`` and any manifest attribute: is denoising worse for one site?).

Definitions (clean image ``x``, restored ``y``, in the clean image's units):

- ``data_range = max(x) - min(x)`` (stated in the table);
- ``psnr = 10 log10(data_range^2 / mean((x - y)^2))`` over the whole image (identical to
  :func:`skimage.metrics.peak_signal_noise_ratio` with that ``data_range``), ``psnr_fg`` over the
  foreground mask only;
- ``ssim``: :func:`skimage.metrics.structural_similarity` (7-voxel window, Gaussian-free, the
  scikit-image defaults) averaged over the image; ``ssim_fg``: its SSIM map averaged over the mask;
- foreground mask: ``x >`` Otsu threshold, holes filled, dilated by 2 voxels.

Super-resolution baselines (``SR_BASELINES``): ``"bicubic"`` (in plane,
:func:`~medgen.generative.baselines.upsample`), and for thick slices (``axes="through"``)
``"cubic_z"`` (:func:`upsample_z`: cubic B-spline along Z only), ``"linear_z"`` (linear along Z:
what a through-plane :class:`~medgen.generative.SuperResolver` refines) and ``"nearest"``. All lie
on the model's fine grid: fine voxel ``i`` has its centre at coarse index ``(i + 0.5) / f - 0.5``
(:func:`medgen.generative.superres.output_affine`).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from medgen.errors import ConfigError, MedgenValueError, MetricWarning

log = logging.getLogger(__name__)

__all__ = [
    "METRICS",
    "SR_BASELINES",
    "evaluate",
    "foreground_mask",
    "image_metrics",
    "summarize",
    "upsample_z",
]

METRICS = ("psnr", "ssim", "psnr_fg", "ssim_fg")
#: super-resolution baselines by the ``axes`` they serve
SR_BASELINES: dict[str, tuple[str, ...]] = {
    "inplane": ("bicubic", "nearest"),
    "through": ("cubic_z", "linear_z", "nearest"),
}


def upsample_z(image: Any, factor: int, *, order: int = 3) -> np.ndarray:
    """Spline interpolation of a volume ``(X, Y, Z)`` onto a grid ``factor`` times finer along Z.

    :func:`scipy.ndimage.zoom` along the last axis only (``order=3``: cubic B-spline, the
    ``"cubic_z"`` baseline; ``order=1``: linear), with ``grid_mode=True`` so that fine slice ``i``
    has its centre at coarse index ``(i + 0.5) / factor - 0.5`` (the grid of
    :func:`medgen.generative.superres.output_affine` and of a block-averaged thick slice), and
    ``mode="reflect"`` at the ends (the volume mirrored about its first and last slice edges).
    X and Y are untouched.

    Returns:
        float32 array ``(X, Y, Z * factor)`` in the input's units.

    Example:
        >>> import numpy as np
        >>> z = np.arange(32, dtype=np.float32)
        >>> vol = np.broadcast_to(z, (4, 4, 32))  # linear along Z
        >>> fine = upsample_z(vol, 4)
        >>> fine.shape
        (4, 4, 128)
        >>> bool(np.allclose(fine[0, 0, 48:80], (np.arange(48, 80) + 0.5) / 4 - 0.5, atol=1e-4))
        True
    """
    from scipy import ndimage

    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 3:
        raise MedgenValueError(
            f"upsample_z: expected a volume (X, Y, Z), got shape {a.shape}; through-plane "
            "interpolation needs the slices along the last axis."
        )
    if isinstance(factor, bool) or not isinstance(factor, int | np.integer) or factor < 1:
        raise MedgenValueError(f"upsample_z: factor must be a positive integer, not {factor!r}.")
    if order not in (0, 1, 2, 3, 4, 5):
        raise MedgenValueError(f"upsample_z: order must be a spline order 0..5, not {order!r}.")
    out = ndimage.zoom(a, (1.0, 1.0, float(factor)), order=order, mode="reflect", grid_mode=True)
    return np.ascontiguousarray(out, dtype=np.float32)


def _sr_baseline(method: str, low: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """The baseline ``method`` (one of ``SR_BASELINES``) on the coarse image ``low``."""
    from medgen.generative.baselines import upsample

    if method == "cubic_z":
        return upsample_z(low, factors[-1], order=3)
    if method == "linear_z":  # the interpolation a through-plane SuperResolver refines
        return upsample(low, factors)
    return upsample(low, factors, mode="nearest" if method == "nearest" else "bicubic")


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """Boolean foreground of a clean image: above Otsu's threshold, holes filled, dilated by 2."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    a = np.asarray(image, dtype=np.float64)
    if float(a.max()) <= float(a.min()):
        return np.ones(a.shape, dtype=bool)
    m = a > threshold_otsu(a.ravel())
    m = ndimage.binary_fill_holes(m)
    m = ndimage.binary_dilation(m, iterations=2)
    return np.asarray(m, dtype=bool)


def image_metrics(
    clean: np.ndarray,
    restored: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    data_range: float | None = None,
) -> dict[str, float]:
    """PSNR/SSIM of ``restored`` against ``clean`` (same shape), whole and inside ``mask``."""
    from skimage.metrics import structural_similarity

    x = np.squeeze(np.asarray(clean, dtype=np.float64))
    y = np.squeeze(np.asarray(restored, dtype=np.float64))
    if x.shape != y.shape:
        raise MedgenValueError(
            f"image_metrics: clean has shape {x.shape} but restored has shape {y.shape}; they "
            "must be on the same grid."
        )
    dr = float(x.max() - x.min()) if data_range is None else float(data_range)
    if dr <= 0:
        warnings.warn(
            "image_metrics: the clean image is constant (data range 0), so PSNR/SSIM are "
            "undefined; reported as NaN. Leave empty images out of the evaluation.",
            MetricWarning,
            stacklevel=2,
        )
        nan = float("nan")
        return {
            "psnr": nan,
            "ssim": nan,
            "psnr_fg": nan,
            "ssim_fg": nan,
            "data_range": 0.0,
            "foreground_fraction": 0.0,
        }
    m = foreground_mask(x) if mask is None else np.squeeze(np.asarray(mask, dtype=bool))
    err = (x - y) ** 2
    win = min(7, *x.shape)
    win -= 1 - win % 2
    if win < 3:
        ssim_map = np.full(x.shape, np.nan)
    else:
        _, ssim_map = structural_similarity(x, y, data_range=dr, win_size=win, full=True)

    def psnr(mse: float) -> float:
        return float("inf") if mse == 0 else float(10.0 * np.log10(dr**2 / mse))

    return {
        "psnr": psnr(float(err.mean())),
        "ssim": float(np.mean(ssim_map)),
        "psnr_fg": psnr(float(err[m].mean())) if m.any() else float("nan"),
        "ssim_fg": float(np.mean(ssim_map[m])) if m.any() else float("nan"),
        "data_range": dr,
        "foreground_fraction": float(m.mean()),
    }


def _items(data: Any) -> list[dict[str, Any]]:
    """``[{"image_id", "image": array (X, Y[, Z]), <attributes>}]`` from a cohort or images."""
    import pandas as pd

    from medgen.generative._restorer import as_spatial, load_images

    if isinstance(data, str) or hasattr(data, "__fspath__") or isinstance(data, pd.DataFrame):
        from medgen.cohort import Cohort

        data = Cohort.from_manifest(data)
    if type(data).__name__ == "Cohort":
        from medgen.io import load

        out = []
        attrs = list(data.attributes)
        for _, row in data.df.iterrows():
            arr, _, _ = as_spatial(load(row["image_path"]), f"image {row['image_id']}")
            rec = {"image_id": str(row["image_id"]), "image": arr}
            rec.update({a: row[a] for a in attrs})
            out.append(rec)
        return out
    return [{"image_id": n, "image": c} for n, c, _ in load_images(data)]


def evaluate(
    model: Any,
    data: Any,
    *,
    task: str | None = None,
    noise: str = "gaussian",
    sigma: float = 0.1,
    photons: float = 1000.0,
    scale: int | None = None,
    axes: str | None = None,
    baselines: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Any:
    """Restoration quality of ``model`` and the baselines on every image of ``data``.

    Args:
        model: a trained :class:`~medgen.generative.Denoiser` or
            :class:`~medgen.generative.SuperResolver`, or ``None`` for baselines only (then
            ``task`` is required).
        data: a :class:`~medgen.cohort.Cohort` (its attributes are copied into the table for
            subgroup analysis), a manifest, or images (arrays ``(X, Y[, Z])``, MetaTensors, paths).
            These are the *clean* references.
        task: ``"denoise"`` or ``"superres"``; taken from ``model`` when given.
        noise, sigma, photons: the degradation for denoising (:func:`medgen.simulate.degrade`:
            ``"gaussian"``, ``"rician"`` or ``"poisson_gaussian"``; ``sigma`` is the Gaussian
            s.d. relative to each clean image's range; ``photons``, for ``"poisson_gaussian"``
            only, the expected counts at the top of that range, so the Poisson s.d. in image
            units is ``sqrt(range * (x - min) / photons)``: lower = noisier, e.g. low-dose CT).
        scale: super-resolution factor when ``model`` is None (else the model's).
        axes: super-resolution ``"inplane"`` (2D slices or volumes, X and Y) or ``"through"``
            (volumes ``(X, Y, Z)``, thick slices along Z) when ``model`` is None (default
            ``"inplane"``); else the model's.
        baselines: methods to compare; default all denoising baselines that are installed
            (``nl_means``, ``tv``, ``wavelet``, ``bm3d``); for SR ``["bicubic"]`` in plane and
            ``["cubic_z"]`` through plane (any of ``SR_BASELINES[axes]``).
        seed: noise seed of the first image (image ``i`` uses ``seed + i``).
        progress: tqdm bar over images.

    Returns:
        DataFrame with one row per image and method: ``image_id``, ``method`` (``"input"``, each
        baseline, ``"model"``), ``psnr``, ``ssim``, ``psnr_fg``, ``ssim_fg`` (dB / unitless),
        ``data_range``, ``foreground_fraction``, ``seconds``, ``seconds_per_slice``,
        ``n_slices``, the degradation (``noise``, ``sigma``, ``photons``, ``scale``, ``axes``)
        and the cohort's attributes. Group it with :func:`summarize`.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from medgen.generative.baselines import DENOISERS, bm3d_available, denoise_baseline
    from medgen.generative.superres import AXES

    task = getattr(model, "task", None) or task
    if task not in ("denoise", "superres"):
        raise ConfigError(f"evaluate: task must be 'denoise' or 'superres', not {task!r}.")
    if axes is not None and axes not in AXES:
        raise ConfigError(f"evaluate: axes must be one of {AXES}, not {axes!r}.")
    if task == "superres":
        from medgen.generative.superres import SuperResolver

        if model is None:
            ax = axes or "inplane"
            sr = SuperResolver(
                scale=scale or 2,
                axes=ax,
                spatial_dims=3 if ax == "through" else 2,
                channels=(4, 8),
                patch_size=16,
            )
        else:
            sr = model
        if scale is not None and model is not None and scale != model.scale:
            raise ConfigError(
                f"evaluate: scale={scale} but the model was trained for x{model.scale}."
            )
        if axes is not None and model is not None and axes != model.axes:
            raise ConfigError(
                f"evaluate: axes={axes!r} but the model super-resolves axes={model.axes!r}; "
                "leave axes out when a model is given."
            )
        allowed = SR_BASELINES[sr.axes]
        methods = list(baselines) if baselines is not None else [allowed[0]]
        bad = [m for m in methods if m not in allowed]
        if bad:
            raise ConfigError(
                f"evaluate: unknown baseline(s) {bad} for super-resolution axes={sr.axes!r}; "
                f"choose from {list(allowed)}."
            )
    else:
        methods = (
            list(baselines)
            if baselines is not None
            else [m for m in DENOISERS if m != "bm3d" or bm3d_available()]
        )
        bad = [m for m in methods if m not in DENOISERS]
    if bad:
        raise ConfigError(
            f"evaluate: unknown baseline(s) {bad} for task {task!r}; choose from {list(DENOISERS)}."
        )

    rows: list[dict[str, Any]] = []
    items = _items(data)
    for i, item in enumerate(tqdm(items, disable=not progress, desc="evaluate", leave=False)):
        clean = item["image"]
        attrs = {k: v for k, v in item.items() if k not in ("image", "image_id")}
        if task == "superres":
            fac = sr.factors(clean.ndim)
            clean = clean[tuple(slice(0, s - s % f) for s, f in zip(clean.shape, fac, strict=True))]
            degraded = sr.downsample(clean)
            extra: dict[str, Any] = {
                "noise": None,
                "sigma": None,
                "photons": None,
                "scale": sr.scale,
                "axes": sr.axes,
            }
        else:
            from medgen.simulate import degrade

            pg = noise == "poisson_gaussian"
            degraded = np.asarray(
                degrade(clean, noise=noise, sigma=sigma, photons=photons, seed=seed + i).degraded
            )
            extra = {
                "noise": noise,
                "sigma": sigma,
                "photons": photons if pg else None,
                "scale": None,
                "axes": None,
            }
        n_slices = clean.shape[-1] if clean.ndim == 3 else 1
        mask = foreground_mask(np.squeeze(clean))
        outputs: list[tuple[str, np.ndarray, float]] = []
        if task == "denoise":
            outputs.append(("input", degraded, 0.0))
        for m in methods:
            t0 = time.perf_counter()
            if task == "superres":
                out = _sr_baseline(m, degraded, sr.factors(clean.ndim))
            else:
                out = denoise_baseline(degraded, m)
            outputs.append((m, out, time.perf_counter() - t0))
        if model is not None:
            t0 = time.perf_counter()
            # a 2D model restores a volume slice by slice along Z
            per_slice = degraded.ndim == 3 and model.config.spatial_dims == 2
            out = np.asarray(
                model.apply(degraded, slices=True) if per_slice else model.apply(degraded)
            )
            outputs.append(("model", out, time.perf_counter() - t0))
        for name, out, secs in outputs:
            met = image_metrics(clean, out, mask=mask)
            rows.append(
                {
                    "image_id": item["image_id"],
                    "method": name,
                    **met,
                    "seconds": secs,
                    "seconds_per_slice": secs / n_slices,
                    "n_slices": n_slices,
                    **extra,
                    **attrs,
                }
            )
    return pd.DataFrame(rows)


def summarize(
    table: Any, by: Sequence[str] = ("method",), *, metrics: Sequence[str] = METRICS
) -> Any:
    """Mean metrics and seconds per slice per group (e.g. ``by=("site", "method")``), indexed
    by ``by``, with ``n_images``."""
    by = list(by)
    missing = [c for c in by if c not in table.columns]
    if missing:
        raise MedgenValueError(
            f"summarize: column(s) {missing} not in the table; available: {list(table.columns)}."
        )
    cols = [*metrics, "seconds_per_slice"]
    out = table.groupby(by, dropna=False)[cols].mean()
    out["n_images"] = table.groupby(by, dropna=False)["image_id"].nunique()
    return out
