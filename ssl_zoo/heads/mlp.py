"""The MLP that every projector and predictor of the zoo is an instance of."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor


class MLP(nn.Module):
    """``num_layers`` Linear layers; hidden layers are Linear -> BatchNorm1d -> ReLU.

    - SimCLR (Chen et al. 2020a): 2 layers, hidden 2048, output 128; v2 uses 3 layers.
    - MoCo v2 (Chen et al. 2020b): 2 layers, hidden 2048, output 128, *no* BN (``hidden_bn=False``).
    - BYOL (Grill et al. 2020): projector and predictor 2 layers, hidden 4096, output 256.
    - MoCo v3 / SimCLR v2 also put a BN without affine on the output (``last_bn=True``).
    Shapes: [B, in_dim] -> [B, out_dim].
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2,
                 hidden_bn: bool = True, last_bn: bool = False, bias: bool = True):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers={num_layers}: an MLP needs at least one layer")
        layers: list[nn.Module] = []
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == num_layers - 1
            layers.append(nn.Linear(d_in, d_out, bias=bias and not (hidden_bn and not last)))
            if not last:
                if hidden_bn:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.ReLU(inplace=True))
            elif last_bn:
                layers.append(nn.BatchNorm1d(d_out, affine=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
