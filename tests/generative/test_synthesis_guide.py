"""Classifier guidance of the conditional VAE-GAN (``guide_weight``): a guide classifier learns
the conditions from real images, and the decoder learns to draw what the conditions say, also
under the conditions of another image (counterfactual decodes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medgen.errors import ConfigError
from medgen.generative.engine import EngineConfig, fit_objective
from medgen.generative.objectives.conditional import (
    ConditionalVAEGANConfig,
    ConditionalVAEGANObjective,
    guide_loss,
    one_hots,
)
from medgen.generative.synthesis import Synthesizer

SQUARE = (slice(8, 16), slice(6, 14))  # where label-1 images are brighter


def _squares(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noisy flat images; label 1 has a bright square at a fixed place (the "lesion")."""
    rng = np.random.default_rng(seed)
    label = np.arange(n) % 2
    images = (0.3 + 0.05 * rng.standard_normal((n, 32, 32))).astype(np.float32)
    images[label == 1, SQUARE[0], SQUARE[1]] += 0.5
    return images, label[:, None]


def _fit(
    guide_weight: float, steps: int, **extra: float
) -> tuple[dict[str, torch.nn.Module], list]:
    images, cond = _squares()
    cfg = ConditionalVAEGANConfig(
        channels=(8, 16),
        latent_channels=2,
        image_size=(32, 32),
        num_classes=(2,),
        guide_weight=guide_weight,
        guide_warmup_steps=30,
        adv_warmup_steps=30,
        **{"guide_noise": 0.2, **extra},
    )
    per = min(30, steps)
    ec = EngineConfig(
        epochs=steps // per, steps_per_epoch=per, batch_size=8, seed=0, ema_decay=None
    )
    res = fit_objective(ConditionalVAEGANObjective(images, cond, config=cfg), config=ec)
    return res.networks, res.history


def _label_effect(ae: torch.nn.Module) -> tuple[float, float]:
    """Decoding label-0 images' latents as label 1 minus as label 0: the mean change inside the
    square and the mean absolute change in a corner far from it."""
    images, cond = _squares()
    x0 = torch.from_numpy(images[cond[:, 0] == 0][:16, None])
    ae.eval()
    with torch.no_grad():
        mu, _ = ae.encode(x0)
        d1 = ae.decode(mu, one_hots(torch.ones(16, 1), (2,)))
        d0 = ae.decode(mu, one_hots(torch.zeros(16, 1), (2,)))
    diff = (d1 - d0)[:, 0]
    return float(diff[:, SQUARE[0], SQUARE[1]].mean()), float(diff[:, 20:, 20:].abs().mean())


def test_guide_loss_is_the_mean_cross_entropy_per_condition() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 3.0, 0.0, 0.0]])
    index = torch.tensor([[0, 1], [1, 0]])
    ce = torch.nn.functional.cross_entropy
    want = 0.5 * (ce(logits[:, :2], index[:, 0]) + ce(logits[:, 2:], index[:, 1]))
    assert torch.allclose(guide_loss(logits, index, (2, 3)), want)


def test_guided_training_logs_and_keeps_the_guide_out_of_the_model(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    syn = Synthesizer(
        "vae-gan",
        ("label", "sex"),
        image_size=(32, 32),
        channels=(8, 16),
        latent_channels=2,
        guide_weight=0.1,
        guide_warmup_steps=10,  # the guidance starts inside the short run
    )
    cfg = {"epochs": 2, "steps_per_epoch": 15, "batch_size": 8, "device": "cpu"}
    syn.fit(tiny_manifest, run_dir=tmp_path / "run", config=cfg, progress=False)
    last = syn.history[-1]
    for key in ("guide", "guide_recon", "guide_cf"):
        assert np.isfinite(last[key]), key
    assert "guide" not in syn.nets  # a training aid: the model is the autoencoder (+ prior)
    again = Synthesizer.load(tmp_path / "run")
    assert again.options["guide_weight"] == 0.1 and again.options["guide_warmup_steps"] == 10
    a = syn.sample(4, {"label": 1}, seed=3).images
    b = again.sample(4, {"label": 1}, seed=3).images
    assert torch.equal(torch.as_tensor(a), torch.as_tensor(b))


def test_unguided_steps_are_unchanged_by_the_guide_options() -> None:
    """guide_weight=0 builds no guide and draws no extra random numbers: the same weights for
    any guide_noise / warm-up (the runs of before the option train bitwise the same)."""
    a, _ = _fit(0.0, 8)
    b, _ = _fit(0.0, 8, lr_guide=0.5, guide_noise=0.3)
    assert "guide" not in a
    for (ka, va), (kb, vb) in zip(
        a["autoencoder"].state_dict().items(), b["autoencoder"].state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize(
    "bad",
    [
        {"guide_weight": -1.0},
        {"guide_noise": -0.1},
        {"guide_warmup_steps": -2},
        {"guide_conditions": (2,)},
        {"guide_conditions": (0, 0)},
    ],
)
def test_bad_guide_options(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(bad))):
        ConditionalVAEGANConfig(image_size=(32, 32), num_classes=(2, 2), **bad)


def test_guide_conditions_select_what_is_guided() -> None:
    cfg = ConditionalVAEGANConfig(
        image_size=(32, 32), channels=(8, 16), num_classes=(2, 3), guide_weight=0.1
    )
    assert cfg.guided == (0, 1)
    one = ConditionalVAEGANConfig(
        image_size=(32, 32),
        channels=(8, 16),
        num_classes=(2, 3),
        guide_weight=0.1,
        guide_conditions=(1,),
    )
    assert one.guided == (1,)
    rng = np.random.default_rng(0)
    images = rng.random((8, 32, 32)).astype(np.float32)
    cond = np.stack([np.arange(8) % 2, np.arange(8) % 3], axis=1)
    guide = ConditionalVAEGANObjective(images, cond, config=one).build_networks()["guide"]
    with torch.no_grad():
        assert guide.eval()(torch.zeros(2, 1, 32, 32)).shape == (2, 3)  # only the 3 values
    with pytest.raises(ConfigError, match="guide_conditions"):
        Synthesizer("vae-gan", ("label", "sex"), guide_conditions=("site",))


@pytest.mark.slow
def test_guidance_makes_the_condition_draw_the_lesion() -> None:
    """Unguided, the decoder draws what the latent says and ignores the label embedding; guided,
    decoding a healthy image's latent as label 1 brightens the square (and little else)."""
    plain, _ = _fit(0.0, 300)
    guided, history = _fit(0.1, 300)
    inside0, _ = _label_effect(plain["autoencoder"])
    inside, outside = _label_effect(guided["autoencoder"])
    assert history[-1]["guide_cf"] < 0.5  # the guide calls most counterfactuals as asked
    assert inside > 0.08  # the square's contrast is 0.5
    assert inside > 5 * max(outside, 1e-3)
    assert inside > inside0 + 0.05


def test_guided_run_resumes_bitwise(tmp_path: Path, run_tensors: Any) -> None:
    """Interrupted after the guidance began and resumed == uninterrupted, bitwise: the guide,
    its optimiser and the counterfactual draws are part of the run's state."""
    images, cond = _squares(16)
    cfg = ConditionalVAEGANConfig(
        channels=(8, 16),
        latent_channels=2,
        image_size=(32, 32),
        num_classes=(2,),
        guide_weight=0.1,
        guide_warmup_steps=2,
        adv_warmup_steps=2,
    )
    ec = EngineConfig(epochs=2, steps_per_epoch=4, batch_size=4, seed=0, ema_decay=0.9)
    full = fit_objective(
        ConditionalVAEGANObjective(images, cond, config=cfg), config=ec, run_dir=tmp_path / "a"
    )

    class Interrupted(ConditionalVAEGANObjective):
        def sample_batch(self, step: int) -> Any:
            if step >= 4:
                raise KeyboardInterrupt
            return super().sample_batch(step)

    with pytest.raises(KeyboardInterrupt):
        fit_objective(Interrupted(images, cond, config=cfg), config=ec, run_dir=tmp_path / "b")
    resumed = fit_objective(
        ConditionalVAEGANObjective(images, cond, config=cfg),
        config=ec,
        run_dir=tmp_path / "b",
        resume=True,
    )
    sa, sb = run_tensors(full), run_tensors(resumed)
    assert any(k.startswith("guide.") for k in sa)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs after resume"
