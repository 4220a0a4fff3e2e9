"""Alignment and uniformity on the hypersphere (Wang & Isola 2020).

Both are defined on L2-normalised features: the caller normalises (``F.normalize(x, dim=-1)``); they are
not normalised here, so that the functions are exactly the paper's definitions of what they are given.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def align_loss(x: Tensor, y: Tensor, alpha: float = 2.0) -> Tensor:
    """Alignment (Wang & Isola 2020, eq. 4): mean over positive pairs of ||x_i - y_i||₂^α.

    ``x``, ``y``: [N, D] L2-normalised features of the two views. ``alpha`` > 0; for alpha ≥ 1 the
    gradient at x_i = y_i is finite (0).
    """
    if x.dim() != 2 or x.shape != y.shape:
        raise ValueError(f"x, y must be two [N, D] tensors of the same shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    return torch.linalg.vector_norm(x - y, dim=1).pow(alpha).mean()


def uniform_loss(x: Tensor, t: float = 2.0) -> Tensor:
    """Uniformity (Wang & Isola 2020, eq. 5): log of the mean over pairs i < j of exp(-t·||x_i - x_j||²).

    ``x``: [N, D] L2-normalised features, N ≥ 2. Squared distances come from the Gram matrix (no square
    root, so the gradient stays finite for coincident points), and the log-mean-exp is taken as
    logsumexp - log(pairs), finite for any t.
    """
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"x must be [N, D] with N >= 2, got {tuple(x.shape)}")
    if t <= 0:
        raise ValueError(f"t must be > 0, got {t}")
    n = x.shape[0]
    sq_norms = x.pow(2).sum(dim=1)
    # Rounding can make a zero distance slightly negative.
    sq_dist = (sq_norms[:, None] + sq_norms[None, :] - 2 * x @ x.T).clamp_min(0)
    i, j = torch.triu_indices(n, n, offset=1, device=x.device)
    pairs = i.numel()
    return torch.logsumexp(-t * sq_dist[i, j], dim=0) - math.log(pairs)
