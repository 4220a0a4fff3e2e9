"""Convolutional decoders for the generative methods, and the encoder's last feature map they start from.

``ConvDecoder`` upsamples a feature map [B, C, h, w] to images [B, channels, H, W] with stride-2
transposed convolutions (DCGAN's generator, Radford et al. 2016), as the context encoder's decoder
(Pathak et al. 2016) does; ``feature_map`` gives the map of the encoder those decoders read.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ssl_zoo.errors import ConfigError


def feature_map(backbone: nn.Module, x: Tensor, stage: int = 4) -> tuple[Tensor, Tensor]:
    """``(map [B, C, h, w], pooled [B, C'])`` of ``backbone`` on ``x`` [B, C_in, H, W].

    torchvision ResNets: the output of residual stage ``stage`` (1-4; 4 is layer4, whose global average
    is ``pooled``, what ``backbone(x)`` returns); timm ViTs: the patch tokens laid out on their grid and
    the model's own pooled head input (``stage`` must be 4: the last block's tokens).
    """
    if hasattr(backbone, "layer4"):
        b = backbone
        if stage not in (1, 2, 3, 4):
            raise ValueError(f"a ResNet has stages 1 to 4, got {stage}")
        maps = [b.maxpool(b.relu(b.bn1(b.conv1(x))))]
        for layer in (b.layer1, b.layer2, b.layer3, b.layer4):
            maps.append(layer(maps[-1]))
        return maps[stage], torch.flatten(b.avgpool(maps[-1]), 1)
    if hasattr(backbone, "forward_features") and hasattr(backbone, "patch_embed"):
        if stage != 4:
            raise ValueError(f"a ViT's feature map is its last block's tokens (stage 4), got stage {stage}")
        tokens = backbone.forward_features(x)
        pooled = backbone.forward_head(tokens, pre_logits=True)
        h, w = backbone.patch_embed.grid_size
        patches = tokens[:, getattr(backbone, "num_prefix_tokens", 0):]
        return patches.transpose(1, 2).reshape(x.shape[0], -1, h, w), pooled
    raise ConfigError("backbone.name", type(backbone).__name__, "a ResNet or a timm ViT",
                      "the decoder needs the encoder's spatial feature map")


@torch.no_grad()
def feature_map_shape(backbone: nn.Module, channels: int, image_size: int, stage: int = 4) -> tuple[int, int, int]:
    """(C, h, w) of :func:`feature_map` for ``image_size`` px inputs, from one dry pass in eval mode
    (train-mode BatchNorm cannot normalise a single 1x1 map)."""
    was_training = backbone.training
    backbone.eval()
    fmap, _ = feature_map(backbone, torch.zeros(1, channels, image_size, image_size), stage)
    backbone.train(was_training)
    return tuple(fmap.shape[1:])


class ConvDecoder(nn.Module):
    """[B, in_channels, h, w] -> [B, out_channels, out_size, out_size].

    ``ceil(log2(out_size / h))`` blocks of ConvTranspose2d(4, stride 2) -> BatchNorm -> ReLU halve the
    width from ``width`` (at least 16), then a 3x3 convolution maps to ``out_channels`` (linear output:
    targets are normalised pixels or logits). When ``out_size / h`` is not a power of two the last map is
    resized bilinearly to ``out_size``.
    """

    def __init__(self, in_channels: int, out_channels: int, in_size: int, out_size: int, width: int = 256):
        super().__init__()
        self.out_size = out_size
        num_up = max(0, math.ceil(math.log2(out_size / in_size))) if out_size > in_size else 0
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU(inplace=True)]
        c = width
        for _ in range(num_up):
            nxt = max(c // 2, 16)
            layers += [nn.ConvTranspose2d(c, nxt, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(nxt),
                       nn.ReLU(inplace=True)]
            c = nxt
        layers.append(nn.Conv2d(c, out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        y = self.net(x)
        if y.shape[-1] != self.out_size or y.shape[-2] != self.out_size:
            y = F.interpolate(y, size=(self.out_size, self.out_size), mode="bilinear", align_corners=False)
        return y


def save_reconstructions(method, rows: tuple[Tensor, ...], filename: str = "reconstructions.png",
                         max_images: int = 8) -> Path | None:
    """Save a PNG grid in the run directory: one row per tensor of ``rows`` (e.g. input, corrupted input,
    reconstruction), each [B, C, H, W] normalised with the run's ``data.mean``/``data.std``; the first
    ``max_images`` images of each. Rank 0 only; returns the path written (None on other ranks)."""
    from torchvision.utils import save_image

    trainer = method.trainer
    if not trainer.is_global_zero:
        return None
    data = method.cfg.data
    mean = torch.tensor(list(data.mean)).view(1, -1, 1, 1)
    std = torch.tensor(list(data.std)).view(1, -1, 1, 1)
    n = min(max_images, rows[0].shape[0])
    images = torch.cat([(r[:n].float().cpu() * std + mean).clamp(0, 1) for r in rows])
    path = Path(trainer.default_root_dir) / filename
    save_image(images, str(path), nrow=n)
    return path
