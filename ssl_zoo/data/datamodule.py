"""The LightningDataModule: multi-view training batches that resume mid-epoch, and the evaluation loaders.

Training item ``(epoch, index)`` -> ``(views, label, index)``: the multi-view transform runs with the
global generators (torch CPU, Python ``random``, NumPy) seeded from ``item_seed(seed, epoch, index)``
(and restored afterwards in the main process), so the views are a pure function of (seed, epoch,
index) -- the same with 0 or 8 workers, before or after a resume -- and, with ``num_workers=0`` where
the transform runs in the training process, the training loop's own random stream is left as it was.

Mid-epoch resume with Lightning 2.6: at checkpoint time ``FitLoop.on_save_checkpoint`` stores the
``state_dict()`` of every train DataLoader that has ``state_dict``/``load_state_dict`` (the
``_Stateful`` protocol) under ``loops.fit_loop.state_dict.combined_loader``. On restore,
``FitLoop.setup_data`` hands those states to ``load_state_dict`` (when the loop is restarting: always
with ``max_steps`` set, else when the saved epoch was unfinished) *before* creating the iterator, then
calls ``set_epoch`` with the saved epoch and continues counting batches from the saved batch index,
expecting the loader to yield only the rest of the epoch (its ``len`` stays the whole epoch; the
fetcher adds the batches already done). :class:`ResumableDataLoader` provides exactly that: its state
is the sampler's (epoch, samples consumed), where "consumed" is counted from the batches the loader has
handed to the training loop, not the indices its workers fetched ahead. Lightning does not prefetch on
top of a loader with a length, so a handed-out batch is a batch the loop trained on.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, get_worker_info

from ssl_zoo.data.config import DataConfig
from ssl_zoo.data.datasets import FileDataset, Splits, UnreadableImages, build_datasets
from ssl_zoo.data.sampler import ResumableSampler, world
from ssl_zoo.errors import DataError

log = logging.getLogger(__name__)

# Written into the run directory: one line per image file that could not be decoded and was skipped.
UNREADABLE_FILE = "unreadable_images.txt"

ViewTransform = Callable[[Image.Image], Sequence[Tensor]]
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """SplitMix64's finaliser (Steele et al. 2014): a bijective 64-bit mix (nearby in, unrelated out)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one training item's augmentation: a 63-bit hash of (seed, epoch, index)."""
    h = _splitmix64(seed & _MASK64)
    h = _splitmix64(h ^ (epoch & _MASK64))
    return _splitmix64(h ^ (index & _MASK64)) >> 1


@contextmanager
def seeded_rng(seed: int, restore: bool | None = None) -> Iterator[None]:
    """Run the block with torch's CPU generator, ``random`` and NumPy's global generator seeded from
    ``seed``; with ``restore``, put back the states they had afterwards.

    ``restore`` defaults to "in the main process": a worker's global generators serve nothing else, but
    with ``num_workers=0`` the transform runs in the training process, whose stream must stay as it was.
    Restoring costs ~0.3 ms per item (NumPy's state round trip dominates), skipping it ~0.02 ms.
    Only the CPU generator is touched (``torch.manual_seed`` would reseed the CUDA generators too):
    transforms run on the CPU, and the GPU streams belong to the training step.
    """
    if restore is None:
        restore = get_worker_info() is None
    if restore:
        torch_state = torch.default_generator.get_state()
        py_state, np_state = random.getstate(), np.random.get_state()
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    try:
        yield
    finally:
        if restore:
            torch.default_generator.set_state(torch_state)
            random.setstate(py_state)
            np.random.set_state(np_state)


class TrainViewDataset(Dataset):
    """Item ``(epoch, index)`` -> ``(views: list[Tensor[C,H,W]], label: int, index: int)``.

    ``base[index]`` is ``(PIL.Image, label)``; ``transform`` turns one image into its views (a list,
    possibly of different sizes for multi-crop). A plain ``index`` means epoch 0.
    """

    def __init__(self, base: Dataset, transform: ViewTransform, seed: int):
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[list[Tensor], int, int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image, label = self.base[index]
        with seeded_rng(item_seed(self.seed, epoch, index)):
            views = list(self.transform(image))
        return views, int(label), int(index)


class EvalDataset(Dataset):
    """Item ``i`` -> ``(transform(image): Tensor[C,H,W], label: int)`` of ``base[indices[i]]``.

    The transform is meant to be deterministic; it runs seeded all the same, so a random one could not
    shift the training process's generators either.
    """

    def __init__(self, base: Dataset, transform: Callable[[Image.Image], Tensor], indices: Sequence[int],
                 seed: int = 0):
        self.base, self.transform, self.indices, self.seed = base, transform, list(indices), seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image, label = self.base[self.indices[i]]
        with seeded_rng(item_seed(self.seed, -1, self.indices[i])):
            return self.transform(image), int(label)


def collate_views(batch: list[tuple[list[Tensor], int, int]]) -> tuple[list[Tensor], Tensor, Tensor]:
    """``[(views, label, index)] * B`` -> ``(views: list[Tensor[B,C,Hv,Wv]], labels [B], index [B])``, long.

    Views are stacked per position: position ``v`` of every item has one size (its crop group's), while
    different positions may differ (multi-crop: 2 global + k local views).
    """
    num_views = len(batch[0][0])
    if any(len(views) != num_views for views, _, _ in batch):
        counts = sorted({len(b[0]) for b in batch})
        raise ValueError(f"every item must have the same number of views, got {counts}")
    views = [torch.stack([item[0][v] for item in batch]) for v in range(num_views)]
    labels = torch.tensor([item[1] for item in batch], dtype=torch.long)
    index = torch.tensor([item[2] for item in batch], dtype=torch.long)
    return views, labels, index


def worker_init(worker_id: int) -> None:
    """One intra-op thread per worker: N workers x all cores of threads would oversubscribe the CPU."""
    torch.set_num_threads(1)


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`ResumableSampler` whose ``state_dict`` is "epoch, samples consumed".

    Each batch it hands out is reported to the sampler (``report_consumed``), so the state counts
    batches consumed by the training loop, not the ``prefetch_factor x num_workers`` batches the workers
    fetched ahead. ``load_state_dict`` makes the next iteration yield only the rest of that epoch.
    The underlying iterator (and its worker prefetch) is created at the first ``next``, after Lightning
    has called ``set_epoch`` -- Lightning calls ``iter`` before ``set_epoch`` when it resumes.
    """

    sampler: ResumableSampler

    def __iter__(self) -> Iterator[Any]:
        return self._iterate()

    def _iterate(self) -> Iterator[Any]:
        sampler, handed = self.sampler, 0
        for batch in super().__iter__():
            handed += 1
            sampler.report_consumed(handed * self.batch_size)
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state_dict)


def seeded_subset(n: int, size: int | None, seed: int) -> list[int]:
    """``size`` of ``range(n)`` chosen by a generator seeded with ``seed``, sorted; all of them if None."""
    if size is None or size >= n:
        return list(range(n))
    g = torch.Generator()
    g.manual_seed(seed)
    return sorted(torch.randperm(n, generator=g)[:size].tolist())


def shard(indices: list[int], rank: int, world_size: int) -> list[int]:
    """This rank's share of ``indices`` (``indices[rank::world_size]``), padded with the first indices to
    equal shares as DistributedSampler does, so features gathered across ranks have equal sizes."""
    if world_size == 1 or not indices:
        return indices
    total = -(-len(indices) // world_size) * world_size
    padded = (indices * (-(-total // len(indices))))[:total]
    return padded[rank::world_size]


class SSLDataModule(pl.LightningDataModule):
    """Training batches ``(views, labels, index)`` and validation loaders ``[kNN bank, test]``.

    ``train_transform``: PIL.Image -> list of view tensors; ``eval_transform``: PIL.Image -> Tensor[C,H,W].
    ``seed`` fixes the data order, the augmentations and the evaluation subsets. With a
    ``batch_transform`` (the batched augmentation backend), ``train_transform`` only turns each image
    into a uint8 tensor and ``batch_transform(images, item_seeds)`` makes the views of the whole batch
    on the device, after the transfer.
    """

    def __init__(self, cfg: DataConfig, train_transform: ViewTransform,
                 eval_transform: Callable[[Image.Image], Tensor], seed: int,
                 batch_transform: Callable[[Tensor, list[int]], list[Tensor]] | None = None):
        super().__init__()
        self.cfg, self.seed = cfg, seed
        self.train_transform, self.eval_transform = train_transform, eval_transform
        self.batch_transform = batch_transform
        self._splits: Splits | None = None
        self.unreadable = UnreadableImages()  # shared by every file-backed split (train, bank, test)
        self._told_unlabelled = False

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.batch_transform is None or self.trainer is None or not self.trainer.training:
            return batch
        (images,), labels, index = batch
        epoch = self.trainer.current_epoch  # the sampler's epoch: Lightning sets it from this counter
        seeds = [item_seed(self.seed, epoch, int(i)) for i in index.tolist()]
        return self.batch_transform(images, seeds), labels, index

    def setup(self, stage: str | None = None) -> None:
        """Build the data sets once; later calls (Lightning calls it per stage) reuse the arrays."""
        if self._splits is None:
            splits = build_datasets(self.cfg)
            for part in self._file_sets(splits):
                part.unreadable = self.unreadable
                part[0]  # the first readable file stands in for unreadable ones; none at all is a DataError
            self._splits = splits

    @staticmethod
    def _file_sets(splits: Splits) -> list[FileDataset]:
        parts = {id(p): p for p in (splits.train, splits.bank, splits.test) if isinstance(p, FileDataset)}
        return list(parts.values())

    def _attach_unreadable_list(self) -> None:
        """Unreadable files are listed in the run directory once a trainer (and so a run) exists."""
        if self.trainer is not None and self._file_sets(self.splits):
            self.unreadable.attach(Path(self.trainer.default_root_dir) / UNREADABLE_FILE)

    def teardown(self, stage: str) -> None:
        skipped = len(self.unreadable)
        if skipped:
            where = f"; listed in {self.unreadable.file}" if self.unreadable.file else ""
            log.warning("%d unreadable image file(s) were skipped, each replaced by the next readable one%s",
                        skipped, where)

    @property
    def splits(self) -> Splits:
        self.setup()
        assert self._splits is not None
        return self._splits

    @property
    def train_size(self) -> int:
        """Images in the self-supervised training split (all ranks together)."""
        return len(self.splits.train)

    @property
    def has_labels(self) -> bool:
        """Whether the kNN bank and the test split exist with labels (false: unlabelled imagefolder)."""
        return self.splits.test is not None and self.splits.num_classes is not None

    @property
    def num_classes(self) -> int | None:
        return self.splits.num_classes if self.has_labels else None

    def _loader_kwargs(self) -> dict[str, Any]:
        cfg = self.cfg
        workers = cfg.num_workers > 0
        # A private generator: DataLoader draws its worker base seed from it at every iter(), which would
        # otherwise consume one number of the global stream per epoch (and one more on resume).
        generator = torch.Generator()
        generator.manual_seed(self.seed)
        return {"num_workers": cfg.num_workers, "pin_memory": cfg.pin_memory and torch.cuda.is_available(),
                "persistent_workers": workers and cfg.persistent_workers,
                "worker_init_fn": worker_init if workers else None, "generator": generator}

    def train_dataloader(self) -> ResumableDataLoader:
        cfg, world_size = self.cfg, world()[0]
        self._attach_unreadable_list()
        if not self.has_labels and not self._told_unlabelled:
            self._told_unlabelled = True
            log.info("data.name=%s with data.labelled=%s has no labels: the kNN monitor, the online probe and "
                     "the representation health checks are off for this run", cfg.name, cfg.labelled)
        per_device = self.train_size // world_size
        if per_device < cfg.batch_size:
            raise DataError(f"data.batch_size={cfg.batch_size} exceeds the {per_device} training images per "
                            f"device ({self.train_size} over {world_size} device(s)): lower data.batch_size")
        sampler = ResumableSampler(self.train_size, seed=self.seed, shuffle=True, drop_last=True)
        dataset = TrainViewDataset(self.splits.train, self.train_transform, self.seed)
        return ResumableDataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                                   collate_fn=collate_views, **self._loader_kwargs())

    def train_batches_per_epoch(self, world_size: int = 1) -> int:
        """Training batches per epoch and device (both the sampler and the loader drop the remainder)."""
        return (self.train_size // world_size) // self.cfg.batch_size

    def val_dataloader(self) -> list[DataLoader]:
        """``[kNN bank, test]``, batches ``(images [B,C,H,W], labels [B])`` in a fixed order; each rank
        gets an equal shard. Empty without labels (no kNN, no probe)."""
        if not self.has_labels:
            return []
        self._attach_unreadable_list()
        splits, cfg = self.splits, self.cfg
        world_size, rank = world()
        parts = ((splits.bank, cfg.knn_bank_size, 1), (splits.test, cfg.val_size, 2))
        loaders = []
        for base, size, salt in parts:
            indices = shard(seeded_subset(len(base), size, self.seed + salt), rank, world_size)
            dataset = EvalDataset(base, self.eval_transform, indices, self.seed)
            loaders.append(DataLoader(dataset, batch_size=cfg.val_batch_size, shuffle=False, drop_last=False,
                                      **self._loader_kwargs()))
        return loaders
