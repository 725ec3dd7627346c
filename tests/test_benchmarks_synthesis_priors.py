"""``benchmarks/synthesis_priors.py``: the anchored prior's two ends and its moments, on
latents drawn from known Gaussians (no network trained)."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def bench(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("synthesis_priors")


def _latents() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    cells = np.repeat([0, 1], 200)
    lat = rng.normal(size=(400, 12)) * np.linspace(0.5, 2.0, 12) + 3.0 * cells[:, None]
    return lat, cells


def test_anchor_ends(bench: ModuleType) -> None:
    lat, cells = _latents()
    noise = torch.randn(50, 12, generator=torch.Generator().manual_seed(1))
    c = torch.ones(50, dtype=torch.long)
    base = bench.make_prior("rank64", lat, cells, 2)
    at0 = bench.make_prior("anchor0", lat, cells, 2)
    torch.testing.assert_close(at0(noise, c), base(noise, c), atol=1e-5, rtol=0)
    at1 = bench.make_prior("anchor1", lat, cells, 2)(noise, c).numpy()
    own = lat[cells == 1].astype(np.float32)
    gaps = np.abs(at1[:, None, :] - own[None]).max(-1).min(1)
    assert gaps.max() < 1e-5  # every draw is one of its combination's training latents
    with pytest.raises(SystemExit, match="anchor share"):
        bench.make_prior("anchor1.5", lat, cells, 2)
    with pytest.raises(SystemExit, match="unknown variant"):
        bench.make_prior("kde", lat, cells, 2)


def test_anchor_keeps_the_moments(bench: ModuleType) -> None:
    lat, cells = _latents()
    noise = torch.randn(4000, 12, generator=torch.Generator().manual_seed(2))
    c = torch.zeros(4000, dtype=torch.long)
    z = bench.make_prior("anchor0.5", lat, cells, 2)(noise, c).numpy()
    g = bench.make_prior("rank64", lat, cells, 2)(noise, c).numpy()
    own = lat[cells == 0]
    np.testing.assert_allclose(z.mean(0), own.mean(0), atol=0.15)
    # variance: a quarter the training latents' (the anchor), three quarters the prior's (whose
    # Ledoit-Wolf shrinkage lifts the small variances)
    expected = np.sqrt(0.25 * own.var(0) + 0.75 * g.var(0))
    np.testing.assert_allclose(z.std(0), expected, rtol=0.1)
