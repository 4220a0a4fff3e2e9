"""A distributed-aware sampler whose order is a pure function of (seed, epoch), resumable mid-epoch.

Epoch ``e`` has one global order, ``torch.randperm(N)`` from a generator seeded with ``seed + e``
(``arange(N)`` without shuffle), trimmed to a multiple of the world size R (``drop_last``) or padded
by wrapping around, exactly as :class:`torch.utils.data.DistributedSampler` builds it. Rank ``r``
takes ``order[r::R]``. The sampler yields ``(epoch, index)`` pairs so that the dataset knows the epoch
even inside persistent worker processes, which never see attribute changes made in the main process.

Resume: ``state_dict()`` is ``{"epoch", "consumed", ...}``, where ``consumed`` counts samples of the
epoch used on all ranks together (R x the per-rank count). Because ranks take interleaved slices, the
samples consumed after every rank used ``c`` are exactly ``order[:c * R]``; a restored sampler yields
this rank's share of ``order[consumed:]``, so the remaining samples are the same even if R changed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ssl_zoo.errors import DataError


def world() -> tuple[int, int]:
    """(world size, rank) of the initialised default process group, else (1, 0)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class ResumableSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` for this rank's share of the epoch; see the module docstring.

    ``drop_last`` (as in DistributedSampler) drops the tail of the order that does not split evenly
    over ranks; otherwise the order is padded with its own first indices. The per-batch ``drop_last``
    of the DataLoader is separate.
    """

    def __init__(self, dataset_len: int, seed: int = 0, shuffle: bool = True, drop_last: bool = True,
                 num_replicas: int | None = None, rank: int | None = None):
        world_size, world_rank = world()
        self.num_replicas = world_size if num_replicas is None else num_replicas
        self.rank = world_rank if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is outside [0, {self.num_replicas})")
        self.dataset_len, self.seed, self.shuffle, self.drop_last = dataset_len, seed, shuffle, drop_last
        if drop_last:
            self.total_size = dataset_len // self.num_replicas * self.num_replicas
        else:
            self.total_size = -(-dataset_len // self.num_replicas) * self.num_replicas
        self.epoch = 0
        self._pending: int | None = None  # global offset loaded by load_state_dict, used by the next __iter__
        self._start = 0  # global offset the current iteration started from
        self._yielded = 0  # samples of this rank the current iteration has handed out
        self._reported: int | None = None  # samples of this rank a consumer reported as used

    def __len__(self) -> int:
        """Samples of this rank in a whole epoch (a resumed epoch yields fewer)."""
        return self.total_size // self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; moving to another epoch forgets any mid-epoch position. Setting the epoch
        the sampler already has keeps it: Lightning sets the epoch again after loading the state."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._pending, self._start, self._yielded, self._reported = None, 0, 0, None

    def order(self, epoch: int) -> torch.Tensor:
        """The global order of ``epoch``: int64 [total_size], the same on every rank."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            order = torch.randperm(self.dataset_len, generator=g)
        else:
            order = torch.arange(self.dataset_len)
        return _fit(order, self.total_size)

    def indices(self, epoch: int, start: int = 0) -> list[int]:
        """This rank's indices of ``order(epoch)[start:]`` (the remainder split evenly over ranks)."""
        rest = self.order(epoch)[start:]
        per_rank = len(rest) // self.num_replicas if self.drop_last else -(-len(rest) // self.num_replicas)
        return _fit(rest, per_rank * self.num_replicas)[self.rank::self.num_replicas].tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        start, self._pending = (self._pending or 0), None
        self._start, self._yielded, self._reported = start, 0, None
        for index in self.indices(epoch, start):
            self._yielded += 1
            yield epoch, index

    def report_consumed(self, samples: int) -> None:
        """Tell the sampler how many of this rank's samples of the current iteration were actually used.

        A DataLoader with workers draws indices ahead of the training loop (``prefetch_factor`` batches
        per worker), so what the sampler yielded overstates what was trained on; the loader reports the
        true count after every batch it hands out (:class:`ssl_zoo.data.datamodule.ResumableDataLoader`).
        """
        self._reported = samples

    def consumed(self) -> int:
        """Samples of the current epoch used on all ranks together (the reported count if any, else the
        yielded count), or the loaded position if no iteration started since ``load_state_dict``."""
        if self._pending is not None:
            return self._pending
        used = self._yielded if self._reported is None else self._reported
        return min(self._start + used * self.num_replicas, self.total_size)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed(), "seed": self.seed,
                "dataset_len": self.dataset_len, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue epoch ``state["epoch"]`` after its first ``state["consumed"]`` samples (all ranks)."""
        saved = (state.get("dataset_len"), state.get("seed"), state.get("shuffle"))
        if saved != (self.dataset_len, self.seed, self.shuffle):
            raise DataError(
                f"the checkpoint's data order is for (images, seed, shuffle)={saved}, this run has "
                f"{(self.dataset_len, self.seed, self.shuffle)}: resume with the same data and seed, or "
                "start a fresh run")
        self.epoch = int(state["epoch"])
        self._pending = min(int(state["consumed"]), self.total_size)
        self._start, self._yielded, self._reported = self._pending, 0, None


def _fit(order: torch.Tensor, size: int) -> torch.Tensor:
    """``order`` trimmed to ``size`` or padded to it by repeating itself from the start."""
    if size <= len(order):
        return order[:size]
    if len(order) == 0:
        return order
    reps = -(-size // len(order))
    return order.repeat(reps)[:size]
