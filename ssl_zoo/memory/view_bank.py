"""A memory bank of one L2-normalised feature vector per training image (InstDisc, CMC, PIRL).

Wu et al. (2018) keep v_i for every one of the n training images and update the entries of a batch
with a proximal (momentum) step after the loss: v_i ← normalize(m·v_i + (1 - m)·f_i). CMC (Tian et
al. 2019) keeps one such bank per view and PIRL (Misra & van der Maaten 2019) one of the untransformed
images, both with m = 0.5. Negatives are drawn uniformly from the n entries.

The NCE normaliser log Z of each objective that contrasts against this bank is estimated once, at the
first step, and kept (Wu et al. 2018, eq. 5): ``log_z`` holds it, NaN until estimated, so it lives in
the checkpoint and a resumed run goes on with the same constant.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ssl_zoo.distributed import all_reduce_mean
from ssl_zoo.losses.contrastive import estimate_nce_normaliser


class ViewMemoryBank(nn.Module):
    """``size`` rows of dimension ``dim`` [n, D], one per training image, indexed by dataset index.

    Rows start as random unit vectors (InstDisc's code draws them uniformly; any random unit vectors
    serve). ``num_normalisers``: how many NCE objectives keep their own log Z against this bank.
    """

    frozen_in_overfit_test = True  # a fixed-batch overfit would write its own positives into the bank

    def __init__(self, size: int, dim: int, momentum: float = 0.5, num_normalisers: int = 1):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"a memory bank needs size >= 1 and dim >= 1, got {size} and {dim}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"memory-bank momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.register_buffer("bank", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("log_z", torch.full((num_normalisers,), float("nan")))

    @property
    def size(self) -> int:
        return self.bank.shape[0]

    def forward(self, index: Tensor) -> Tensor:
        """The stored rows of ``index`` (any shape S) as [*S, D], detached."""
        return self.bank.detach()[index]

    def sample(self, rows: int, m: int) -> Tensor:
        """``m`` noise indices per anchor, drawn uniformly with replacement: [rows, m] (P_n = 1/n)."""
        return torch.randint(self.size, (rows, m), device=self.bank.device)

    @torch.no_grad()
    def normaliser(self, k: int, negative_logits: Tensor) -> Tensor:
        """log Z of objective ``k``: estimated from the first negatives it sees (averaged over ranks),
        then fixed."""
        if torch.isnan(self.log_z[k]):
            estimate = estimate_nce_normaliser(negative_logits, self.size)
            self.log_z[k] = all_reduce_mean(estimate.reshape(1).to(self.log_z.dtype))[0]
        return self.log_z[k]

    @torch.no_grad()
    def update(self, index: Tensor, features: Tensor) -> None:
        """v_i ← normalize(m·v_i + (1 - m)·normalize(f_i)) for the rows of ``index`` [N] (gathered over
        ranks by the caller, so every rank holds the same bank)."""
        f = F.normalize(features.detach().to(self.bank.dtype), dim=1)
        mixed = self.momentum * self.bank[index] + (1.0 - self.momentum) * f
        self.bank[index] = F.normalize(mixed, dim=1)
