"""DINO's projection head (Caron et al. 2021): an MLP to a bottleneck, L2 normalisation, and a
weight-normalised linear layer onto ``out_dim`` prototypes."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    """[B, in_dim] -> [B, out_dim].

    ``num_layers`` Linear layers (in_dim -> hidden_dim ... -> bottleneck_dim) with GELU between them
    (and BatchNorm when ``use_bn``), then z / ‖z‖, then ``last_layer``: a bias-free Linear(bottleneck_dim,
    out_dim) under weight normalisation, w_k = g_k v_k / ‖v_k‖. The scales g start at 1; with
    ``norm_last_layer`` (the paper's default for ViT-S) they stay frozen at 1, so every prototype row
    has unit norm. The MLP's weights are drawn from a truncated normal (std 0.02) with zero biases, as
    the reference; the last layer keeps PyTorch's default initialisation.
    Recipe: hidden 2048, bottleneck 256, 3 layers, out_dim 65536.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3, use_bn: bool = False, norm_last_layer: bool = True):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers={num_layers}: the DINO head needs at least one layer")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < num_layers - 1:
                if use_bn:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        scale = self.last_layer.parametrizations.weight.original0
        scale.data.fill_(1.0)
        scale.requires_grad_(not norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))
