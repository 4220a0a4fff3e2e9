"""CPC's context network: a PixelCNN-style stack of convolutions that are causal over the rows of a
grid of patch latents (Oord et al. 2018, sec. 3.3; Hénaff et al. 2019, sec. 3.1).

The context c[i, j] at row i sees the latents of rows <= i only (every column of them), so that it can
predict the latents of rows i + k, k >= 1, without having seen them. A causal row convolution is a
(2, kw) kernel over rows i-1 and i, with the grid padded by one row above and none below: the same as a
PixelCNN's 3 x kw kernel with its bottom row masked. Every layer grows the receptive field by one row
upwards, none downwards.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class CausalRowConv2d(nn.Conv2d):
    """Convolution whose output at row i reads input rows i-1 and i only: [B, C_in, G, G] -> [B, C_out, G, G]."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 3):
        if width % 2 != 1:
            raise ValueError(f"width must be odd (centred on the column), got {width}")
        super().__init__(in_channels, out_channels, kernel_size=(2, width), padding=0)
        self.width = width

    def forward(self, x: Tensor) -> Tensor:
        half = self.width // 2
        return super().forward(F.pad(x, (half, half, 1, 0)))  # (left, right, top, bottom)


class _ResidualBlock(nn.Module):
    """x + 1x1(relu(causal(relu(1x1(relu(x)))))): a bottleneck residual block, causal over rows."""

    def __init__(self, channels: int, bottleneck: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, bottleneck, 1),
            nn.ReLU(), CausalRowConv2d(bottleneck, bottleneck, 3),
            nn.ReLU(), nn.Conv2d(bottleneck, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class MaskedContextNetwork(nn.Module):
    """Latents [B, in_dim, G, G] -> contexts [B, dim, G, G], causal over rows.

    A 1x1 convolution to ``dim`` channels, then ``num_blocks`` residual bottleneck blocks (``dim / 4``
    wide in the middle, at least 1) whose 2 x 3 causal convolution lets each block look one row
    further up. With ``num_blocks`` >= G - 1 the context of the last row has seen the whole grid above it.
    """

    def __init__(self, in_dim: int, dim: int, num_blocks: int):
        super().__init__()
        self.inp = nn.Conv2d(in_dim, dim, 1)
        self.blocks = nn.Sequential(*(_ResidualBlock(dim, max(dim // 4, 1)) for _ in range(num_blocks)))

    def forward(self, z: Tensor) -> Tensor:
        return self.blocks(self.inp(z))
