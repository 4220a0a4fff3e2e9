"""What self-supervised learning adds to Lightning's DDP: cross-rank gathers and reductions with correct
gradients, shuffle BN (He et al. 2019) and split BN. Everything is the identity on a single process."""

from __future__ import annotations

from ssl_zoo.distributed.batchnorm import (
    SHUFFLE_BN_MODES,
    ShuffleBN,
    SplitBatchNorm2d,
    batch_shuffle,
    batch_unshuffle,
    convert_split_batchnorm,
)
from ssl_zoo.distributed.ops import (
    all_reduce_mean,
    all_reduce_sum,
    all_reduce_sum_with_grad,
    gather_no_grad,
    gather_sizes,
    gather_with_grad,
    is_distributed,
    rank,
    world_size,
)

__all__ = [
    "SHUFFLE_BN_MODES",
    "ShuffleBN",
    "SplitBatchNorm2d",
    "all_reduce_mean",
    "all_reduce_sum",
    "all_reduce_sum_with_grad",
    "batch_shuffle",
    "batch_unshuffle",
    "convert_split_batchnorm",
    "gather_no_grad",
    "gather_sizes",
    "gather_with_grad",
    "is_distributed",
    "rank",
    "world_size",
]
