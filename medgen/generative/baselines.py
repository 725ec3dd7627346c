"""Classical restoration baselines the learned models are measured against.

Denoising (``DENOISERS``), all on 2D or 3D arrays in their own units, with the noise level
estimated by :func:`skimage.restoration.estimate_sigma` when not given:

- ``"nl_means"``: :func:`skimage.restoration.denoise_nl_means` (``h = 0.8 sigma``, 5x5 patches,
  search distance 6, ``fast_mode``, ``sigma`` passed; Buades et al. 2005; the settings of
  scikit-image's gallery example);
- ``"tv"``: :func:`skimage.restoration.denoise_tv_chambolle`, ``weight = sigma`` (Chambolle 2004);
- ``"wavelet"``: :func:`skimage.restoration.denoise_wavelet`, BayesShrink, soft thresholds;
- ``"bm3d"``: :func:`bm3d.bm3d` (Dabov et al. 2007; the optional ``bm3d`` extra:
  ``pip install 'medgen[bm3d]'``), 2D, slice by slice for volumes.

Images are scaled to their ``(min, max)`` range before filtering and back afterwards, so the
parameters mean the same thing for MR (arbitrary units) and CT (HU).

Super-resolution: :func:`upsample` (bicubic in 2D and slice-wise in plane, trilinear in 3D).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from medgen.errors import ConfigError, MedgenValueError

__all__ = ["DENOISERS", "bm3d_available", "denoise_baseline", "estimate_noise", "upsample"]

DENOISERS = ("nl_means", "tv", "wavelet", "bm3d")


def estimate_noise(image: np.ndarray) -> float:
    """Noise s.d. in the image's units (:func:`skimage.restoration.estimate_sigma`, wavelet MAD).

    Volumes: the mean of the per-slice estimates along the last axis.
    """
    from skimage.restoration import estimate_sigma

    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 3:
        return float(np.mean([estimate_sigma(a[..., k]) for k in range(a.shape[-1])]))
    return float(estimate_sigma(a))


def _nl_means(x: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    return np.asarray(
        denoise_nl_means(
            x, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True
        )
    )


def _tv(x: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return np.asarray(denoise_tv_chambolle(x, weight=max(sigma, 1e-6)))


def _wavelet(x: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_wavelet

    return np.asarray(
        denoise_wavelet(x, sigma=sigma, method="BayesShrink", mode="soft", rescale_sigma=True)
    )


def _bm3d(x: np.ndarray, sigma: float) -> np.ndarray:
    from medgen._internal.lazy import optional_import

    bm3d = optional_import("bm3d", extra="bm3d", purpose="the 'bm3d' baseline")
    if x.ndim == 3:
        return np.stack(
            [np.asarray(bm3d.bm3d(x[..., k], sigma_psd=sigma)) for k in range(x.shape[-1])], -1
        )
    return np.asarray(bm3d.bm3d(x, sigma_psd=sigma))


_FUNCS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "nl_means": _nl_means,
    "tv": _tv,
    "wavelet": _wavelet,
    "bm3d": _bm3d,
}


def bm3d_available() -> bool:
    """Whether the optional ``bm3d`` package is installed."""
    import importlib.util

    return importlib.util.find_spec("bm3d") is not None


def denoise_baseline(image: Any, method: str, *, sigma: float | None = None) -> np.ndarray:
    """Denoise ``image`` (``(X, Y)`` or ``(X, Y, Z)``, any units) with a classical method.

    Args:
        image: array or tensor.
        method: one of ``DENOISERS``.
        sigma: noise s.d. in the image's units; estimated with :func:`estimate_noise` if None.

    Returns:
        float32 array of the input's shape and units.

    Example:
        >>> import numpy as np
        >>> from skimage.data import camera
        >>> clean = camera()[::4, ::4] / 255.0
        >>> noisy = clean + np.random.default_rng(0).normal(0, 0.1, clean.shape)
        >>> out = denoise_baseline(noisy, "tv")
        >>> bool(np.abs(out - clean).mean() < np.abs(noisy - clean).mean())
        True
    """
    if method not in _FUNCS:
        raise ConfigError(f"method={method!r} is not a baseline; choose one of {DENOISERS}.")
    a = np.asarray(image, dtype=np.float64)
    if a.ndim not in (2, 3):
        raise MedgenValueError(f"denoise_baseline: expected a 2D or 3D image, got shape {a.shape}.")
    lo, hi = float(a.min()), float(a.max())
    width = hi - lo if hi > lo else 1.0
    s = estimate_noise(a) if sigma is None else float(sigma)
    out = _FUNCS[method]((a - lo) / width, s / width)
    return (out * width + lo).astype(np.float32)


def upsample(image: Any, factors: Sequence[int], *, mode: str = "auto") -> np.ndarray:
    """Interpolate ``image`` (``(X, Y)`` or ``(X, Y, Z)``) onto a grid finer by ``factors``.

    ``mode="auto"``: bicubic for 2D images and for in-plane factors ``(f, f, 1)`` on volumes
    (slice by slice), trilinear otherwise. Pixel centres follow the block-average convention of
    :func:`medgen.simulate.degrade` (``align_corners=False``), so ``upsample(degrade(x))`` is on
    ``x``'s grid.
    """
    import torch
    import torch.nn.functional as F

    a = np.asarray(image, dtype=np.float32)
    fac = tuple(int(f) for f in factors)
    if len(fac) != a.ndim or any(f < 1 for f in fac):
        raise MedgenValueError(
            f"upsample: factors {factors!r} must be one positive integer per axis of the image "
            f"(shape {a.shape})."
        )
    if mode not in ("auto", "bicubic", "trilinear", "nearest"):
        raise ConfigError(f"upsample: mode must be auto/bicubic/trilinear/nearest, not {mode!r}.")
    t = torch.from_numpy(np.ascontiguousarray(a))
    if a.ndim == 2 or (mode in ("auto", "bicubic") and fac[2] == 1):
        m = "nearest" if mode == "nearest" else "bicubic"
        stack = t[None, None] if a.ndim == 2 else t.permute(2, 0, 1)[:, None]
        kw: dict[str, Any] = {} if m == "nearest" else {"align_corners": False}
        out = F.interpolate(stack, scale_factor=fac[:2], mode=m, **kw)
        res = out[0, 0] if a.ndim == 2 else out[:, 0].permute(1, 2, 0)
    else:
        m = "nearest" if mode == "nearest" else "trilinear"
        kw = {} if m == "nearest" else {"align_corners": False}
        res = F.interpolate(t[None, None], scale_factor=fac, mode=m, **kw)[0, 0]
    return np.ascontiguousarray(res.numpy(), dtype=np.float32)
