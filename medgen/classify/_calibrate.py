"""Calibration: expected calibration error and temperature scaling (Guo et al., ICML 2017)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, *, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins.

    Args:
        probs: ``NxK`` class probabilities.
        y: ``N`` integer class indices.
        n_bins: number of confidence bins on [0, 1].

    Returns:
        ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|``, in [0, 1].
    """
    import numpy as np

    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(float)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def fit_temperature(logits: torch.Tensor, y: torch.Tensor, *, max_iter: int = 100) -> float:
    """Fit one temperature ``T > 0`` minimising the NLL of ``softmax(logits / T)``.

    Args:
        logits: ``NxK`` validation logits.
        y: ``N`` integer class indices.

    Returns:
        The temperature (1.0 means no change).
    """
    import torch

    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter)
    logits = logits.detach().float()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)  # type: ignore[arg-type]
    t = float(log_t.exp().item())
    return t if 1e-3 < t < 1e3 else 1.0
