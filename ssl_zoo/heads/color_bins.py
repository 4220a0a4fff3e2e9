"""Quantised-colour classification targets of colorization (Zhang et al. 2016) and split-brain
autoencoders (Zhang et al. 2017): soft-encoded ab bins and the running colour prior that rebalances them.

``ABClassTargets`` holds the bin centres (a constant of ``grid``) and the count of each bin's hard
labels over every pixel seen so far (int64, a persistent buffer: summed over ranks, restored on resume),
from which the class-rebalancing weights follow.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ssl_zoo.distributed import all_reduce_sum
from ssl_zoo.losses.colorization import rebalancing_weights, soft_cross_entropy
from ssl_zoo.transforms.color import ab_bins, soft_encode


def to_output_size(values: Tensor, size: int) -> Tensor:
    """Average-pool a target map [B, C, H, W] to [B, C, size, size] (the decoder's resolution)."""
    return values if values.shape[-1] == size else F.adaptive_avg_pool2d(values, size)


class ABClassTargets(nn.Module):
    """The ab classification loss of Zhang et al. (2016) over ``Q`` in-gamut bins of side ``grid``.

    ``loss(logits [B, Q, h, w], ab [B, 2, h, w])``: soft-encoded targets (``neighbours`` nearest bins,
    Gaussian ``sigma``), cross-entropy averaged over pixels, each pixel weighted by its nearest bin's
    rebalancing weight (``lam``; weights of 1 when ``rebalance`` is False). In training mode the prior
    counts this batch's pixels (all ranks) before the weights are computed.
    """

    def __init__(self, grid: float = 10.0, neighbours: int = 5, sigma: float = 5.0, lam: float = 0.5,
                 rebalance: bool = True):
        super().__init__()
        self.neighbours, self.sigma, self.lam, self.rebalance = neighbours, sigma, lam, rebalance
        centres = ab_bins(grid)
        self.register_buffer("centres", centres, persistent=False)
        self.register_buffer("counts", torch.zeros(centres.shape[0], dtype=torch.long))

    @property
    def num_bins(self) -> int:
        return self.centres.shape[0]

    def weights(self) -> Tensor:
        """Rebalancing weight of each bin [Q] under the prior counted so far."""
        return rebalancing_weights(self.counts, self.centres.double(), self.lam, self.sigma).float()

    def loss(self, logits: Tensor, ab: Tensor) -> Tensor:
        q = self.num_bins
        pixels = ab.permute(0, 2, 3, 1).reshape(-1, 2)
        targets, nearest = soft_encode(pixels, self.centres, self.neighbours, self.sigma)
        weights = None
        if self.rebalance:
            if self.training:
                self.counts += all_reduce_sum(torch.bincount(nearest, minlength=q))
            weights = self.weights()[nearest]
        flat = logits.permute(0, 2, 3, 1).reshape(-1, q).float()
        return soft_cross_entropy(flat, targets, weights)
