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


SHUFFLE_BN_MODES = ("auto", "ddp", "split", "off")


class ShuffleBN:
    """How a momentum key encoder keeps BN from leaking which query goes with which key (He et al. 2019).

    ``mode``:

    - ``ddp``: the key batch is shuffled across ranks (:func:`batch_shuffle`), encoded, and unshuffled
      (:func:`batch_unshuffle`): a key's BN statistics come from other ranks' samples than its query's.
      Needs more than one rank: on one, a permuted batch has the same statistics.
    - ``split``: the single-device stand-in of the MoCo CIFAR-10 demo. Every ``BatchNorm2d`` of the
      encoders becomes a :class:`SplitBatchNorm2d` with ``num_splits`` sub-batches (emulated devices),
      and the key batch is permuted before the key encoder, so its sub-batches hold other samples than
      the query encoder's. Under DDP the permutation crosses ranks as well.
    - ``auto``: ``ddp`` on more than one rank, ``split`` on one.
    - ``off``: the key encoder sees the batch as it is.

    A method calls :meth:`convert` on its query encoder *before* the momentum copy is made (so both
    encoders get split BN), :meth:`setup` once the world size is known, and calls the instance with the
    key encoder and the key views. Split layers hold no extra state, so checkpoints do not depend on the
    mode: a run may resume on another number of devices.
    """

    def __init__(self, mode: str = "auto", num_splits: int = 1, prefix: str = "method"):
        from ssl_zoo.errors import check

        check(mode in SHUFFLE_BN_MODES, f"{prefix}.shuffle_bn", mode, "one of: " + ", ".join(SHUFFLE_BN_MODES))
        check(isinstance(num_splits, int) and num_splits >= 1, f"{prefix}.bn_splits", num_splits, "an integer >= 1")
        self.mode, self.num_splits, self.prefix = mode, num_splits, prefix
        self.active: str | None = None  # resolved by setup(), or from the current world size at first use

    def resolve(self, world: int) -> str:
        """The mode in force with ``world`` ranks."""
        if self.mode == "auto":
            return "ddp" if world > 1 else "split"
        return self.mode

    def convert(self, module: nn.Module) -> nn.Module:
        """Give ``module``'s BatchNorm2d layers per-sub-batch statistics when split BN may be used."""
        if self.mode in ("auto", "split") and self.num_splits > 1:
            return convert_split_batchnorm(module, self.num_splits)
        return module

    def setup(self, model: nn.Module, world: int, batch_size: int) -> str:
        """Fix the mode for a run on ``world`` ranks with ``batch_size`` samples per rank; returns it.

        Where split BN is not in force (``auto`` under DDP), the split layers of ``model`` fall back to
        plain BN (one split), since real devices already give per-device statistics.
        """
        from ssl_zoo.errors import ConfigError

        active = self.resolve(world)
        if active == "ddp" and world < 2:
            raise ConfigError(f"{self.prefix}.shuffle_bn", self.mode, "auto, split or off on a single device",
                              "shuffling one device's batch leaves its BN statistics unchanged")
        if active == "split" and batch_size % self.num_splits:
            raise ConfigError(f"{self.prefix}.bn_splits", self.num_splits,
                              f"a divisor of data.batch_size={batch_size}")
        if active != "split":
            for m in model.modules():
                if isinstance(m, SplitBatchNorm2d):
                    m.num_splits = 1
        self.active = active
        return active

    @torch.no_grad()
    def __call__(self, encoder: nn.Module, x: Tensor) -> Tensor:
        """``encoder(x)`` [B_r, ...] with the key batch shuffled (and unshuffled) as the mode says; row i of
        the result belongs to row i of ``x``. No autograd: keys carry no gradient."""
        if self.active is None:
            from ssl_zoo.distributed.ops import world_size

            self.active = self.resolve(world_size())
        if self.active == "off":
            return encoder(x)
        shuffled, unshuffle_index = batch_shuffle(x)
        return batch_unshuffle(encoder(shuffled), unshuffle_index)
