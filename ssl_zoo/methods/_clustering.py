"""What the clustering methods share: features of the whole training set, and k-means results that are
the same on every rank.

DeepCluster and ClusterFit cluster features of every training image computed with the deterministic
evaluation view (the data module's ``eval_transform``), in data-set order, so that row i is image i
and the pseudo-label of a training batch is ``labels[index]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.data import DataLoader

from ssl_zoo.data.datamodule import EvalDataset, shard
from ssl_zoo.distributed import all_reduce_sum, gather_no_grad, rank, world_size


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode (BN uses, and does not update, its running statistics) for the block;
    every sub-module gets its own training flag back afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


@torch.no_grad()
def training_set_features(encode: Callable[[Tensor], Tensor], datamodule, device: torch.device) -> Tensor:
    """``encode(images)`` of every training image, [N, D] float32 in data-set order, on every rank.

    Each rank encodes an equal shard (``shard`` pads with repeats) and the shards are all-gathered;
    ``encode`` runs as given (the caller chooses eval mode). Batches of ``data.val_batch_size``.
    """
    n = datamodule.train_size
    indices = shard(list(range(n)), rank(), world_size())
    dataset = EvalDataset(datamodule.splits.train, datamodule.eval_transform, indices, datamodule.seed)
    loader = DataLoader(dataset, batch_size=datamodule.cfg.val_batch_size, shuffle=False,
                        num_workers=datamodule.cfg.num_workers)
    features = torch.cat([encode(images.to(device)).float() for images, _ in loader])
    features = gather_no_grad(features)
    rows = gather_no_grad(torch.tensor(indices, dtype=torch.long, device=device))
    out = features.new_zeros(n, features.shape[1])
    out[rows] = features  # padded repeats write the same row twice with the same value
    return out


@torch.no_grad()
def fill_from_training_set(method, encode: Callable[[Tensor], Tensor], bank) -> None:
    """A memory bank's rows from ``encode`` of every training image's evaluation view, in eval mode, once per
    run: a bank already filled (a resumed run: the flag is in the checkpoint) is left as it is."""
    if bool(bank.filled):
        return
    with eval_mode(method):
        bank.fill(training_set_features(lambda x: encode(method._format(x)), method.trainer.datamodule,
                                        method.device))


def from_rank0(x: Tensor) -> Tensor:
    """Rank 0's ``x`` on every rank (the shape must agree): one k-means result for all ranks even when
    the backend's threading makes reruns differ in the last bit."""
    if world_size() == 1:
        return x
    return all_reduce_sum(x if rank() == 0 else torch.zeros_like(x))


def reset_parameters(module: nn.Module, generator: torch.Generator, std: float = 0.01) -> None:
    """DeepCluster's fresh top layer: weights ~ N(0, std²), biases 0 (Caron et al. 2018's code), drawn
    from ``generator`` so re-initialising leaves the global random stream untouched."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) * std)


def forget_optimizer_state(optimizer: torch.optim.Optimizer, module: nn.Module) -> None:
    """Drop the optimizer's per-parameter state (momentum buffers) of ``module``: a re-initialised layer
    starts as if new, as DeepCluster builds a new optimizer for its new top layer."""
    for p in module.parameters():
        optimizer.state.pop(p, None)
