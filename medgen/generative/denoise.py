"""``Denoiser``: a learned denoiser trained on pairs from :func:`medgen.simulate.degrade`.

Two generators (see :mod:`medgen.generative._nets`): ``"unet"`` (residual U-Net, trained with L1 +
SSIM and optionally a PatchGAN adversarial term, pix2pix-style) and ``"vae"`` (residual MONAI
``AutoencoderKL`` with a KL term). ``"unet"`` is the default: it was better and faster in the
measurements in docs/restoration.md.

Example (tiny, CPU, seconds):
    >>> import numpy as np
    >>> from skimage.data import camera
    >>> from medgen.generative import Denoiser
    >>> img = camera()[::4, ::4].astype(np.float32) / 255.0
    >>> den = Denoiser(channels=(4, 8), patch_size=16, noise="gaussian", sigma=0.1)
    >>> _ = den.fit([img], config={"epochs": 1, "steps_per_epoch": 2, "batch_size": 2}, progress=False)
    >>> den.apply(img).shape
    (128, 128)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from medgen.errors import ConfigError
from medgen.generative._model import register_model_kind
from medgen.generative._restorer import (
    Restorer,
    default_patch_size,
    robust_range,
    task_config,
)

__all__ = ["Denoiser"]

_NOISES = ("gaussian", "rician", "poisson_gaussian")


@register_model_kind("denoise")
class Denoiser(Restorer):
    """Learned denoising (2D slices or 3D patches) with sliding-window inference.

    Args:
        model: ``"unet"`` (default) or ``"vae"``.
        spatial_dims: 2 (slice-wise; volumes are denoised slice by slice) or 3.
        channels: generator widths per level (default ``(16, 32, 64, 128)``, the benchmarked
            U-Net); ``(4, 8)`` for tests.
        patch_size: training patch edge and sliding-window size (divisible by
            ``2**(len(channels)-1)``); default 64 for 2D, 32 for 3D.
        noise: noise model(s) of :func:`medgen.simulate.degrade` to train on, drawn per patch:
            ``"gaussian"``, ``"rician"``, ``"poisson_gaussian"``.
        sigma: noise s.d. relative to the clean image's intensity range, a number or a
            ``(low, high)`` range drawn per patch (a blind denoiser over that range).
        photons: Poisson counts at the top of the range (``"poisson_gaussian"`` only).
        augment: randomly flip and rotate (by 90 degrees, in plane) each clean training image
            and change its contrast by a random gamma (0.5-2) before degrading it, so the model
            sees more anatomy orientations and contrasts than the training set holds.
        self_ensemble: at inference, average over the 8 in-plane rotations and flips of the
            input (8x the time; see :class:`~medgen.generative.RestorerConfig`).
        model_kwargs: extra generator options.
    """

    kind: ClassVar[str] = "denoise"
    task: ClassVar[str] = "denoise"
    # MSE only (PSNR is an MSE metric) and lr 3e-3: the benchmark's recipe (docs/restoration.md)
    train_defaults: ClassVar[dict[str, Any]] = {
        "lr_g": 3e-3,
        "l1_weight": 0.0,
        "mse_weight": 1.0,
        "ssim_weight": 0.0,
    }

    def __init__(
        self,
        *,
        model: str = "unet",
        spatial_dims: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128),
        patch_size: int | None = None,
        noise: str | Sequence[str] = ("gaussian", "rician"),
        sigma: float | tuple[float, float] = (0.02, 0.15),
        photons: float | tuple[float, float] = (200.0, 2000.0),
        discriminator_channels: int = 16,
        self_ensemble: bool = False,
        augment: bool = False,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if patch_size is None:
            patch_size = default_patch_size(spatial_dims)
        noises = [noise] if isinstance(noise, str) else list(noise)
        bad = [n for n in noises if n not in _NOISES]
        if not noises or bad:
            raise ConfigError(f"noise must be one or more of {_NOISES}, not {noise!r}.")
        sig = list(sigma) if isinstance(sigma, Sequence) else [float(sigma)]
        if not sig or len(sig) > 2 or any(not 0 <= float(s) < 1 for s in sig):
            raise ConfigError(
                f"sigma must be a number in [0, 1) or a (low, high) range of such, not {sigma!r}."
            )
        phot = list(photons) if isinstance(photons, Sequence) else [float(photons)]
        task_options = {
            "noise": noises,
            "sigma": [float(s) for s in sig],
            "photons": [float(p) for p in phot],
            "augment": bool(augment),
        }
        super().__init__(task_config(locals(), task_options))

    @property
    def noise(self) -> list[str]:
        """Noise models trained on."""
        return list(self.config.task_options["noise"])

    def _make_pair(
        self, clean: np.ndarray, degraded: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        from medgen.simulate import degrade

        opts = self.config.task_options
        pct = self.config.norm_percentiles
        if degraded is None:
            src = clean
            if clean.ndim == 3:  # a context crop of a volume, noise relative to the volume's range
                ctx = min(2 * self.config.patch_size, *clean.shape)
                starts = [int(rng.integers(s - ctx + 1)) for s in clean.shape]
                src = clean[tuple(slice(a, a + ctx) for a in starts)]
            noise = opts["noise"][int(rng.integers(len(opts["noise"])))]
            s = opts["sigma"]
            sigma = float(rng.uniform(s[0], s[-1]))
            ptp_full, ptp_src = float(np.ptp(clean)), float(np.ptp(src))
            if src is not clean and ptp_src > 0:
                sigma = sigma * ptp_full / ptp_src
            if opts.get("augment"):  # after the crop: gamma keeps its min and max
                src = _augment(src, rng)
            p = opts["photons"]
            photons = float(rng.uniform(p[0], p[-1]))
            pair = degrade(src, noise=noise, sigma=sigma, photons=photons, seed=rng)
            clean_s, noisy = np.asarray(pair.clean), np.asarray(pair.degraded)
        else:
            clean_s, noisy = clean, degraded
        lo, hi = robust_range(noisy, pct)
        x = (noisy - lo) / (hi - lo)
        y = (clean_s - lo) / (hi - lo)
        xs, ys = self._crop([x, y], rng)
        return xs, ys


def _augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips, in-plane rotation by k * 90 degrees and gamma (contrast) of a clean image."""
    out = image
    for ax in range(image.ndim):
        if rng.random() < 0.5:
            out = np.flip(out, axis=ax)
    out = np.rot90(out, k=int(rng.integers(4)), axes=(0, 1))
    if rng.random() < 0.5:
        lo, hi = float(out.min()), float(out.max())
        if hi > lo:
            gamma = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
            out = lo + (hi - lo) * ((out - lo) / (hi - lo)) ** gamma
    return np.ascontiguousarray(out, dtype=np.float32)
