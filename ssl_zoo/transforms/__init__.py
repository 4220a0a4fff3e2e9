"""View pipelines: N views per image (multi-crop included), every probability and range a config field."""

from __future__ import annotations

from ssl_zoo.transforms.config import AugmentationConfig, CropGroupConfig, to_augmentation_config
from ssl_zoo.transforms.views import (
    EvalTransform,
    MultiViewTransform,
    blur_kernel_size,
    build_eval_transform,
    build_view_transform,
    crop_view_transform,
)

__all__ = ["AugmentationConfig", "CropGroupConfig", "EvalTransform", "MultiViewTransform", "blur_kernel_size",
           "build_eval_transform", "build_view_transform", "crop_view_transform", "to_augmentation_config"]
