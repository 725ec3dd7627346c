"""Site and acquisition effects: contrast, bias field, blur / slice thickness, Rician noise, scale.

Parameters are drawn per subject from the site's configuration (TorchIO style: draw, then apply
deterministically). The maths follows TorchIO's transforms (``BiasField``: ``exp`` of a
polynomial of order 3 in normalised coordinates; ``RandomNoise`` for MR made Rician), implemented
on NumPy arrays so one 64x64 subject costs well under a millisecond (TorchIO's per-call overhead of
building a ``Subject`` would dominate the cohort's run time).
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage

from medgen.simulate._config import SiteConfig

__all__ = ["TISSUE_INTENSITIES", "bias_field", "blur", "draw_bias_coefficients", "rician"]

#: Mean tissue intensities per contrast (brightest tissue ~ 1). Lesions are hyperintense on T2 and
#: FLAIR (where CSF is dark) and hypointense on T1, as white-matter hyperintensities are.
TISSUE_INTENSITIES: dict[str, dict[str, float]] = {
    "t1": {"csf": 0.20, "gm": 0.55, "wm": 0.85, "lesion": 0.35},
    "t2": {"csf": 1.00, "gm": 0.62, "wm": 0.45, "lesion": 0.90},
    "flair": {"csf": 0.15, "gm": 0.62, "wm": 0.48, "lesion": 1.00},
}


def _monomials(order: int, ndim: int) -> list[tuple[int, ...]]:
    return [e for e in itertools.product(range(order + 1), repeat=ndim) if 0 < sum(e) <= order]


def draw_bias_coefficients(
    site: SiteConfig, ndim: int, rng: np.random.Generator, order: int = 3
) -> np.ndarray:
    """Coefficients of the log bias field, uniform in ``[-bias_field, bias_field]``."""
    n = len(_monomials(order, ndim))
    return rng.uniform(-site.bias_field, site.bias_field, n) if site.bias_field > 0 else np.zeros(n)


def bias_field(shape: tuple[int, ...], coefficients: np.ndarray, order: int = 3) -> np.ndarray:
    """Multiplicative bias field ``exp(sum_k c_k x^a y^b [z^c])`` on ``[-1, 1]`` coordinates."""
    ndim = len(shape)
    axes = []
    for d, n in enumerate(shape):  # 1D coordinates, broadcastable along axis d
        view = [1] * ndim
        view[d] = n
        axes.append(np.linspace(-1.0, 1.0, n).reshape(view))
    log_field = np.zeros(shape)
    for c, e in zip(coefficients, _monomials(order, ndim), strict=True):
        if c == 0:
            continue
        term = c * np.ones([1] * ndim)
        for ax, k in zip(axes, e, strict=True):
            if k:
                term = term * ax**k
        log_field += term
    return np.exp(log_field)


def blur(
    image: np.ndarray, fwhm_mm: tuple[float, ...], spacing_mm: tuple[float, ...]
) -> np.ndarray:
    """Anisotropic Gaussian blur; FWHM in mm per axis (0 = none on that axis)."""
    sigma = [f / 2.3548 / s if f > 0 else 0.0 for f, s in zip(fwhm_mm, spacing_mm, strict=True)]
    if not any(sigma):
        return image
    return ndimage.gaussian_filter(image, sigma, mode="nearest")


def rician(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Rician noise: ``sqrt((x + n1)^2 + n2^2)`` with ``n1, n2 ~ N(0, sigma^2)``."""
    if sigma <= 0:
        return image
    n1 = rng.normal(0.0, sigma, image.shape)
    n2 = rng.normal(0.0, sigma, image.shape)
    return np.sqrt((image + n1) ** 2 + n2**2)
