"""1x1-convolution embedding heads for local-global objectives (DIM, Hjelm et al. 2018; AMDIM, Bachman
et al. 2019): the same small residual MLP applied at every location of a feature map, or to a global
vector laid out as a 1 x 1 map."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor


class Conv1x1Embedding(nn.Module):
    """[B, in_dim, h, w] -> [B, out_dim, h, w]: a one-hidden-layer MLP at every location plus a linear
    shortcut, 1x1(relu(bn(1x1(x)))) + 1x1(x), as AMDIM's embedding networks (which start close to the
    linear map, easing the early optimisation of the scores)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(in_dim, hidden_dim, 1, bias=False), nn.BatchNorm2d(hidden_dim),
                                 nn.ReLU(inplace=True), nn.Conv2d(hidden_dim, out_dim, 1))
        self.shortcut = nn.Conv2d(in_dim, out_dim, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x) + self.shortcut(x)
