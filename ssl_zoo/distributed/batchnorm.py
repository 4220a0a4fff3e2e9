"""Batch-norm tricks of momentum-contrast methods: shuffle BN across ranks and split BN on one device.

He et al. 2019 (MoCo, "Shuffling BN") found that BN lets the query and key encoders "cheat" the pretext
task: with per-device BN statistics, a query and its positive key share a device, so the statistics
leak which samples belong together. *Shuffle BN* feeds the key encoder a batch whose samples were
permuted across devices, then undoes the permutation on its output, so a query's BN statistics and
its positive key's come from different subsets. It only matters when BN statistics are per device; on
one device the MoCo authors' CIFAR-10 demo emulates devices by computing BN statistics per sub-batch
(*split BN*), which :class:`SplitBatchNorm2d` provides. The two compose: ``batch_shuffle`` permutes the
local batch on one process, so the key encoder's split-BN sub-batches hold different samples than the
query encoder's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_zoo.distributed.ops import _all_gather_cat, gather_no_grad, gather_sizes, is_distributed, rank


def _randperm(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    if generator is None:
        return torch.randperm(n, device=device)
    # randperm needs the generator's device; the result then moves to where the batch lives.
    return torch.randperm(n, generator=generator, device=generator.device).to(device)


@torch.no_grad()
def batch_shuffle(x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Shuffle BN's first half (He et al. 2019): this rank's share of a randomly permuted global batch.

    ``x``: [B_r, ...] on rank r (sizes may differ across ranks, trailing dims must agree). The batch is
    gathered from every rank into [N = Σ_r B_r, ...] and permuted by one permutation shared by all ranks;
    rank r receives the B_r rows of the permuted batch at the positions its own rows held, so every rank
    keeps its batch size. Returns ``(shuffled [B_r, ...], unshuffle_index [B_r])``; pass the index to
    :func:`batch_unshuffle` after running a per-sample function (the key encoder) on the shuffled rows.

    Every rank draws a permutation (from ``generator`` if given, else the default RNG of ``x``'s device)
    so their generators stay in step, but rank 0's is broadcast and used, so ranks never disagree even
    when their generators do. On one process the local batch is permuted. No autograd: the key encoder
    runs without gradient.
    """
    if not is_distributed():
        perm = _randperm(x.shape[0], generator, x.device)
        return x[perm], torch.argsort(perm)
    sizes = gather_sizes(x)
    x_all = _all_gather_cat(x.detach(), sizes)
    perm = _randperm(x_all.shape[0], generator, x.device)
    dist.broadcast(perm, src=0)
    start = sum(sizes[: rank()])
    own = slice(start, start + sizes[rank()])
    # Row p of the gathered shuffled outputs is sample perm[p]; so sample i sits at row argsort(perm)[i].
    return x_all[perm[own]], torch.argsort(perm)[own]


@torch.no_grad()
def batch_unshuffle(x: Tensor, unshuffle_index: Tensor) -> Tensor:
    """Shuffle BN's second half: gather the shuffled outputs, return this rank's samples in their order.

    ``x``: [B_r, ...], the per-sample outputs (e.g. key embeddings) of the rows :func:`batch_shuffle`
    returned on this rank; ``unshuffle_index``: [B_r], its second return value. Returns [B_r, ...]: row i
    is the output for row i of the batch this rank passed to ``batch_shuffle``. No autograd.
    """
    if unshuffle_index.dim() != 1 or unshuffle_index.shape[0] != x.shape[0]:
        raise ValueError(f"batch_unshuffle expects one index per row of x: got x of shape {tuple(x.shape)} "
                         f"and unshuffle_index of shape {tuple(unshuffle_index.shape)}")
    return gather_no_grad(x)[unshuffle_index.to(x.device)]


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with training statistics per sub-batch, emulating per-device BN on one device.

    The single-GPU stand-in for per-GPU BN statistics of the MoCo CIFAR-10 demo (He et al. 2019). In training,
    the input [B, C, H, W] is cut into ``num_splits`` contiguous sub-batches of B / num_splits samples,
    each normalised with its own mean and biased variance, exactly as ``num_splits`` devices each holding
    one sub-batch would; the affine weight and bias are shared. The running statistics are updated as the
    mean over sub-batches of what each device's BN would have recorded, so evaluation (which uses them, and
    is plain :class:`torch.nn.BatchNorm2d`, batch statistics over the whole batch included when
    ``track_running_stats=False``) matches a model trained with per-device BN. ``bn_kwargs`` are
    those of ``nn.BatchNorm2d`` (eps, momentum, affine, track_running_stats, device, dtype).
    """

    def __init__(self, num_features: int, num_splits: int, **bn_kwargs):
        if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1:
            raise ValueError(f"num_splits must be an integer >= 1, got {num_splits!r}")
        super().__init__(num_features, **bn_kwargs)
        self.num_splits = num_splits

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_splits={self.num_splits}"

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        self._check_input_dim(x)
        b, c, h, w = x.shape
        s = self.num_splits
        if b % s:
            raise ValueError(f"SplitBatchNorm2d: batch size {b} is not divisible by num_splits={s}")
        m = b // s
        # nn.BatchNorm2d's bookkeeping: momentum=None means a cumulative average over batches seen.
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        # Sub-batch k (samples k*m .. k*m+m-1) becomes channel block k of a [m, s*C, H, W] tensor, so one
        # batch_norm call computes s*C per-channel statistics: C channels for each of the s sub-batches.
        xs = x.reshape(s, m, c, h, w).transpose(0, 1).reshape(m, s * c, h, w)
        running_mean = self.running_mean.repeat(s) if self.running_mean is not None else None
        running_var = self.running_var.repeat(s) if self.running_var is not None else None
        weight = self.weight.repeat(s) if self.weight is not None else None
        bias = self.bias.repeat(s) if self.bias is not None else None
        out = F.batch_norm(xs, running_mean, running_var, weight, bias, True, factor, self.eps)
        if running_mean is not None:
            # Each of the s copies moved from the same running value towards its own sub-batch's
            # statistics; their mean is the running value a per-device BN averaged over devices holds.
            self.running_mean.copy_(running_mean.view(s, c).mean(0))
            self.running_var.copy_(running_var.view(s, c).mean(0))
        return out.reshape(m, s, c, h, w).transpose(0, 1).reshape(b, c, h, w)


def _to_split(bn: nn.BatchNorm2d, num_splits: int) -> SplitBatchNorm2d:
    split = SplitBatchNorm2d(bn.num_features, num_splits, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                             track_running_stats=bn.track_running_stats)
    # The very same Parameters and buffers: an optimizer or EMA already holding them keeps working, and
    # device and dtype follow without a copy.
    if bn.affine:
        split.weight, split.bias = bn.weight, bn.bias
    if bn.track_running_stats:
        split.running_mean, split.running_var = bn.running_mean, bn.running_var
        split.num_batches_tracked = bn.num_batches_tracked
    split.train(bn.training)
    return split


def convert_split_batchnorm(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` by a :class:`SplitBatchNorm2d` with ``num_splits``.

    Children are replaced in place and the (possibly new) root is returned, as
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` does: ``module`` itself is replaced only if it is a
    BatchNorm2d. The replacements share the originals' weight, bias and running statistics. Existing
    SplitBatchNorm2d layers get the new ``num_splits``; SyncBatchNorm, BatchNorm1d/3d and other norms are
    left alone. Other subclasses of BatchNorm2d (e.g. BN fused with an activation) raise ``TypeError``:
    replacing them would drop what they add, and skipping them would silently keep per-batch statistics.
    """
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1:
        raise ValueError(f"num_splits must be an integer >= 1, got {num_splits!r}")
    converted: dict[int, nn.Module] = {}  # a layer registered under two names stays one layer

    def convert(m: nn.Module, path: str) -> nn.Module:
        if id(m) in converted:
            return converted[id(m)]
        if isinstance(m, nn.BatchNorm2d):
            if type(m) not in (nn.BatchNorm2d, SplitBatchNorm2d):
                raise TypeError(f"cannot convert {path or 'the root module'} of type {type(m).__name__} to "
                                f"SplitBatchNorm2d: only plain nn.BatchNorm2d layers are supported")
            new = _to_split(m, num_splits)
        else:
            new = m
            for name, child in m.named_children():
                new_child = convert(child, f"{path}.{name}" if path else name)
                if new_child is not child:
                    setattr(m, name, new_child)
        converted[id(m)] = new
        return new

    return convert(module, "")
