"""A k x k convolution on a 1 x 1 map, computed as the 1 x 1 convolution by its centre tap.

With "same" padding (k // 2 on each side) a k x k convolution of a 1 x 1 input reads the input only
through its centre weight: every other tap multiplies padding. That happens inside a ResNet with the
ImageNet stem once an input is small: a 16 px patch (CPC v2, jigsaw tiles, PIRL's patches, the local
crops of multi-crop at 32 px) reaches layer4's first, stride-2 3x3 convolution as a 1 x 1 map.

There the centre-tap form is not only cheaper but needed: with bf16 autocast on the CPU (torch 2.14,
oneDNN) the weight gradient of a stride-2 3x3 convolution of a 1 x 1 input comes back as garbage
(1e36, inf or NaN) from batches of a few hundred maps (measured: 128 -> 256 channels at batch 128;
256 -> 512 at batch 576), and a run stops on a non-finite gradient after a few steps. The 1 x 1 form
is exact in any precision (tests/test_backbones.py checks it against the float32 convolution).
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class CentreTapConv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict keys) that runs 1 x 1 inputs through its centre tap."""

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] == (1, 1):
            c = self.kernel_size[0] // 2
            return F.conv2d(x, self.weight[:, :, c:c + 1, c:c + 1], self.bias, 1, 0, 1, self.groups)
        return super().forward(x)


def use_centre_tap_on_one_pixel_maps(model: nn.Module) -> nn.Module:
    """Make every square, odd, "same"-padded k x k convolution of ``model`` (k > 1, no dilation, zero
    padding) a :class:`CentreTapConv2d`, in place; the weights and the output for larger maps are untouched."""
    for module in model.modules():
        if type(module) is nn.Conv2d:
            k = module.kernel_size
            if (k[0] == k[1] and k[0] % 2 == 1 and k[0] > 1 and module.padding == (k[0] // 2, k[0] // 2)
                    and module.dilation == (1, 1) and module.padding_mode == "zeros"):
                module.__class__ = CentreTapConv2d
    return model
