"""The VAE-GAN's fitted latent prior (:mod:`medgen.generative._latent_prior`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medgen.errors import ConfigError
from medgen.generative import load
from medgen.generative._latent_prior import MIN_CELL_IMAGES, LatentPrior
from medgen.generative.synthesis import Synthesizer

TINY = {"image_size": (32, 32), "channels": (8, 16), "latent_channels": 2}
CONFIG = {"epochs": 3, "steps_per_epoch": 15, "batch_size": 8, "device": "cpu", "ema_decay": None}


def _two_cells(n: int = 400, dim: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Latents of two combinations: different means, and cell 1 stretched along one axis."""
    rng = np.random.default_rng(seed)
    cells = np.repeat([0, 1], n // 2)
    x = rng.normal(size=(n, dim)) * 0.5
    x[cells == 1, 0] *= 4.0
    x[cells == 1] += 3.0
    return x, cells


def test_draws_follow_each_cell() -> None:
    x, cells = _two_cells()
    prior = LatentPrior.fit(x, cells, n_cells=2)
    noise = torch.randn(4000, x.shape[1], generator=torch.Generator().manual_seed(1))
    for c in (0, 1):
        z = prior(noise, torch.full((4000,), c)).numpy()
        np.testing.assert_allclose(z.mean(0), x[cells == c].mean(0), atol=0.1)
        np.testing.assert_allclose(z.std(0), x[cells == c].std(0), rtol=0.15)
    # the draw is a pure function of (noise, cell): the batch path's determinism relies on it
    assert torch.equal(
        prior(noise[:5], torch.tensor([1] * 5)), prior(noise[:5], torch.tensor([1] * 5))
    )


def test_small_and_unseen_cells_use_the_pooled_density() -> None:
    x, cells = _two_cells()
    cells = cells.copy()
    cells[: MIN_CELL_IMAGES - 1] = 2  # a combination with too few images to have its own
    prior = LatentPrior.fit(x, cells, n_cells=4)  # and combination 3 has none
    noise = torch.randn(8, x.shape[1], generator=torch.Generator().manual_seed(2))
    pooled = prior(noise, torch.full((8,), -1))
    np.testing.assert_allclose(prior.mean[-1].numpy(), x.mean(0), atol=1e-9)
    assert torch.equal(prior(noise, torch.full((8,), 2)), pooled)
    assert torch.equal(prior(noise, torch.full((8,), 3)), pooled)
    assert not torch.equal(prior(noise, torch.full((8,), 0)), pooled)


@pytest.fixture(scope="module")
def fitted_run(tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("prior") / "run"
    syn = Synthesizer("vae-gan", ("label", "sex"), adv_weight=0.0, **TINY)
    syn.fit(tiny_manifest, run_dir=run, config=CONFIG, progress=False)
    return run


def test_samples_lie_nearer_the_training_latents(fitted_run: Path, tiny_manifest: Path) -> None:
    """Fitted draws land where the training images' latents are; N(0, I) draws do not (the
    model's KL weight is small, so its posterior does not fill the standard normal)."""
    import pandas as pd

    syn = load(fitted_run)
    assert isinstance(syn, Synthesizer) and syn.options["latent_prior"] == "fitted"
    df = pd.read_csv(tiny_manifest)
    train = df[df["split"] == "train"]
    from medgen.io import load as load_image

    real = syn.encode([load_image(tiny_manifest.parent / p) for p in train["image_path"]])
    real = real.flatten(1)
    index = np.zeros((200, 2), dtype=np.int64)
    noise = torch.randn(200, *real.shape[1:], generator=torch.Generator().manual_seed(3))
    fitted = syn._prior_latents(noise, index)

    def nearest(z: torch.Tensor) -> float:
        return float(torch.cdist(z.flatten(1), real).min(1).values.median())

    assert nearest(fitted) < 0.5 * nearest(noise)


def test_prior_is_saved_and_old_runs_load_with_the_normal_prior(
    fitted_run: Path, tmp_path: Path
) -> None:
    syn = load(fitted_run)
    assert isinstance(syn, Synthesizer)
    again = load(fitted_run)
    assert torch.equal(syn.sample(3, seed=4).images, again.sample(3, seed=4).images)
    meta = json.loads((fitted_run / "config.json").read_text())
    shape = meta["model"]["latent_prior"]
    assert shape["n_cells"] == 4 and shape["rank"] >= 1
    # a model saved before the prior existed: no latent_prior entry, no buffers
    old = dict(meta["model"])
    old.pop("latent_prior")
    old_syn = Synthesizer.from_model_config(old)
    assert old_syn.options["latent_prior"] == "normal"
    assert "latent_prior" not in old_syn.networks()


def test_normal_prior_decodes_the_noise_itself(tiny_manifest: Path) -> None:
    syn = Synthesizer("vae-gan", ("label",), adv_weight=0.0, latent_prior="normal", **TINY)
    syn.fit(tiny_manifest, config={**CONFIG, "epochs": 1}, progress=False)
    assert "latent_prior" not in syn.networks()
    out = syn.sample(2, {"label": 1}, seed=5)
    noise = torch.randn((2, *syn._latent_shape()), generator=torch.Generator().manual_seed(5))
    assert torch.allclose(out.images, syn.decode(noise, {"label": 1}), atol=1e-4)


def test_unknown_prior_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"latent_prior must be one of \('fitted', 'normal'\)"):
        Synthesizer("vae-gan", ("label",), latent_prior="gmm")
