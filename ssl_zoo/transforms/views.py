"""Per-image view pipelines built from torchvision's transforms (PIL in, normalised tensors out).

All randomness comes from torch's global generator, which the data layer seeds per sample, so the
views of an image are a pure function of (seed, epoch, index).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torchvision.transforms import v2

from ssl_zoo.transforms.config import AugmentationConfig, CropGroupConfig


def _as_config(cfg) -> AugmentationConfig:
    if isinstance(cfg, AugmentationConfig):
        return cfg
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AugmentationConfig), node))


def _kernel_size(size: int, frac: float) -> int:
    k = max(3, int(size * frac))
    return k if k % 2 else k + 1


def crop_group_transform(g: CropGroupConfig, size: int, mean: Sequence[float], std: Sequence[float],
                         channels: int) -> v2.Compose:
    """One view: random resized crop, flip, colour jitter, grey, blur, solarize, equalize, normalise."""
    ops: list = [v2.RandomResizedCrop(size, scale=tuple(g.scale), ratio=tuple(g.ratio), antialias=True),
                 v2.RandomHorizontalFlip(g.hflip_prob)]
    if g.color_jitter_prob > 0:
        # saturation and hue are meaningless on one channel; leaving them out keeps grey images safe
        jitter = v2.ColorJitter(g.brightness, g.contrast, g.saturation if channels == 3 else 0,
                                g.hue if channels == 3 else 0)
        ops.append(v2.RandomApply([jitter], p=g.color_jitter_prob))
    if g.grayscale_prob > 0 and channels == 3:
        ops.append(v2.RandomGrayscale(g.grayscale_prob))
    if g.blur_prob > 0:
        blur = v2.GaussianBlur(_kernel_size(size, g.blur_kernel_frac), sigma=tuple(g.blur_sigma))
        ops.append(v2.RandomApply([blur], p=g.blur_prob))
    if g.solarize_prob > 0:
        ops.append(v2.RandomSolarize(threshold=g.solarize_threshold * 255, p=g.solarize_prob))
    if g.equalize_prob > 0:
        ops.append(v2.RandomEqualize(g.equalize_prob))
    ops += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(ops)


class MultiViewTransform:
    """Maps one PIL image to its list of views, crop group after crop group."""

    def __init__(self, cfg, image_size: int, mean: Sequence[float], std: Sequence[float], channels: int = 3):
        self.cfg = _as_config(cfg)
        self.mode = "L" if channels == 1 else "RGB"
        self.sizes: list[int] = []
        self.transforms: list[v2.Compose] = []
        for group in self.cfg.crops:
            size = group.pixels(image_size)
            t = crop_group_transform(group, size, mean, std, channels)
            self.transforms += [t] * group.num
            self.sizes += [size] * group.num

    @property
    def num_views(self) -> int:
        return len(self.transforms)

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        img = img.convert(self.mode) if img.mode != self.mode else img
        return [t(img) for t in self.transforms]


def build_view_transform(cfg, image_size: int, mean: Sequence[float], std: Sequence[float],
                         channels: int = 3) -> MultiViewTransform:
    return MultiViewTransform(cfg, image_size, mean, std, channels)


class EvalTransform:
    """Deterministic: shorter side resized to ``image_size`` (bilinear, antialiased), centre crop, normalise."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], channels: int = 3):
        self.mode = "L" if channels == 1 else "RGB"
        self.transform = v2.Compose([v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size),
                                     v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                                     v2.Normalize(list(mean), list(std))])

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = img.convert(self.mode) if img.mode != self.mode else img
        return self.transform(img)


def build_eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float], channels: int = 3):
    return EvalTransform(image_size, mean, std, channels)
