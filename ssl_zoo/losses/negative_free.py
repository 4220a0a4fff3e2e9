"""Losses that learn without negative pairs: BYOL, SimSiam, Barlow Twins, VICReg.

All functions are pure: tensors in, a scalar (or a dict of scalars) out. Anything that must be global
over data-parallel ranks (Barlow Twins' cross-correlation, VICReg's variance and covariance) is made
global by the caller, who gathers the embeddings over ranks (with a gradient-carrying all-gather)
before calling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_pair(a: Tensor, b: Tensor, names: str) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"{names} must be two [N, D] tensors of the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")


def _off_diagonal(m: Tensor) -> Tensor:
    """The D·(D-1) off-diagonal entries of a square [D, D] matrix, flattened."""
    d = m.shape[0]
    return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL regression loss (Grill et al. 2020, eq. 2): mean over the batch of 2 - 2·cos(p, z).

    ``p``: [N, D] online predictions; ``z``: [N, D] target projections. The stop-gradient on the target
    is the caller's: ``z`` comes from the momentum network under ``torch.no_grad()``, so gradients reach
    ``z`` only if the caller lets them. The symmetric BYOL loss is ``byol_loss(p1, z2) + byol_loss(p2, z1)``.
    Zero vectors have cosine 0 with everything (``F.normalize`` keeps them at 0), so the loss stays finite.
    """
    _check_pair(p, z, "p, z")
    cos = (F.normalize(p, dim=-1) * F.normalize(z, dim=-1)).sum(dim=-1)
    return (2 - 2 * cos).mean()


def simsiam_loss(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam negative cosine similarity (Chen & He 2020, eq. 1): -mean cos(p, stopgrad(z)).

    ``p``: [N, D] predictor outputs; ``z``: [N, D] projections of the other view. The stop-gradient is
    part of SimSiam's formula (without it the method collapses), so ``z`` is detached here. The
    symmetric loss is ``(simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2``.
    """
    _check_pair(p, z, "p, z")
    cos = (F.normalize(p, dim=-1) * F.normalize(z.detach(), dim=-1)).sum(dim=-1)
    return -cos.mean()


def _standardise(z: Tensor, eps: float) -> Tensor:
    # BatchNorm1d(affine=False) in training mode, as the reference applies to z: biased variance.
    mean = z.mean(dim=0, keepdim=True)
    var = z.var(dim=0, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps)


def barlow_twins_terms(z1: Tensor, z2: Tensor, lambda_: float = 5e-3, eps: float = 1e-5) -> dict[str, Tensor]:
    """Barlow Twins' terms (Zbontar et al. 2021, eq. 1), for logging.

    ``z1``, ``z2``: [N, D] projector outputs of the two views. Each dimension is standardised over the
    batch (zero mean, unit biased variance, ``eps`` added to the variance as BatchNorm does), then the
    cross-correlation is c = z1ᵀz2 / N ([D, D]). Returns ``on_diagonal`` = Σ_i (1 - c_ii)²,
    ``off_diagonal`` = Σ_{i≠j} c_ij² (unweighted) and ``loss`` = on_diagonal + λ·off_diagonal.

    To make it global over ranks, the caller gathers ``z1`` and ``z2`` over all ranks (an all-gather that
    carries gradients) and passes the global [N_global, D] batch: the standardisation and c then use
    the global batch, which is what the reference gets with synchronised BatchNorm and an all-reduce
    of c. ``lambda_`` defaults to 5e-3 (the reference uses 0.0051).
    """
    _check_pair(z1, z2, "z1, z2")
    n = z1.shape[0]
    if n < 2:
        raise ValueError(f"Barlow Twins needs a batch of at least 2 to standardise, got {n}")
    c = _standardise(z1, eps).T @ _standardise(z2, eps) / n
    on_diagonal = (torch.diagonal(c) - 1).pow(2).sum()
    off_diagonal = _off_diagonal(c).pow(2).sum()
    return {"on_diagonal": on_diagonal, "off_diagonal": off_diagonal,
            "loss": on_diagonal + lambda_ * off_diagonal}


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambda_: float = 5e-3, eps: float = 1e-5) -> Tensor:
    """Barlow Twins loss Σ(1 - c_ii)² + λ Σ_{i≠j} c_ij²; see :func:`barlow_twins_terms`."""
    return barlow_twins_terms(z1, z2, lambda_, eps)["loss"]


def _variance_hinge(z: Tensor, eps: float) -> Tensor:
    # Unbiased variance, as the reference's torch.var: the hinge keeps each dimension's std above 1.
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(1 - std).mean()


def _covariance_penalty(z: Tensor) -> Tensor:
    n, d = z.shape
    centred = z - z.mean(dim=0, keepdim=True)
    cov = centred.T @ centred / (n - 1)
    return _off_diagonal(cov).pow(2).sum() / d


def vicreg_terms(z1: Tensor, z2: Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
                 cov_weight: float = 1.0, eps: float = 1e-4) -> dict[str, Tensor]:
    """VICReg's three terms and their weighted total (Bardes et al. 2022, eq. 6).

    ``z1``, ``z2``: [N, D] expander outputs of the two views. Returns, unweighted:

    - ``invariance``: mean squared error between z1 and z2 (mean over N·D entries);
    - ``variance``: for each branch, mean over dimensions of relu(1 - sqrt(var + eps)) with the unbiased
      variance over the batch; the two branches are averaged (/2), as in the reference code;
    - ``covariance``: for each branch, the sum of squared off-diagonal entries of the unbiased (N-1)
      covariance, divided by D; the two branches are summed (not averaged), as in the reference code;

    and ``loss`` = sim_weight·invariance + var_weight·variance + cov_weight·covariance.

    To make the variance and covariance global over ranks, the caller passes embeddings gathered over
    all ranks (an all-gather that carries gradients). The reference computes the invariance term on the
    local batch and the other two on the gathered one; with gathered inputs here the invariance term is
    the global mean, which has the same expectation.
    """
    _check_pair(z1, z2, "z1, z2")
    if z1.shape[0] < 2:
        raise ValueError(f"VICReg needs a batch of at least 2 for its variance, got {z1.shape[0]}")
    invariance = F.mse_loss(z1, z2)
    variance = (_variance_hinge(z1, eps) + _variance_hinge(z2, eps)) / 2
    covariance = _covariance_penalty(z1) + _covariance_penalty(z2)
    loss = sim_weight * invariance + var_weight * variance + cov_weight * covariance
    return {"invariance": invariance, "variance": variance, "covariance": covariance, "loss": loss}


def vicreg_loss(z1: Tensor, z2: Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
                cov_weight: float = 1.0, eps: float = 1e-4) -> Tensor:
    """VICReg's weighted total loss (scalar); :func:`vicreg_terms` gives the terms for logging."""
    return vicreg_terms(z1, z2, sim_weight, var_weight, cov_weight, eps)["loss"]
