"""Schema of the ``backbone`` config group."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ssl_zoo.errors import check

RESNETS = ("resnet18", "resnet34", "resnet50")
VITS = {"vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224", "vit_base": "vit_base_patch16_224"}
BACKBONES = (*RESNETS, *VITS, "timm")


@dataclass
class BackboneConfig:
    name: str = "resnet18"
    # ResNet: a CIFAR stem (3x3 stride-1 conv, no max-pool); None chooses it for images <= 64 px.
    cifar_stem: Optional[bool] = None
    zero_init_residual: bool = False
    # ViT (and any timm model that takes them): patch size; image size comes from the data group.
    patch_size: int = 16
    drop_path_rate: float = 0.0
    # backbone=timm: any timm model name, built with num_classes=0 (pooled features) and no weights.
    model_name: Optional[str] = None
    pretrained: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self, prefix: str = "backbone") -> None:
        check(self.name in BACKBONES, f"{prefix}.name", self.name, "one of: " + ", ".join(BACKBONES))
        check(self.patch_size >= 1, f"{prefix}.patch_size", self.patch_size, "an integer >= 1")
        check(0.0 <= self.drop_path_rate < 1.0, f"{prefix}.drop_path_rate", self.drop_path_rate, "a number in [0, 1)")
        if self.name == "timm":
            check(bool(self.model_name), f"{prefix}.model_name", self.model_name,
                  "a timm model name with backbone=timm", "e.g. backbone.model_name=convnext_atto")
