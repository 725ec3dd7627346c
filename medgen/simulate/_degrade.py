"""Degradation models for paired (clean, degraded) training of the generative modules.

TorchIO style: :func:`degrade` first *draws* its random parameters (noise level from a range,
down-sampling factor from a set of choices, the noise seed), records them in
:attr:`DegradedPair.params`, then applies a deterministic pipeline:

1. in-plane Gaussian blur (``blur``: s.d. in pixels, on the first two spatial axes);
2. in-plane down-sampling by block averaging (``downsample``: 2 or 4, the acquisition's larger
   pixels), and through-plane thick slices (``slice_thickness``: k slices averaged into one, 3D);
3. noise, with ``sigma`` relative to the clean image's intensity range (max - min):
   ``"gaussian"`` (additive), ``"rician"`` (MR magnitude: ``sqrt((x + n1)^2 + n2^2)``) or
   ``"poisson_gaussian"`` (low-dose CT-like: Poisson counts at ``photons`` per unit range, plus
   Gaussian read-out noise ``sigma``);
4. optionally (``restore_shape=True``) linear interpolation back to the clean grid.

Works on NumPy arrays, torch tensors and MONAI MetaTensors, 2D and 3D. MetaTensors are channel
first (``(C, X, Y[, Z])``, as :func:`medgen.io.load` returns) and keep a correct affine after
down-sampling; for plain arrays/tensors say ``channel_axis=0`` when the first axis is a channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from medgen.errors import MedgenValueError

__all__ = ["NOISE_MODELS", "DegradedPair", "degrade"]

NOISE_MODELS = ("gaussian", "rician", "poisson_gaussian")


class DegradedPair(tuple):  # type: ignore[type-arg]
    """``(clean, degraded)``, unpackable as a 2-tuple, with the drawn parameters in ``.params``."""

    params: dict[str, Any]

    def __new__(cls, clean: Any, degraded: Any, params: dict[str, Any]) -> DegradedPair:
        obj = super().__new__(cls, (clean, degraded))
        obj.params = params
        return obj

    @property
    def clean(self) -> Any:
        return self[0]

    @property
    def degraded(self) -> Any:
        return self[1]


def _draw(value: Any, rng: np.random.Generator, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise MedgenValueError(f"degrade: {name} must be >= 0, not {value}.")
        return float(value)
    if isinstance(value, Sequence) and len(value) == 2:
        lo, hi = float(value[0]), float(value[1])
        if not 0 <= lo <= hi:
            raise MedgenValueError(
                f"degrade: {name} range must satisfy 0 <= low <= high, not {tuple(value)}."
            )
        return float(rng.uniform(lo, hi))
    raise MedgenValueError(
        f"degrade: {name} must be a number or a (low, high) range to draw from, not {value!r}."
    )


def _draw_factor(value: Any, rng: np.random.Generator, name: str) -> int | None:
    if value is None:
        return None
    choices = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    for c in choices:
        if isinstance(c, bool) or not isinstance(c, int | np.integer) or c < 1:
            raise MedgenValueError(
                f"degrade: {name} must be a positive integer factor (e.g. 2 or 4) or a list of "
                f"factors to draw from, not {value!r}."
            )
    f = int(choices[int(rng.integers(len(choices)))]) if len(choices) > 1 else int(choices[0])
    return None if f == 1 else f


def _block_mean(x: np.ndarray, axis: int, f: int) -> np.ndarray:
    n = x.shape[axis]
    if n % f:
        raise MedgenValueError(
            f"degrade: spatial axis {axis} has {n} voxels, not a multiple of the factor {f}; "
            f"crop or pad the image to a multiple of {f} first."
        )
    shape = (*x.shape[:axis], n // f, f, *x.shape[axis + 1 :])
    return x.reshape(shape).mean(axis=axis + 1)


def degrade(
    image: Any,
    *,
    noise: str | None = None,
    sigma: float | tuple[float, float] = 0.05,
    photons: float | tuple[float, float] = 1000.0,
    downsample: int | Sequence[int] | None = None,
    blur: float | tuple[float, float] | None = None,
    slice_thickness: int | Sequence[int] | None = None,
    restore_shape: bool = False,
    channel_axis: int | None = None,
    seed: int | np.random.Generator | None = None,
) -> DegradedPair:
    """Make a (clean, degraded) pair from a clean image.

    Args:
        image: ``(X, Y)`` / ``(X, Y, Z)`` array or tensor (``channel_axis=0`` for ``(C, ...)``), or
            a MetaTensor ``(C, X, Y[, Z])``.
        noise: ``None``, ``"gaussian"``, ``"rician"`` or ``"poisson_gaussian"``.
        sigma: noise s.d. relative to the clean intensity range; a number or a range to draw from.
        photons: for ``"poisson_gaussian"``, expected counts at the top of the intensity range
            (lower = noisier); a number or a range.
        downsample: in-plane factor (2 or 4, or a list to draw from); spatial axes 0 and 1.
        blur: in-plane Gaussian s.d. (pixels) before sampling; a number or a range.
        slice_thickness: through-plane factor for 3D images: k slices averaged into one.
        restore_shape: interpolate the degraded image back to the clean grid (linear).
        channel_axis: ``0`` if a plain array's first axis is channels; ignored for MetaTensors.
        seed: int or ``numpy.random.Generator``; recorded (a fresh seed is drawn when ``None``).

    Returns:
        :class:`DegradedPair` ``(clean, degraded)`` of the input's type (float32), with
        ``.params`` holding everything drawn. MetaTensor outputs carry the degraded affine and
        ``meta["degradation"]``.

    Example:
        >>> import numpy as np
        >>> x = np.zeros((32, 32), dtype=np.float32); x[8:24, 8:24] = 1.0
        >>> clean, low = degrade(x, noise="rician", sigma=0.05, downsample=2, seed=0)
        >>> clean.shape, low.shape
        ((32, 32), (16, 16))
    """
    if noise is not None and noise not in NOISE_MODELS:
        raise MedgenValueError(
            f"degrade: noise must be None or one of {list(NOISE_MODELS)}, not {noise!r}."
        )
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**32))  # type: ignore[operator]
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    kind, arr, meta_affine = _to_numpy(image)
    is_meta = kind == "meta"
    has_channel = is_meta or channel_axis == 0
    if channel_axis not in (None, 0):
        raise MedgenValueError(f"degrade: channel_axis must be None or 0, not {channel_axis!r}.")
    x = arr.astype(np.float64)
    if not has_channel:
        x = x[None]
    spatial = x.ndim - 1
    if spatial not in (2, 3):
        raise MedgenValueError(
            f"degrade: expected a 2D or 3D image (plus an optional channel axis), got shape "
            f"{tuple(arr.shape)}; pass channel_axis=0 if the first axis is channels."
        )

    params: dict[str, Any] = {
        "seed": seed if isinstance(seed, int) else None,
        "noise": noise,
        "restore_shape": restore_shape,
    }
    blur_s = _draw(blur, rng, "blur")
    f = _draw_factor(downsample, rng, "downsample")
    k = _draw_factor(slice_thickness, rng, "slice_thickness")
    if k is not None and spatial != 3:
        raise MedgenValueError("degrade: slice_thickness needs a 3D image (X, Y, Z).")
    lo, hi = float(x.min()), float(x.max())
    value_range = hi - lo if hi > lo else 1.0
    sig = _draw(sigma, rng, "sigma") if noise is not None else None
    phot = _draw(photons, rng, "photons") if noise == "poisson_gaussian" else None
    if phot is not None and phot <= 0:
        raise MedgenValueError(f"degrade: photons must be > 0, not {phot}.")
    params.update(
        {
            "blur": blur_s,
            "downsample": f,
            "slice_thickness": k,
            "sigma": sig,
            "sigma_abs": None if sig is None else sig * value_range,
            "photons": phot,
            "intensity_range": (lo, hi),
        }
    )

    y = x
    if blur_s:
        sig_vec = [0.0] + [blur_s, blur_s] + [0.0] * (spatial - 2)
        y = ndimage.gaussian_filter(y, sig_vec, mode="nearest")
    if f:
        y = _block_mean(_block_mean(y, 1, f), 2, f)
    if k:
        y = _block_mean(y, 3, k)
    s_abs = (sig or 0.0) * value_range
    if noise == "gaussian":
        y = y + rng.normal(0.0, s_abs, y.shape)
    elif noise == "rician":
        y = np.sqrt(
            (y + rng.normal(0.0, s_abs, y.shape)) ** 2 + rng.normal(0.0, s_abs, y.shape) ** 2
        )
    elif noise == "poisson_gaussian":
        n_phot = phot or 1.0
        u = np.clip((y - lo) / value_range, 0.0, None)
        counts = rng.poisson(u * n_phot)
        y = lo + value_range * (counts / n_phot) + rng.normal(0.0, s_abs, y.shape)
    if restore_shape and y.shape != x.shape:
        zoom = [1.0] + [a / b for a, b in zip(x.shape[1:], y.shape[1:], strict=True)]
        y = ndimage.zoom(y, zoom, order=1, mode="nearest", grid_mode=True)

    new_affine = None
    if meta_affine is not None and not restore_shape:
        new_affine = meta_affine.copy()
        for axis, fac in enumerate([f, f, k][:spatial]):
            if fac:
                col = new_affine[: len(new_affine) - 1, axis].copy()
                new_affine[: len(new_affine) - 1, -1] += col * (fac - 1) / 2.0
                new_affine[: len(new_affine) - 1, axis] = col * fac
    if not has_channel:
        x, y = x[0], y[0]
    clean = _from_numpy(kind, x.astype(np.float32), image, meta_affine, params)
    degraded = _from_numpy(
        kind,
        y.astype(np.float32),
        image,
        new_affine if new_affine is not None else meta_affine,
        params,
    )
    return DegradedPair(clean, degraded, params)


def _to_numpy(image: Any) -> tuple[str, np.ndarray, np.ndarray | None]:
    if isinstance(image, np.ndarray):
        return "numpy", image, None
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None  # type: ignore[assignment]
    if torch is not None and isinstance(image, torch.Tensor):
        try:
            from monai.data import MetaTensor
        except ImportError:  # pragma: no cover
            MetaTensor = None  # type: ignore[assignment,misc]
        if MetaTensor is not None and isinstance(image, MetaTensor):
            aff = np.asarray(image.affine.detach().cpu().numpy(), dtype=np.float64)
            return "meta", image.as_tensor().detach().cpu().numpy(), aff
        return "torch", image.detach().cpu().numpy(), None
    raise MedgenValueError(
        f"degrade: image must be a numpy array, a torch tensor or a MetaTensor, not "
        f"{type(image).__name__}."
    )


def _from_numpy(
    kind: str, arr: np.ndarray, like: Any, affine: np.ndarray | None, params: dict[str, Any]
) -> Any:
    if kind == "numpy":
        return arr
    import torch

    t = torch.from_numpy(np.ascontiguousarray(arr)).to(like.device)
    if kind == "torch":
        return t
    from monai.data import MetaTensor

    meta = {k: v for k, v in like.meta.items() if k not in ("affine", "original_affine")}
    meta["degradation"] = dict(params)
    if affine is not None:
        meta["spacing"] = tuple(
            float(v) for v in np.linalg.norm(affine[: len(affine) - 1, : len(affine) - 1], axis=0)
        )
    return MetaTensor(t, affine=torch.as_tensor(affine), meta=meta)
