"""SwAV's prototypes (Caron et al. 2020): K trainable vectors scored against L2-normalised embeddings."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Prototypes(nn.Linear):
    """A bias-free linear layer [B, dim] -> [B, K] whose K rows are the prototypes c_k.

    SwAV re-normalises every row to unit length before each training step (:meth:`normalize_`), so
    that with normalised embeddings z the scores zᵀc_k are cosine similarities in [-1, 1].
    """

    def __init__(self, dim: int, num_prototypes: int):
        super().__init__(dim, num_prototypes, bias=False)

    @torch.no_grad()
    def normalize_(self) -> None:
        """Project every prototype back onto the unit sphere, in place."""
        self.weight.copy_(F.normalize(self.weight, dim=1))
