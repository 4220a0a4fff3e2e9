"""Schema of the ``augmentation`` group: one schema serves every view pipeline.

A pipeline is a list of crop groups; each group yields ``num`` views of one size with one set of
augmentation parameters. SimCLR is one group of 2 views, BYOL two groups of 1 (asymmetric blur and
solarize), multi-crop a group of 2 global and a group of N local crops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ssl_zoo.errors import check


def _prob(value: float, key: str) -> None:
    check(0.0 <= value <= 1.0, key, value, "a probability in [0, 1]")


def _range(values: list[float], key: str, low: float, high: float) -> None:
    check(len(values) == 2 and low <= values[0] <= values[1] <= high, key, values,
          f"[lo, hi] with {low} <= lo <= hi <= {high}")


@dataclass
class CropGroupConfig:
    num: int = 2
    # > 1: pixels; in (0, 1]: a fraction of data.image_size (one config serves 32 px and 224 px data)
    size: float = 1.0
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip_prob: float = 0.5
    color_jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])
    blur_kernel_frac: float = 0.1
    solarize_prob: float = 0.0
    solarize_threshold: float = 0.5
    equalize_prob: float = 0.0

    def pixels(self, image_size: int) -> int:
        return int(round(self.size * image_size)) if self.size <= 1.0 else int(self.size)

    def validate(self, prefix: str) -> None:
        check(self.num >= 1, f"{prefix}.num", self.num, "an integer >= 1")
        check(self.size > 0, f"{prefix}.size", self.size, "pixels (> 1) or a fraction of data.image_size in (0, 1]")
        _range(self.scale, f"{prefix}.scale", 1e-6, 1.0)
        _range(self.ratio, f"{prefix}.ratio", 1e-6, 1e6)
        _range(self.blur_sigma, f"{prefix}.blur_sigma", 1e-6, 1e3)
        for key in ("hflip_prob", "color_jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob",
                    "equalize_prob", "solarize_threshold"):
            _prob(getattr(self, key), f"{prefix}.{key}")
        for key in ("brightness", "contrast", "saturation"):
            check(getattr(self, key) >= 0, f"{prefix}.{key}", getattr(self, key), "a number >= 0")
        check(0.0 <= self.hue <= 0.5, f"{prefix}.hue", self.hue, "a number in [0, 0.5]")
        check(0.0 < self.blur_kernel_frac <= 1.0, f"{prefix}.blur_kernel_frac", self.blur_kernel_frac,
              "a fraction in (0, 1]")


@dataclass
class AugmentationConfig:
    name: str = "simclr"
    crops: list[CropGroupConfig] = field(default_factory=lambda: [CropGroupConfig()])

    def validate(self, prefix: str = "augmentation") -> None:
        check(len(self.crops) >= 1, f"{prefix}.crops", self.crops, "at least one crop group")
        for i, group in enumerate(self.crops):
            group.validate(f"{prefix}.crops[{i}]")

    @property
    def num_views(self) -> int:
        return sum(group.num for group in self.crops)
