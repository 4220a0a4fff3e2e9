"""The head that turns the encoded patches of a jigsaw puzzle into one vector (PIRL, Misra & van der
Maaten 2019, sec. 3.3)."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor


class PatchConcatHead(nn.Module):
    """[N, P, in_dim] -> [N, out_dim]: each of the P patch features is projected to ``patch_dim`` by
    one shared linear map, the P projections are concatenated in the order they are given (the
    shuffled order of the puzzle), and a second linear map takes the P·patch_dim vector to ``out_dim``.
    PIRL: 2048 -> 128 per patch, 9 x 128 -> 128."""

    def __init__(self, in_dim: int, patch_dim: int, num_patches: int, out_dim: int):
        super().__init__()
        self.num_patches = num_patches
        self.patch = nn.Linear(in_dim, patch_dim)
        self.out = nn.Linear(num_patches * patch_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[1] != self.num_patches:
            raise ValueError(f"expected [N, {self.num_patches}, D] patch features, got shape {tuple(x.shape)}")
        return self.out(self.patch(x).flatten(1))
