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
        noise_map: give the network the noise level as a second input channel (a constant map,
            FFDNet-style, Zhang et al. 2018), so one model covers the whole ``sigma`` range and
            the caller can say how strong the noise is (``apply(image, sigma=...)``). The level
            is the wavelet-MAD estimate of :func:`~medgen.generative.baselines.estimate_noise`,
            at training on the noisy patch and at inference on the image (when no ``sigma`` is
            given), in units of the network's intensity scale.
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
        noise_map: bool = False,
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
        if noise_map:  # absent for plain models: their saved configs stay as they were
            if model != "unet":
                raise ConfigError(
                    f"noise_map=True needs model='unet' (the noise map is an input channel), "
                    f"not model={model!r}."
                )
            task_options["noise_map"] = True
        super().__init__(task_config(locals(), task_options))

    @property
    def noise(self) -> list[str]:
        """Noise models trained on."""
        return list(self.config.task_options["noise"])

    @property
    def noise_map(self) -> bool:
        """Whether the network takes a noise-level map (``apply(..., sigma=)``)."""
        return bool(self.config.task_options.get("noise_map", False))

    @property
    def noise_range(self) -> tuple[float, float]:
        """The noise s.d. range trained on, relative to the image's intensity range.

        Gaussian and Rician noise: the ``sigma`` range. Poisson-Gaussian noise adds the photon
        noise ``sqrt(u / photons)`` of intensities ``u`` between 5 % and 60 % of the range.
        """
        opts = self.config.task_options
        s = [float(v) for v in opts["sigma"]]
        lo, hi = s[0], s[-1]
        if "poisson_gaussian" in opts["noise"]:
            p = [float(v) for v in opts["photons"]]
            lo = min(lo, float(np.sqrt(0.05 / p[-1])))
            hi = max(hi, float(np.sqrt(0.6 / p[0])) + s[-1])
        return lo, hi

    def _condition(
        self, image: np.ndarray, lo: float, hi: float, sigma: float | None
    ) -> float | None:
        if not self.noise_map:
            return super()._condition(image, lo, hi, sigma)
        import warnings

        from medgen.errors import NoiseLevelWarning
        from medgen.generative.baselines import estimate_noise

        given = sigma is not None
        if given and not (np.isfinite(float(sigma)) and float(sigma) >= 0):  # type: ignore[arg-type]
            raise ConfigError(f"apply: sigma must be a noise s.d. >= 0, not {sigma!r}.")
        s = float(sigma) if given else estimate_noise(image)  # type: ignore[arg-type]
        rel = s / (hi - lo)
        r_lo, r_hi = self.noise_range
        if not 0.5 * r_lo <= rel <= 1.5 * r_hi:
            how = "given" if given else "estimated"
            warnings.warn(
                f"apply: the {how} noise s.d. {s:.4g} is {rel:.3f} of the image's intensity "
                f"range, outside the range this model was trained on ({r_lo:.3f}-{r_hi:.3f}, "
                "with 50% slack); expect a weaker result"
                + ("" if given else " or pass sigma= if you know the noise level")
                + ".",
                NoiseLevelWarning,
                stacklevel=3,
            )
        return rel

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
        if self.noise_map:  # the level as the network will see it: estimated from the input
            from medgen.generative.baselines import estimate_noise

            level = estimate_noise(xs)
            xs = np.stack([xs, np.full_like(xs, level)])
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
