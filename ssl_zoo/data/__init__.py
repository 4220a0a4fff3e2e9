"""Data: the ``data`` config group, data sets, the resumable sampler and the LightningDataModule."""

from __future__ import annotations

from ssl_zoo.data.config import KNOWN_CLASSES, NAMES, DataConfig
from ssl_zoo.data.datamodule import (
    UNREADABLE_FILE,
    EvalDataset,
    ResumableDataLoader,
    SSLDataModule,
    TrainViewDataset,
    collate_views,
    item_seed,
    seeded_rng,
)
from ssl_zoo.data.datasets import (
    ArrayDataset,
    FileDataset,
    Splits,
    UnreadableImages,
    build_datasets,
    load_image,
    to_mode,
)
from ssl_zoo.data.fashion_mnist import load_fashion_mnist, read_idx
from ssl_zoo.data.sampler import ResumableSampler
from ssl_zoo.data.synthetic import make_synthetic

__all__ = [
    "KNOWN_CLASSES", "NAMES", "DataConfig", "UNREADABLE_FILE", "EvalDataset", "ResumableDataLoader", "SSLDataModule",
    "TrainViewDataset", "collate_views", "item_seed", "seeded_rng", "ArrayDataset", "FileDataset", "Splits",
    "UnreadableImages",
    "build_datasets", "load_image", "to_mode", "load_fashion_mnist", "read_idx", "ResumableSampler", "make_synthetic",
]
