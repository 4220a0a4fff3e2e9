"""Per-image view pipelines built from torchvision's v2 transforms: PIL image in, normalised tensors out.

Every random draw (crop box, flip, jitter factors and their order, blur sigma, the coin flips of the
optional operations) comes from torch's global CPU generator, which the data layer seeds per item,
so the views of an image are a pure function of (seed, epoch, index). Python's ``random`` and NumPy
are never used.

The photometric operations run on the 8-bit PIL image, as in the PyTorch code of MoCo (He et al.
2019), SwAV and DINO (Caron et al. 2020, 2021); SimCLR and BYOL (Chen et al. 2020; Grill et al. 2020)
work on float images, a difference of at most one 8-bit level per operation. The image becomes a float
tensor only at the end, for normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from ssl_zoo.errors import check
from ssl_zoo.transforms.config import AugmentationConfig, CropGroupConfig, to_augmentation_config

_INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
_MODES = {1: "L", 3: "RGB"}


def blur_kernel_size(crop_size: int, frac: float) -> int:
    """The Gaussian kernel's side for a ``crop_size`` px view: ``2 * int(crop_size * frac / 2) + 1``.

    SimCLR's and BYOL's rule (Chen et al. 2020; Grill et al. 2020): a radius of half of ``frac`` of
    the image side, so 10% of 224 px gives 23 px. Raised to at least 3: below 30 px the rule gives a
    1 px kernel, which would make ``blur_prob`` a silent no-op.
    """
    return max(3, 2 * int(crop_size * frac / 2) + 1)


def _check_data_args(image_size: int, mean: Sequence[float], std: Sequence[float], channels: int) -> None:
    check(isinstance(image_size, int) and image_size >= 1, "data.image_size", image_size, "an integer >= 1")
    check(channels in _MODES, "data.channels", channels, "1 (grey) or 3 (RGB)")
    check(len(mean) == channels, "data.mean", list(mean), f"{channels} number(s), one per channel")
    check(len(std) == channels and all(s > 0 for s in std), "data.std", list(std),
          f"{channels} number(s) > 0, one per channel")


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    if not isinstance(img, Image.Image):
        raise TypeError(f"view transforms take a PIL image, got {type(img).__name__}")
    return img if img.mode == mode else img.convert(mode)


def _to_normalised_tensor(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def crop_view_transform(group: CropGroupConfig, size: int, mean: Sequence[float], std: Sequence[float],
                        channels: int) -> v2.Compose:
    """One view of ``group`` at ``size`` px: crop, flip, jitter, grayscale, blur, solarize, equalize, normalise.

    With one channel, saturation, hue and grayscale are left out: on a grey image they are identities.
    """
    colour = channels == 3
    ops: list[v2.Transform] = [
        v2.RandomResizedCrop(size, scale=tuple(group.scale), ratio=tuple(group.ratio),
                             interpolation=_INTERPOLATION[group.interpolation], antialias=True)]
    if group.hflip_prob > 0:
        ops.append(v2.RandomHorizontalFlip(group.hflip_prob))
    jitter = (group.brightness, group.contrast, group.saturation if colour else 0.0, group.hue if colour else 0.0)
    if group.color_jitter_prob > 0 and any(jitter):
        # ColorJitter applies its four operations in a random order, as SimCLR and BYOL do.
        ops.append(v2.RandomApply([v2.ColorJitter(*jitter)], p=group.color_jitter_prob))
    if group.grayscale_prob > 0 and colour:
        ops.append(v2.RandomGrayscale(group.grayscale_prob))
    if group.blur_prob > 0:
        blur = v2.GaussianBlur(blur_kernel_size(size, group.blur_kernel_frac), sigma=tuple(group.blur_sigma))
        ops.append(v2.RandomApply([blur], p=group.blur_prob))
    if group.solarize_prob > 0:
        # PIL pixels are 0..255 and PIL inverts those >= threshold: 0.5 * 255 inverts 128..255, which are
        # exactly the 8-bit values >= 0.5 once scaled to [0, 1] (BYOL's rule).
        ops.append(v2.RandomSolarize(threshold=group.solarize_threshold * 255, p=group.solarize_prob))
    if group.equalize_prob > 0:
        ops.append(v2.RandomEqualize(group.equalize_prob))
    return v2.Compose(ops + _to_normalised_tensor(mean, std))


class MultiViewTransform:
    """One PIL image -> its views: crop group after crop group, ``num`` views each.

    Each view is a float32 tensor ``[channels, s, s]`` normalised with ``mean``/``std``, ``s`` being its
    group's size (``sizes`` lists them per view). The input is converted to ``L`` (1 channel) or
    ``RGB`` (3 channels) first.
    """

    def __init__(self, cfg: Any, image_size: int, mean: Sequence[float], std: Sequence[float], channels: int):
        self.config: AugmentationConfig = to_augmentation_config(cfg)
        _check_data_args(image_size, mean, std, channels)
        self.image_size, self.channels, self.mode = image_size, channels, _MODES[channels]
        self._groups: list[tuple[int, int, v2.Compose]] = []  # (num, size, transform) per crop group
        for i, group in enumerate(self.config.crops):
            size = group.resolve_size(image_size)
            check(size >= 2, f"augmentation.crops[{i}].size", group.size,
                  f"a size of >= 2 px at data.image_size={image_size} (this one gives {size} px)")
            self._groups.append((group.num, size, crop_view_transform(group, size, mean, std, channels)))
        self.sizes: list[int] = [size for num, size, _ in self._groups for _ in range(num)]

    @property
    def num_views(self) -> int:
        return len(self.sizes)

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        img = _to_mode(img, self.mode)
        # as_subclass: plain tensors rather than torchvision's Image wrapper, for the collate and the model
        return [transform(img).as_subclass(torch.Tensor) for num, _, transform in self._groups for _ in range(num)]

    def __repr__(self) -> str:
        groups = ", ".join(f"{num}x{size}px" for num, size, _ in self._groups)
        return f"MultiViewTransform({self.config.name}: {groups}, {self.mode})"


def build_view_transform(cfg: Any, image_size: int, mean: Sequence[float], std: Sequence[float],
                         channels: int) -> MultiViewTransform:
    """The training views of the ``augmentation`` config ``cfg`` (dataclass, DictConfig or dict), validated."""
    return MultiViewTransform(cfg, image_size, mean, std, channels)


class EvalTransform:
    """Deterministic evaluation view: shorter side resized to ``image_size``, centre crop, normalise.

    The resize is antialiased bilinear (torchvision's default) unless ``interpolation="bicubic"``.
    The whole image is kept (no ImageNet-style 224/256 centre crop), which suits data sets served at
    or near their native size: 28 px Fashion-MNIST upsampled to 32, 32 px CIFAR, 96 px STL-10.
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float], channels: int,
                 interpolation: str = "bilinear"):
        _check_data_args(image_size, mean, std, channels)
        check(interpolation in _INTERPOLATION, "interpolation", interpolation, "one of: " + ", ".join(_INTERPOLATION))
        self.image_size, self.channels, self.mode = image_size, channels, _MODES[channels]
        self.transform = v2.Compose([
            v2.Resize(image_size, interpolation=_INTERPOLATION[interpolation], antialias=True),
            v2.CenterCrop(image_size), *_to_normalised_tensor(mean, std)])

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.transform(_to_mode(img, self.mode)).as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"EvalTransform({self.image_size}px, {self.mode})"


def build_eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float], channels: int,
                         interpolation: str = "bilinear") -> EvalTransform:
    """The deterministic view used by the kNN monitor, the linear probe and feature extraction."""
    return EvalTransform(image_size, mean, std, channels, interpolation)
