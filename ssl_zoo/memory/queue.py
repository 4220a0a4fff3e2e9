"""A first-in-first-out queue of feature vectors (MoCo's dictionary of negative keys)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor


class FeatureQueue(nn.Module):
    """K feature vectors of dimension D, kept as registered buffers so a checkpoint holds them.

    MoCo (He et al. 2019) initialises the queue with random unit vectors and enqueues the (gathered)
    keys of each step after the loss is computed. ``enqueue`` takes keys from *all* ranks (the caller
    gathers them), so every rank holds the same queue. K must be a multiple of the global batch so
    a batch never wraps around (the MoCo reference asserts the same).
    """

    def __init__(self, size: int, dim: int, normalize_init: bool = True):
        super().__init__()
        queue = torch.randn(size, dim)
        if normalize_init:
            queue = nn.functional.normalize(queue, dim=1)
        self.register_buffer("queue", queue)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.queue.shape[0]

    def forward(self) -> Tensor:
        """The stored keys [K, D] (a view, detached)."""
        return self.queue.detach()

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Replace the oldest ``len(keys)`` entries with ``keys`` [N, D]."""
        n = keys.shape[0]
        if self.size % n != 0:
            raise ValueError(f"queue size {self.size} is not a multiple of the global batch {n}: "
                             "set method.queue_size to a multiple of the batch size times devices")
        ptr = int(self.ptr)
        self.queue[ptr:ptr + n] = keys.detach().to(self.queue.dtype)
        self.ptr.fill_((ptr + n) % self.size)
        self.filled.fill_(min(int(self.filled) + n, self.size))
