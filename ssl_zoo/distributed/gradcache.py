"""GradCache: a loss over a large batch of in-batch negatives in the memory of a small one (Gao et al. 2021,
*Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup*).

A contrastive loss couples every sample with every other, so the batch cannot be split into independent
micro-batches (gradient accumulation would change the negatives). But the loss only sees the
representations: GradCache

    1. encodes the batch chunk by chunk without keeping activations (the representations alone are kept),
    2. computes the loss on all representations and its gradient with respect to them,
    3. re-runs each chunk's forward, with the chunk's RNG state replayed, and back-propagates that chunk's
       slice of the representation gradient into the parameters.

The parameter gradients are those of the full-batch computation, at the memory of one chunk's activations
plus the representations. Here step 1 and 3 are ``torch.utils.checkpoint`` (non-reentrant) around each
chunk: its forward drops the activations, and autograd reaches each chunk's recomputation only after
the loss has produced the gradient of that chunk's outputs, which is step 2. It composes with the rest
of the loop unchanged: one ``loss.backward()`` (so Lightning, AMP, gradient accumulation and DDP's
gradient hooks see a plain step), and with ``gather_with_grad`` in the loss, for negatives from every rank.

What changes: BatchNorm normalises each chunk with that chunk's statistics (as per-device BN does for a
batch split over devices), so with BN in training mode the result is that of chunked BN, not full-batch
BN; BN's running statistics are updated once per chunk, in step 1 (the recomputation restores them).
Dropout and other randomness draw per chunk, and step 3 replays exactly the draws of step 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


@contextmanager
def _buffers_kept(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Restore every buffer of ``modules`` on exit: a recomputed forward must not step BN's running stats."""
    saved = [(b, b.detach().clone()) for m in modules for b in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def grad_cache(encode: Callable[..., Tensor | tuple[Tensor, ...]], inputs: Sequence[Tensor],
               chunk_size: int | None, modules: Sequence[nn.Module] = ()) -> tuple[Tensor, ...]:
    """``encode(*inputs)`` computed ``chunk_size`` rows at a time, keeping one chunk's activations at once.

    ``inputs``: tensors [B, ...] with the same B, cut together along dim 0 (e.g. the two views of the same
    images, which then share a chunk and its BN statistics). ``encode`` maps one chunk of each input to one
    tensor or a tuple of tensors, each [b, ...]; the result is their concatenation over chunks, [B, ...],
    always as a tuple. Back-propagating any loss of these outputs recomputes each chunk's forward once,
    with its RNG state replayed, and gives the parameters the gradient of the unchunked computation (up to
    BN statistics, see the module docstring). ``modules``: those ``encode`` runs, whose buffers (BN running
    statistics) the recomputation must leave as the first pass set them. ``chunk_size=None`` (or >= B):
    one plain call of ``encode``, with its activations kept as usual.
    """
    if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) < 1):
        raise ValueError(f"grad_cache: chunk_size must be None or an integer >= 1, got {chunk_size!r}")
    if not inputs:
        raise ValueError("grad_cache needs at least one input tensor")
    batch = inputs[0].shape[0]
    if any(x.shape[0] != batch for x in inputs):
        raise ValueError(f"grad_cache: inputs must share their first dimension, got shapes "
                         f"{[tuple(x.shape) for x in inputs]}")
    if chunk_size is None or chunk_size >= batch or not torch.is_grad_enabled():
        out = encode(*inputs)
        return out if isinstance(out, tuple) else (out,)

    def contexts():
        return nullcontext(), _buffers_kept(modules)

    chunks = zip(*(x.split(int(chunk_size)) for x in inputs))
    outs = [checkpoint(encode, *chunk, use_reentrant=False, preserve_rng_state=True, context_fn=contexts)
            for chunk in chunks]
    outs = [o if isinstance(o, tuple) else (o,) for o in outs]
    return tuple(torch.cat(parts) for parts in zip(*outs))
