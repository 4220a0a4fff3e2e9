"""Encoders: ResNets (torchvision layout, optional CIFAR stem) and any timm model (ViT included).

``build_backbone`` returns ``(model, feature_dim)``; ``model(x)`` maps images [B, C, H, W] to pooled
features [B, feature_dim]. Weights are never downloaded: ``pretrained`` is off unless asked for.
"""

from __future__ import annotations

import torch.nn as nn
import torchvision
from omegaconf import DictConfig, OmegaConf

from ssl_zoo.backbones.config import RESNETS, VITS, BackboneConfig
from ssl_zoo.backbones.small_maps import use_matmul_on_small_maps
from ssl_zoo.errors import ConfigError, check

__all__ = ["BackboneConfig", "build_backbone", "uses_cifar_stem"]


def uses_cifar_stem(cfg: BackboneConfig, image_size: int) -> bool:
    """The CIFAR stem (He et al. 2016, sec. 4.2) keeps small images from shrinking to 1 px by layer4."""
    return image_size <= 64 if cfg.cifar_stem is None else cfg.cifar_stem


def _resnet(cfg: BackboneConfig, image_size: int, in_chans: int) -> tuple[nn.Module, int]:
    model = getattr(torchvision.models, cfg.name)(weights=None, zero_init_residual=cfg.zero_init_residual)
    if uses_cifar_stem(cfg, image_size):
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    return use_matmul_on_small_maps(model), feature_dim


def _timm(model_name: str, cfg: BackboneConfig, image_size: int, in_chans: int, vit: bool) -> tuple[nn.Module, int]:
    import timm  # imported here: timm's import is slow and only these backbones need it

    kwargs = dict(cfg.kwargs)
    if vit:
        check(image_size % cfg.patch_size == 0, "backbone.patch_size", cfg.patch_size,
              f"a divisor of the image size {image_size}", "set backbone.patch_size or data.image_size")
        kwargs.update(img_size=image_size, patch_size=cfg.patch_size)
    if cfg.drop_path_rate:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    try:
        model = timm.create_model(model_name, pretrained=cfg.pretrained, num_classes=0, in_chans=in_chans, **kwargs)
    except RuntimeError as e:  # timm raises RuntimeError for unknown model names
        raise ConfigError("backbone.model_name", model_name, "a model name from timm.list_models()") from e
    return model, model.num_features


def build_backbone(cfg: BackboneConfig | DictConfig, image_size: int, in_chans: int = 3) -> tuple[nn.Module, int]:
    """Build the encoder named by ``cfg`` for images of ``image_size`` px with ``in_chans`` channels."""
    if not isinstance(cfg, BackboneConfig):
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(BackboneConfig), cfg))
    if cfg.name in RESNETS:
        return _resnet(cfg, image_size, in_chans)
    if cfg.name in VITS:
        return _timm(VITS[cfg.name], cfg, image_size, in_chans, vit=True)
    return _timm(cfg.model_name, cfg, image_size, in_chans, vit="vit" in (cfg.model_name or ""))
