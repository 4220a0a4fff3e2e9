"""Colorization losses (Zhang, Isola & Efros 2016): multinomial cross-entropy on soft-encoded colour bins,
weighted per pixel by class rebalancing."""

from __future__ import annotations

import torch
from torch import Tensor


def soft_cross_entropy(logits: Tensor, targets: Tensor, weights: Tensor | None = None) -> Tensor:
    """Zhang et al. (2016), eq. 2: ``-1/N Σ_n w_n Σ_q Z_nq log softmax(logits_n)_q``.

    ``logits``, ``targets``: [N, Q] (each target row sums to 1); ``weights``: [N] per-sample weights or
    None (all 1). The paper sums over pixels; here the sum is divided by N so the scale does not depend on
    the resolution or the batch."""
    if logits.shape != targets.shape or logits.dim() != 2:
        raise ValueError(f"logits and targets must be [N, Q] of the same shape, got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")
    per_sample = -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1)
    if weights is not None:
        if weights.shape != per_sample.shape:
            raise ValueError(f"weights must be [N] = [{per_sample.shape[0]}], got {tuple(weights.shape)}")
        per_sample = per_sample * weights
    return per_sample.mean()


def rebalancing_weights(counts: Tensor, centres: Tensor, lam: float = 0.5, sigma: float = 5.0) -> Tensor:
    """Class-rebalancing weights of Zhang et al. (2016), eq. 3-4: ``w ∝ ((1 - λ) p̃ + λ / Q)^-1`` with
    ``E_p̃[w] = Σ_q p̃_q w_q = 1``.

    ``counts`` [Q]: how often each bin was the nearest one (the empirical prior p = counts / Σ counts);
    ``centres`` [Q, D]: the bins' centres, over which p is smoothed with a Gaussian of width ``sigma``
    (p̃_q ∝ Σ_r exp(-|c_q - c_r|² / 2σ²) p_r, renormalised to sum to 1). With no counts at all the prior
    is uniform. Returns [Q], in the dtype of ``centres``."""
    if counts.dim() != 1 or centres.dim() != 2 or counts.shape[0] != centres.shape[0]:
        raise ValueError(f"counts [Q] and centres [Q, D] must agree, got {tuple(counts.shape)} and "
                         f"{tuple(centres.shape)}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam={lam} must lie in [0, 1]")
    q = counts.shape[0]
    counts = counts.to(centres.dtype)
    total = counts.sum()
    prior = counts / total if total > 0 else torch.full_like(counts, 1.0 / q)
    if sigma > 0:
        kernel = torch.exp(-torch.cdist(centres, centres).pow(2) / (2 * sigma ** 2))  # [Q, Q]
        prior = kernel @ prior
        prior = prior / prior.sum()
    weights = 1.0 / ((1 - lam) * prior + lam / q)
    return weights / (prior * weights).sum()
