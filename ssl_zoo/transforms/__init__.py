"""View pipelines: N views per image (multi-crop included), every probability and range a config field."""

from ssl_zoo.transforms.config import AugmentationConfig, CropGroupConfig
from ssl_zoo.transforms.views import MultiViewTransform, build_eval_transform, build_view_transform

__all__ = ["AugmentationConfig", "CropGroupConfig", "MultiViewTransform", "build_eval_transform",
           "build_view_transform"]
