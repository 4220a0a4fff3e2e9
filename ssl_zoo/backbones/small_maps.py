"""Convolutions of 1 x 1 and 2 x 2 maps, computed as one matrix product.

A ResNet with the ImageNet stem shrinks a 32 px image to 2 x 2 maps in layer3 and 1 x 1 in layer4 (a 16 px
patch or local crop reaches 1 x 1 a stage earlier). There a k x k convolution reads each input pixel through
at most one tap per output pixel, so it is a linear map from the whole input map [H*W*C_in] to the whole
output map [H_out*W_out*C_out], whose [C_out, C_in] blocks are the kernel's taps (zero where an input pixel
falls outside an output's window). For a 3x3 convolution of a 2 x 2 map that dense product does 16 [C_out, C_in]
multiplications where the padded convolution does 36 (on a 1 x 1 map it is the centre tap alone), and it runs
as one large GEMM rather than as a convolution of a tiny map, which oneDNN does slowly. Measured on a 2-core
CPU (1 thread, batch 512, forward and backward of one 3x3 convolution): 2 x 2 maps, 256 channels 2.1x faster in
fp32 and 2.4x in bf16, 512 channels 1.2x and 3.0x; 3 x 3 maps, 512 channels 2.4x *slower* in fp32, so larger
maps keep the convolution. `python -m ssl_zoo.bench.small_maps` times a whole ResNet-18 both ways.

On 1 x 1 maps the product is also needed: with bf16 autocast on the CPU (torch 2.14, oneDNN) the weight
gradient of a stride-2 3x3 convolution of a 1 x 1 input comes back as garbage (1e36, inf or NaN) from batches
of a few hundred maps (measured: 128 -> 256 channels at batch 128; 256 -> 512 at batch 576), and a run stops
on a non-finite gradient after a few steps. The product is exact in any precision (tests/test_backbones.py
checks it against the float32 convolution).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def dense_weight(weight: Tensor, height: int, width: int, stride: int, padding: int) -> tuple[Tensor, int, int]:
    """The [H_out*W_out*C_out, H*W*C_in] matrix of a k x k convolution of an H x W map (pixel-major blocks,
    as channels_last lays the map out), and (H_out, W_out). Built from slices of the kernel with Python
    integers only, so ``torch.compile`` traces it without a graph break."""
    c_out, c_in, k, _ = weight.shape
    out_h, out_w = (height + 2 * padding - k) // stride + 1, (width + 2 * padding - k) // stride + 1
    blocks = []
    for i in range(out_h):
        for j in range(out_w):
            top, left = padding - i * stride, padding - j * stride  # the tap that reads input pixel (0, 0)
            r0, r1, c0, c1 = max(top, 0), min(top + height, k), max(left, 0), min(left + width, k)
            taps = weight[:, :, r0:r1, c0:c1]  # input pixels outside the window get zeros:
            blocks.append(F.pad(taps, (c0 - left, left + width - c1, r0 - top, top + height - r1)))
    dense = torch.stack(blocks).permute(0, 1, 3, 4, 2)  # [out pixels, C_out, H, W, C_in]
    return dense.reshape(out_h * out_w * c_out, height * width * c_in), out_h, out_w


class SmallMapConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict keys) that runs inputs of at most ``MAX_PIXELS`` pixels
    as one matrix product over the whole map; larger inputs go through the ordinary convolution."""

    MAX_PIXELS = 4  # 2 x 2: faster as a product; 3 x 3 slower (module docstring)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        kernel = self.kernel_size[0]
        if height * width > self.MAX_PIXELS or min(height, width) + 2 * self.padding[0] < kernel:
            return super().forward(x)  # a larger map, or one torch refuses (smaller than the kernel)
        dense, out_h, out_w = dense_weight(self.weight, height, width, self.stride[0], self.padding[0])
        bias = None if self.bias is None else self.bias.repeat(out_h * out_w)
        y = F.linear(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1), dense, bias)  # pixel-major, as channels_last
        return y.view(x.shape[0], out_h, out_w, self.out_channels).permute(0, 3, 1, 2)


def use_matmul_on_small_maps(model: nn.Module) -> nn.Module:
    """Make every square k x k convolution of ``model`` (k > 1, zero padding, no dilation, one group) a
    :class:`SmallMapConv2d`, in place; the weights, and the output for larger maps, are untouched."""
    for module in model.modules():
        if type(module) is nn.Conv2d:
            k, s, p = module.kernel_size, module.stride, module.padding
            if (k[0] == k[1] and k[0] > 1 and s[0] == s[1] and isinstance(p, tuple) and p[0] == p[1]
                    and module.dilation == (1, 1) and module.groups == 1 and module.padding_mode == "zeros"):
                module.__class__ = SmallMapConv2d
    return model
