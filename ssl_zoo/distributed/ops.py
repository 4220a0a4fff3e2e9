"""Cross-rank gathers and reductions that self-supervised losses need on top of data-parallel training.

Lightning's DDP averages parameter gradients over ranks and nothing else. Methods whose loss looks at
more than the local batch (SimCLR's negatives from every device, Chen et al. 2020; MoCo's queue of keys
from every device, He et al. 2019; Barlow Twins' cross-correlation over the global batch, Zbontar et
al. 2021) need the collectives below. Every function is the identity (or a plain copy) when no process
group is initialised or the world has one rank, so the same method code runs on a single CPU.

Gradient convention. DDP's objective is the mean over ranks of the per-rank losses, J = (1/W) Σ_r L_r,
and it averages gradients to match. A collective with a gradient is therefore correct when its
backward gives every rank the gradient of the *sum* Σ_r L_r with respect to its own inputs: DDP's
average then turns it into the gradient of J. Both differentiable collectives here all-reduce (sum)
the incoming gradient in backward; a backward that only kept the local gradient (as older SSL code
bases did) silently scales and biases the gradient of every loss computed over gathered tensors.

Every rank must call these functions (and run backward through the differentiable ones) in the same
order, as with any collective.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when a default process group is initialised and holds more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks in the default process group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default process group; 0 without one."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather_sizes(x: Tensor) -> list[int]:
    """Dim-0 sizes of ``x`` on every rank, in rank order (``[x.shape[0]]`` on one process).

    Also checks that the trailing dimensions agree across ranks, since a gather of mismatched shapes
    would otherwise fail deep inside the backend (or hang). Raises ``ValueError`` naming every shape.
    """
    if not is_distributed():
        return [x.shape[0]]
    if x.dim() == 0:
        raise ValueError("cannot gather a 0-dimensional tensor along dim 0; give it a batch dimension")
    # The shape travels as a tensor on x's device: NCCL only moves device tensors.
    local = torch.tensor(list(x.shape), dtype=torch.long, device=x.device)
    shapes = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(shapes, local)
    shapes_list = [tuple(s.tolist()) for s in shapes]
    if any(s[1:] != shapes_list[0][1:] for s in shapes_list):
        raise ValueError(f"tensors gathered across ranks must agree beyond dim 0, got shapes {shapes_list} "
                         f"(rank order)")
    return [s[0] for s in shapes_list]


def _all_gather_cat(x: Tensor, sizes: list[int]) -> Tensor:
    """Concatenation over ranks of ``x`` ([sizes[r], ...] on rank r) → [sum(sizes), ...]; no autograd."""
    x = x.contiguous()
    n_max = max(sizes)
    if x.shape[0] < n_max:
        # Collectives move equal-sized buffers, so shorter batches are padded and trimmed after.
        x = torch.cat([x, x.new_zeros((n_max - x.shape[0], *x.shape[1:]))])
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the gradient over ranks before slicing."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        sizes = gather_sizes(x)
        ctx.sizes, ctx.rank = sizes, rank()
        return _all_gather_cat(x.detach(), sizes)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # A copy: autograd may hand over a grad that is shared or an expanded view, never to be written.
        grad = grad.clone(memory_format=torch.contiguous_format)
        # Every rank holds a gradient for the whole gathered batch; this rank's samples influenced the
        # losses of all ranks, so its gradient is the sum over ranks of its slice.
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start: start + ctx.sizes[ctx.rank]]


def gather_with_grad(x: Tensor) -> Tensor:
    """Differentiable all-gather: [B_r, ...] on rank r → [Σ_r B_r, ...], rank 0's rows first.

    For losses over the global batch: SimCLR's NT-Xent with negatives from every device (Chen et al.
    2020), Barlow Twins / VICReg statistics (Zbontar et al. 2021; Bardes et al. 2022). Batch sizes may
    differ across ranks (they are gathered first); trailing dims must agree (``ValueError`` otherwise).
    Backward gives this rank's rows the sum over ranks of their gradients (see the module docstring),
    which with DDP's gradient averaging reproduces single-process training on the global batch.
    Identity (same tensor, same autograd graph) on one process.
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """All-gather without autograd: [B_r, ...] on rank r → [Σ_r B_r, ...], rank 0's rows first.

    For tensors that only feed buffers or metrics: MoCo's keys entering the queue (He et al. 2019),
    features for a kNN monitor. Batch sizes may differ across ranks. On one process returns
    ``x.detach()`` (same storage, no copy).
    """
    if not is_distributed():
        return x.detach()
    return _all_gather_cat(x.detach(), gather_sizes(x))


@torch.no_grad()
def all_reduce_sum(x: Tensor) -> Tensor:
    """Element-wise sum over ranks of ``x`` (any shape, same on every rank), as a new tensor.

    ``x`` itself is left untouched and the result carries no autograd history; on one process it is a
    detached copy of ``x``.
    """
    out = x.detach().clone(memory_format=torch.contiguous_format)
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


@torch.no_grad()
def all_reduce_mean(x: Tensor) -> Tensor:
    """Element-wise mean over ranks of ``x`` (any shape, same on every rank), as a new tensor.

    Integer and boolean inputs come back in the default floating dtype (the mean is rarely an integer),
    on one process as on many. ``x`` is left untouched; no autograd history.
    """
    if not (x.is_floating_point() or x.is_complex()):
        x = x.to(torch.get_default_dtype())
    # Sum then divide: gloo has no AVG reduction.
    return all_reduce_sum(x) / world_size()


class _AllReduceSumWithGrad(torch.autograd.Function):
    """All-reduce (sum) whose backward is again an all-reduce (sum) of the gradient."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out = x.detach().clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # y = Σ_s x_s is the same on every rank and feeds every rank's loss, so ∂(Σ_r L_r)/∂x_s is
        # Σ_r ∂L_r/∂y: the sum over ranks of the incoming gradients.
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum_with_grad(x: Tensor) -> Tensor:
    """Differentiable element-wise sum over ranks: ``x`` (same shape on every rank) → Σ_r x_r.

    For losses built from statistics summed over the global batch, e.g. Barlow Twins' cross-correlation
    C = Σ_r Z_A,rᵀ Z_B,r / N (Zbontar et al. 2021). Backward all-reduces (sums) the gradient, so every
    rank gets ∂(Σ_r L_r)/∂x_r and DDP's average yields the gradient of the mean loss. Kept separate from
    ``torch.distributed.nn.functional.all_reduce``: that module is deprecated, its gradient semantics
    were disputed (pytorch/pytorch#58005) and some releases failed on non-contiguous gradients
    (pytorch/pytorch#144060). Identity (same tensor) on one process.
    """
    if not is_distributed():
        return x
    return _AllReduceSumWithGrad.apply(x)
