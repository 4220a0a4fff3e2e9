"""Schema of the ``data`` config group (``conf/data/<name>.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ssl_zoo.errors import check

# Class counts of the fixed data sets; imagefolder and synthetic take data.num_classes from the user.
KNOWN_CLASSES = {"fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "stl10": 10}
NAMES = (*KNOWN_CLASSES, "imagefolder", "synthetic")
# torchvision's ImageFolder extensions (torchvision.datasets.folder.IMG_EXTENSIONS), any letter case.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class DataConfig:
    """Which images, how they are served, and how many of them the evaluation uses.

    Images are served at their native resolution; the view and evaluation transforms resize them to
    ``image_size`` (Fashion-MNIST: 28 px upsampled to 32, so that CIFAR-style backbones fit unchanged).
    ``channels`` decides the PIL mode handed to the transforms: 1 -> ``L``, 3 -> ``RGB`` (a grey data
    set with channels=3 is replicated to RGB, a colour one with channels=1 converted to grey).
    """

    name: str = "fashion_mnist"
    # Folder of the data set's files; null picks the data set's default (see ssl_zoo.data.datasets).
    root: Optional[str] = None
    # imagefolder only: the held-out images (same class sub-folders) the kNN monitor and probe score.
    val_root: Optional[str] = None
    # imagefolder only: true = class sub-folders (ImageFolder layout); false = any folder tree of images,
    # labels are then -1 and the kNN monitor and the linear probe are off.
    labelled: bool = True
    image_size: int = 32
    channels: int = 1
    # Per-channel normalisation statistics of the training split.
    mean: list[float] = field(default_factory=lambda: [0.2860])
    std: list[float] = field(default_factory=lambda: [0.3530])
    num_classes: Optional[int] = 10
    batch_size: int = 256  # per device
    val_batch_size: int = 512  # per device
    num_workers: int = 4
    pin_memory: bool = True
    persistent_workers: bool = True
    # Training images forming the kNN bank at validation (a fixed seeded subset); null = all of them.
    knn_bank_size: Optional[int] = None
    # Test images scored at validation (a fixed seeded subset); null = all of them.
    val_size: Optional[int] = None
    # synthetic only: training and test images, classes come from num_classes, patterns from the seed.
    num_samples: int = 2048
    num_test_samples: int = 512
    synthetic_seed: int = 0

    def validate(self, prefix: str = "data") -> None:
        check(self.name in NAMES, f"{prefix}.name", self.name, "one of: " + ", ".join(NAMES))
        check(self.image_size >= 8, f"{prefix}.image_size", self.image_size, "an integer >= 8")
        check(self.channels in (1, 3), f"{prefix}.channels", self.channels, "1 (grey) or 3 (RGB)")
        check(len(self.mean) == self.channels, f"{prefix}.mean", self.mean,
              f"a list of {self.channels} number(s), one per channel (data.channels={self.channels})")
        check(len(self.std) == self.channels, f"{prefix}.std", self.std,
              f"a list of {self.channels} number(s), one per channel (data.channels={self.channels})")
        check(all(s > 0 for s in self.std), f"{prefix}.std", self.std, "numbers > 0")
        check(self.batch_size >= 1, f"{prefix}.batch_size", self.batch_size, "an integer >= 1")
        check(self.val_batch_size >= 1, f"{prefix}.val_batch_size", self.val_batch_size, "an integer >= 1")
        check(self.num_workers >= 0, f"{prefix}.num_workers", self.num_workers, "an integer >= 0")
        check(self.knn_bank_size is None or self.knn_bank_size >= 1, f"{prefix}.knn_bank_size",
              self.knn_bank_size, "null (all training images) or an integer >= 1")
        check(self.val_size is None or self.val_size >= 1, f"{prefix}.val_size", self.val_size,
              "null (all test images) or an integer >= 1")
        if self.name in KNOWN_CLASSES:
            known = KNOWN_CLASSES[self.name]
            check(self.num_classes == known, f"{prefix}.num_classes", self.num_classes,
                  f"{known} for data.name={self.name}")
        elif self.name == "synthetic":
            check(self.num_classes is not None and self.num_classes >= 2, f"{prefix}.num_classes",
                  self.num_classes, "an integer >= 2 (the number of synthetic patterns)")
            check(self.num_samples >= self.num_classes, f"{prefix}.num_samples", self.num_samples,
                  f"an integer >= data.num_classes={self.num_classes}")
            check(self.num_test_samples >= self.num_classes, f"{prefix}.num_test_samples",
                  self.num_test_samples, f"an integer >= data.num_classes={self.num_classes}")
        else:  # imagefolder
            check(bool(self.root), f"{prefix}.root", self.root,
                  "a folder of images with data.name=imagefolder")
            if self.labelled:
                check(self.num_classes is not None and self.num_classes >= 2, f"{prefix}.num_classes",
                      self.num_classes, "the number of class folders (>= 2) with data.labelled=true",
                      "or set data.labelled=false for a folder without classes")
                check(bool(self.val_root), f"{prefix}.val_root", self.val_root,
                      "a folder of held-out images with the same class folders with data.labelled=true",
                      "the kNN monitor and the probe score it; or set data.labelled=false")

    def check_paths(self, prefix: str = "data") -> None:
        """The folders named exist (and an image folder holds images): checked before a run starts, apart
        from :meth:`validate` so that a config can be validated on a machine without the data."""
        if self.name == "imagefolder":
            _check_image_folder(self.root, f"{prefix}.root")
            if self.labelled:
                _check_image_folder(self.val_root, f"{prefix}.val_root")
        elif self.root and self.name in KNOWN_CLASSES:
            check(Path(self.root).expanduser().exists(), f"{prefix}.root", self.root,
                  f"an existing folder holding the {self.name} files", "this path does not exist")


def _check_image_folder(root: str, key: str) -> None:
    """``root`` is a folder with at least one image file somewhere below it (the search stops at the first)."""
    path = Path(root).expanduser()
    check(path.is_dir(), key, root, "an existing folder of images", "this folder does not exist")
    has_image = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.rglob("*"))
    check(has_image, key, root, "a folder holding image files (" + ", ".join(IMAGE_EXTENSIONS) + ")",
          "none found, searched recursively")
