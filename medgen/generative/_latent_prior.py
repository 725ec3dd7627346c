"""The VAE-GAN's sampling prior: a Gaussian fitted to the training latents of each condition
combination (ex-post density estimation, Ghosh et al. 2020, "From variational to deterministic
autoencoders").

Why: the conditional VAE-GAN trains with a small KL weight (1e-4), so its posterior means do not
fill ``N(0, I)``; decoding standard normal noise gives images far from every real one (coverage
0.013 on the demo cohort, docs/synthesis.md). Drawing latents where the training images' latents
are instead lifts coverage to 0.66 with the same weights.

The density, per combination ``c`` of condition values (``Synthesizer.combinations``), is

    z = m_c + B^T L_c a + sigma * (e - B^T a),   a = B e,   e ~ N(0, I_D)

with ``B`` (``rank x D``) the leading principal directions of the within-combination residuals
of all training latents (shared), ``L_c`` the Cholesky factor of the Ledoit-Wolf covariance of
combination ``c``'s residuals in that basis, and ``sigma`` the standard deviation of what the
basis leaves out (isotropic). ``e`` is the sampler's standard normal noise, so the draw stays a
pure function of ``(seed, item)`` and batch generation keeps its determinism. A combination with
fewer than :data:`MIN_CELL_IMAGES` training images uses the pooled mean and covariance of all of
them (row ``n_cells``): a mean of a handful of images is too close to each of them.

Nothing here is public; :class:`~medgen.generative.synthesis.Synthesizer` fits it at the end of
``fit`` (``latent_prior="fitted"``, the default for ``"vae-gan"``) and saves it with the weights.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from numpy.typing import NDArray

log = logging.getLogger(__name__)

__all__ = ["MAX_RANK", "MIN_CELL_IMAGES", "LatentPrior"]

#: principal directions of the fitted density (at most; also at most D and N - 1)
MAX_RANK = 64
#: a combination with fewer training images than this draws from the pooled density
MIN_CELL_IMAGES = 10


class LatentPrior(nn.Module):
    """Buffers of the fitted density: ``mean`` (``n_cells + 1 x D``, the last row pooled),
    ``basis`` (``rank x D``), ``chol`` (``n_cells + 1 x rank x rank``), ``sigma`` and ``count``
    (training images per row)."""

    mean: torch.Tensor
    basis: torch.Tensor
    chol: torch.Tensor
    sigma: torch.Tensor
    count: torch.Tensor

    def __init__(self, n_cells: int, dim: int, rank: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_cells + 1, dim))
        self.register_buffer("basis", torch.zeros(rank, dim))
        self.register_buffer("chol", torch.zeros(n_cells + 1, rank, rank))
        self.register_buffer("sigma", torch.zeros(()))
        self.register_buffer("count", torch.zeros(n_cells + 1))

    @property
    def n_cells(self) -> int:
        return int(self.mean.shape[0]) - 1

    @property
    def rank(self) -> int:
        return int(self.basis.shape[0])

    @classmethod
    def fit(
        cls,
        latents: NDArray[np.floating],
        cells: NDArray[np.integer],
        n_cells: int,
        *,
        max_rank: int = MAX_RANK,
    ) -> LatentPrior:
        """The density of ``latents`` (``N x D``) whose combinations are ``cells`` (``N``, in
        ``0 .. n_cells - 1``), with at most ``max_rank`` principal directions."""
        from sklearn.covariance import LedoitWolf

        x = np.asarray(latents, dtype=np.float64).reshape(len(latents), -1)
        c = np.asarray(cells, dtype=np.int64)
        n, dim = x.shape
        rank = int(max(1, min(max_rank, dim, n - 1)))
        pooled = x.mean(0)
        means = np.tile(pooled, (n_cells + 1, 1))
        counts = np.zeros(n_cells + 1)
        counts[n_cells] = n
        own = np.zeros(n, dtype=bool)
        for k in range(n_cells):
            rows = c == k
            counts[k] = rows.sum()
            if counts[k] >= MIN_CELL_IMAGES:
                means[k] = x[rows].mean(0)
                own |= rows
        small = [k for k in range(n_cells) if 0 < counts[k] < MIN_CELL_IMAGES]
        if small:
            log.info(
                "latent prior: %d condition combination(s) with fewer than %d training images "
                "draw from the pooled density",
                len(small),
                MIN_CELL_IMAGES,
            )
        resid = x - np.where(own[:, None], means[np.where(own, c, n_cells)], pooled)
        _, _, vt = np.linalg.svd(resid, full_matrices=False)
        basis = vt[:rank]
        left = resid - (resid @ basis.T) @ basis
        sigma = float(left.std())

        def chol(rows: NDArray[np.bool_]) -> NDArray[np.float64]:
            a = resid[rows] @ basis.T
            cov = LedoitWolf().fit(a).covariance_ if len(a) > 1 else np.eye(rank)
            return np.linalg.cholesky(cov + 1e-9 * np.eye(rank))

        pooled_chol = chol(np.ones(n, dtype=bool))
        chols = np.stack(
            [chol(c == k) if counts[k] >= MIN_CELL_IMAGES else pooled_chol for k in range(n_cells)]
            + [pooled_chol]
        )
        prior = cls(n_cells, dim, rank)
        with torch.no_grad():
            prior.mean.copy_(torch.from_numpy(means))
            prior.basis.copy_(torch.from_numpy(basis))
            prior.chol.copy_(torch.from_numpy(chols))
            prior.sigma.fill_(sigma)
            prior.count.copy_(torch.from_numpy(counts))
        return prior.eval()

    def forward(self, noise: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """Latents (the shape of ``noise``) of standard normal ``noise`` for combinations
        ``cells`` (``B``; ``-1`` or an unseen combination: the pooled density)."""
        shape = noise.shape
        e = noise.reshape(shape[0], -1).to(self.mean.dtype)
        c = cells.to(torch.long).to(self.mean.device)
        c = torch.where((c >= 0) & (c < self.n_cells), c, torch.full_like(c, self.n_cells))
        c = torch.where(self.count[c] >= MIN_CELL_IMAGES, c, torch.full_like(c, self.n_cells))
        a = e @ self.basis.T
        z = self.mean[c] + torch.einsum("bij,bj->bi", self.chol[c], a) @ self.basis
        z = z + self.sigma * (e - a @ self.basis)
        return z.reshape(shape).to(noise.dtype)
