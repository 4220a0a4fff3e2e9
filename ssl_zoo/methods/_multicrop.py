"""Multi-crop batches (Caron et al. 2020): which views are global, and one encoder pass per crop size.

SwAV and DINO take 2 global crops and several smaller local crops of each image. Their reference code
concatenates the views of one resolution and runs the encoder once per resolution (so BatchNorm sees
every crop of that size together); :func:`encode_by_resolution` does the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from omegaconf import DictConfig
from torch import Tensor

from ssl_zoo.errors import ConfigError


def num_global_views(augmentation: DictConfig) -> int:
    """Views of the leading crop groups that share the first group's size: the global crops."""
    crops = list(augmentation.crops)
    count = 0
    for group in crops:
        if float(group.size) != float(crops[0].size):
            break
        count += int(group.num)
    return count


def check_backbone_takes_every_crop_size(backbone: nn.Module, augmentation: DictConfig) -> None:
    """A timm ViT built for one image size refuses smaller local crops: say so at the config key."""
    sizes = {float(group.size) for group in augmentation.crops}
    if len(sizes) > 1 and hasattr(backbone, "patch_embed") and not getattr(backbone, "dynamic_img_size", False):
        raise ConfigError("backbone.kwargs.dynamic_img_size", None, "true with multi-crop views",
                          "a ViT sees local crops smaller than its image size: "
                          "set +backbone.kwargs.dynamic_img_size=true")


def encode_by_resolution(encoder: Callable[[Tensor], Tensor], views: Sequence[Tensor]) -> list[Tensor]:
    """``encoder`` applied to every view [B, C, H_v, W_v]; returns one [B, ...] output per view.

    Consecutive views of one spatial size go through in a single batch, as the reference
    multi-crop wrappers of SwAV and DINO do.
    """
    outputs: list[Tensor] = []
    start = 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        sizes = [v.shape[0] for v in views[start:end]]
        outputs.extend(encoder(torch.cat(list(views[start:end]))).split(sizes))
        start = end
    return outputs
