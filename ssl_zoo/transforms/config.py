"""Schema of the ``augmentation`` config group: one schema serves every view pipeline.

A pipeline is a list of crop groups; each group yields ``num`` views of one size drawn with one set of
augmentation parameters. SimCLR and MoCo are one group of 2 views, BYOL two groups of 1 view (its
asymmetric blur and solarize), multi-crop (SwAV, DINO) global groups followed by a group of small local
crops. Every probability and range of the papers' recipes is a field, so a recipe is a yaml file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from ssl_zoo.errors import ConfigError, check

INTERPOLATIONS = ("bilinear", "bicubic")
BACKENDS = ("pil", "batched")


def _check_prob(value: float, key: str) -> None:
    check(0.0 <= value <= 1.0, key, value, "a probability in [0, 1]")


def _check_range(values: list[float], key: str, low: float, high: float, low_open: bool) -> None:
    """``values`` is ``[lo, hi]`` with ``low < lo`` (``low <= lo`` unless ``low_open``) and ``lo <= hi <= high``."""
    lo_ok = len(values) == 2 and (values[0] > low if low_open else values[0] >= low)
    bound = f"{low:g} < lo" if low_open else f"{low:g} <= lo"
    high_text = "" if math.isinf(high) else f" <= {high:g}"
    check(lo_ok and values[0] <= values[1] <= high, key, list(values), f"[lo, hi] with {bound} <= hi{high_text}")


@dataclass
class CropGroupConfig:
    """``num`` views of one size, each a random resized crop followed by photometric augmentations.

    Operations, in this order (SimCLR's and BYOL's order, Chen et al. 2020, Grill et al. 2020):
    random resized crop (area fraction ``scale``, aspect ``ratio``), horizontal flip, colour jitter
    (brightness, contrast, saturation, hue in a random order, all four applied together with
    probability ``color_jitter_prob``), grayscale, Gaussian blur, solarize, equalize. An operation
    whose probability is 0 is left out.

    The defaults are SimCLR's ImageNet view (Chen et al. 2020, appendix A) except for the resize
    interpolation: bilinear, torchvision's default (SimCLR's code resizes bicubically).

    ``size`` is in pixels when it is an integer >= 2 and a fraction of the data set's image size when
    it lies in (0, 1], so one config serves 32 px and 224 px data (96 px local crops of 224 px images:
    ``96 / 224``). ``blur_kernel_frac`` sets the blur kernel to that fraction of the crop size (odd,
    at least 3), as SimCLR and BYOL do (10%: 23 px at 224 px); sigma is drawn from ``blur_sigma``.
    ``solarize_threshold`` is on pixels scaled to [0, 1] (BYOL: 0.5, pixels >= 0.5 are inverted).
    Brightness, contrast and saturation draw a factor uniformly from ``[max(0, 1 - x), 1 + x]``, hue a
    shift from ``[-hue, hue]`` (torchvision's ColorJitter). BYOL's brightness is an additive shift
    instead of a factor.
    """

    num: int = 2
    size: float = 1.0
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    interpolation: str = "bilinear"
    hflip_prob: float = 0.5
    color_jitter_prob: float = 0.8
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])
    blur_kernel_frac: float = 0.1
    solarize_prob: float = 0.0
    solarize_threshold: float = 0.5
    equalize_prob: float = 0.0

    def resolve_size(self, image_size: int) -> int:
        """The view's side in pixels for a data set of ``image_size`` px images."""
        return int(round(self.size * image_size)) if self.size <= 1.0 else int(self.size)

    def validate(self, prefix: str = "augmentation.crops[0]") -> None:
        check(self.num >= 1, f"{prefix}.num", self.num, "an integer >= 1")
        check(0.0 < self.size <= 1.0 or (self.size >= 2 and float(self.size).is_integer()), f"{prefix}.size",
              self.size, "a fraction of data.image_size in (0, 1] or a whole number of pixels >= 2")
        _check_range(self.scale, f"{prefix}.scale", 0.0, 1.0, low_open=True)
        _check_range(self.ratio, f"{prefix}.ratio", 0.0, math.inf, low_open=True)
        check(self.interpolation in INTERPOLATIONS, f"{prefix}.interpolation", self.interpolation,
              "one of: " + ", ".join(INTERPOLATIONS))
        for key in ("hflip_prob", "color_jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob",
                    "equalize_prob"):
            _check_prob(getattr(self, key), f"{prefix}.{key}")
        for key in ("brightness", "contrast", "saturation"):
            check(getattr(self, key) >= 0, f"{prefix}.{key}", getattr(self, key), "a number >= 0")
        check(0.0 <= self.hue <= 0.5, f"{prefix}.hue", self.hue, "a number in [0, 0.5]")
        _check_range(self.blur_sigma, f"{prefix}.blur_sigma", 0.0, math.inf, low_open=True)
        check(0.0 < self.blur_kernel_frac <= 1.0, f"{prefix}.blur_kernel_frac", self.blur_kernel_frac,
              "a fraction of the crop size in (0, 1]")
        check(0.0 <= self.solarize_threshold <= 1.0, f"{prefix}.solarize_threshold", self.solarize_threshold,
              "a pixel value in [0, 1] (0.5 = 128/255)")


@dataclass
class AugmentationConfig:
    """A view pipeline: its crop groups, in the order their views are returned."""

    name: str = "simclr"
    crops: list[CropGroupConfig] = field(default_factory=lambda: [CropGroupConfig()])
    # pil: torchvision per image in the loader workers; batched: the whole batch on the device after the
    # loader (ssl_zoo/transforms/batched.py), for data sets of same-size images held in memory
    backend: str = "pil"

    def validate(self, prefix: str = "augmentation") -> None:
        check(self.backend in BACKENDS, f"{prefix}.backend", self.backend, "one of: " + ", ".join(BACKENDS))
        check(len(self.crops) >= 1, f"{prefix}.crops", list(self.crops), "at least one crop group")
        for i, group in enumerate(self.crops):
            group.validate(f"{prefix}.crops[{i}]")

    @property
    def num_views(self) -> int:
        return sum(group.num for group in self.crops)


def _structured(schema: type, node: Any, prefix: str) -> Any:
    """``node`` (plain dict) merged into ``schema``; an unknown key or a wrongly typed value raises
    :class:`ConfigError` naming its dotted key."""
    if not isinstance(node, dict):
        raise ConfigError(prefix, node, f"a mapping of {schema.__name__} fields")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    except (ConfigKeyError, ValidationError) as e:
        # full_key is relative to node: "num", or "scale[1]" for a list item; report the whole field
        name = str(e.full_key or e.key).split("[")[0].split(".")[0]
        if isinstance(e, ConfigKeyError):
            allowed = "a known key (" + ", ".join(f.name for f in fields(schema)) + ")"
            raise ConfigError(f"{prefix}.{name}", node.get(name), allowed,
                              "this key does not exist: check its spelling") from None
        raise ConfigError(f"{prefix}.{name}", node.get(name), "a value of the declared type",
                          str(e).splitlines()[0]) from None
    except OmegaConfBaseException as e:
        raise ConfigError(prefix, node, f"a valid {schema.__name__}", str(e).splitlines()[0]) from None


def to_augmentation_config(cfg: Any, prefix: str = "augmentation") -> AugmentationConfig:
    """``cfg`` (an :class:`AugmentationConfig`, a DictConfig or a plain dict) as a validated dataclass.

    Each crop group is merged on its own, so that an unknown key or a wrongly typed value is reported
    with its full dotted key (``augmentation.crops[1].nmu``), which a merge of the whole list cannot tell.
    """
    if not isinstance(cfg, AugmentationConfig):
        node = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        crops = node.pop("crops", None)
        top = _structured(AugmentationConfig, node, prefix)
        if crops is not None:
            check(isinstance(crops, (list, tuple)), f"{prefix}.crops", crops, "a list of crop groups")
            top.crops = [_structured(CropGroupConfig, group, f"{prefix}.crops[{i}]") for i, group in enumerate(crops)]
        cfg = top
    cfg.validate(prefix)
    return cfg
