"""The lesion masks a mask-conditioned VAE-GAN samples under (``Synthesizer(mask_condition=True)``).

A sample of condition combination ``c`` is decoded under the lesion mask of a training image of
the same combination (a label-0 combination: an empty mask), chosen by a hash of the sample's
latent noise, so the draw stays a pure function of ``(seed, item, draw)`` and batch generation
keeps its determinism. A combination without training images draws among the images sharing
its first condition's value (the label, in the usual order), then among all.

The bank holds the training masks on the model's grid (``uint8`` occupancy), saved with the
weights: they are derived annotations of the training images (where a lesion is, not what the
image looks like), and the memorisation gate checks every written image whatever its mask.

Nothing here is public; :class:`~medgen.generative.synthesis.Synthesizer` builds it at the end
of ``fit``.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["MaskBank"]


class MaskBank(nn.Module):
    """Buffers: ``masks`` (``N x [SPATIAL]`` uint8, 0 or 1) and ``index`` (``N x K`` condition
    indices of their images)."""

    masks: torch.Tensor
    index: torch.Tensor

    def __init__(self, n: int, spatial: tuple[int, ...], k: int) -> None:
        super().__init__()
        self.register_buffer("masks", torch.zeros((n, *spatial), dtype=torch.uint8))
        self.register_buffer("index", torch.zeros((n, k), dtype=torch.int64))

    @classmethod
    def fit(cls, masks: NDArray[np.floating], index: NDArray[np.integer]) -> MaskBank:
        """The bank of training ``masks`` (``N x [SPATIAL]``, occupancy 0..1, binarised at 0.5)
        with their condition indices ``index`` (``N x K``)."""
        m = np.asarray(masks) > 0.5
        idx = np.asarray(index, dtype=np.int64)
        bank = cls(len(m), tuple(int(s) for s in m.shape[1:]), int(idx.shape[1]))
        with torch.no_grad():
            bank.masks.copy_(torch.from_numpy(m.astype(np.uint8)))
            bank.index.copy_(torch.from_numpy(idx))
        return bank.eval()

    def shape(self) -> dict[str, list[int] | int]:
        """What :meth:`__init__` needs to rebuild the bank before loading its buffers."""
        return {
            "n": int(self.masks.shape[0]),
            "spatial": [int(s) for s in self.masks.shape[1:]],
            "k": int(self.index.shape[1]),
        }

    def candidates(self, index: NDArray[np.integer]) -> list[NDArray[np.int64]]:
        """For each row of ``index`` (``B x K``): the bank rows it may draw from (the same
        combination, else the same first condition, else all)."""
        bank = self.index.cpu().numpy()
        out = []
        for row in np.asarray(index, dtype=np.int64):
            rows = np.flatnonzero((bank == row).all(1))
            if len(rows) == 0:
                rows = np.flatnonzero(bank[:, 0] == row[0])
            if len(rows) == 0:
                rows = np.arange(len(bank))
            out.append(rows)
        return out

    def draw(self, noise: torch.Tensor, index: NDArray[np.integer]) -> torch.Tensor:
        """Float masks ``B x 1 x [SPATIAL]`` for latent ``noise`` (``B x ...``) of samples with
        condition indices ``index`` (``B x K``): row ``b`` is bank row
        ``candidates[b][h mod len]``, ``h`` the first 8 bytes of SHA-256 of ``noise[b]``."""
        arr = noise.detach().float().cpu().numpy()
        picks = []
        for b, rows in enumerate(self.candidates(index)):
            h = hashlib.sha256(np.ascontiguousarray(arr[b]).tobytes()).digest()
            picks.append(int(rows[int.from_bytes(h[:8], "little") % len(rows)]))
        chosen = self.masks[torch.as_tensor(picks, dtype=torch.long)]
        return chosen[:, None].float()
