"""MoCo's loss against its queue: ``info_nce`` (the positive kept apart from the [N, K] products, which are
turned into exponentials in place) against the plain form that concatenates the positive to the products
and calls ``F.cross_entropy``, as MoCo's reference code and lightly's memory-bank loss write it.
``python -m ssl_zoo.bench.queue_loss [batch] [queue] [rounds]``.

MoCo's sizes by default: N = 256 queries and keys, K = 65,536 queued keys, D = 128. Forward and backward
per call, in fp32 and in bf16 autocast; one warm-up call per variant, then the variants alternated,
medians printed with the largest relative difference of the query gradient from float64.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from ssl_zoo.bench.measure import time_alternated
from ssl_zoo.losses import info_nce


def plain_info_nce(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """[q·k₊, q·queueᵀ] / T as one [N, 1 + K] tensor and its cross-entropy with the positive at index 0."""
    q, k = F.normalize(query, dim=1), F.normalize(key, dim=1)
    negatives = F.normalize(queue.to(q.dtype), dim=1)
    logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ negatives.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def measure(batch: int = 256, queue_size: int = 65536, rounds: int = 5) -> dict[str, float]:
    """Median seconds per forward and backward of each variant and precision, and each one's largest
    relative error of the query gradient against float64."""
    g = torch.Generator().manual_seed(0)
    query, key = torch.randn(batch, 128, generator=g), torch.randn(batch, 128, generator=g)
    queue = F.normalize(torch.randn(queue_size, 128, generator=g), dim=1)
    variants = {"plain": plain_info_nce, "info_nce": info_nce}

    def call(loss_fn, bf16: bool, dtype=torch.float32) -> torch.Tensor:
        q = query.to(dtype).clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(q, key.to(dtype), queue.to(dtype), 0.07)
        loss.backward()
        return q.grad

    reference = call(plain_info_nce, False, torch.float64)
    result: dict[str, float] = {}
    for precision, bf16 in (("fp32", False), ("bf16", True)):
        for name, fn in variants.items():
            grad = call(fn, bf16).double()
            result[f"{name} {precision} error"] = float((grad - reference).abs().max() / reference.abs().max())
        seconds = time_alternated({name: (lambda fn=fn, bf16=bf16: call(fn, bf16)) for name, fn in variants.items()},
                                  rounds, warmup=False)
        result.update({f"{name} {precision}": s for name, s in seconds.items()})
    return result


if __name__ == "__main__":
    result = measure(*(int(a) for a in sys.argv[1:4]))
    for precision in ("fp32", "bf16"):
        for name in ("plain", "info_nce"):
            print(f"{name} {precision}: {1000 * result[f'{name} {precision}']:.1f} ms per forward and backward, "
                  f"query-gradient error {result[f'{name} {precision} error']:.1e}")
        print(f"plain / info_nce {precision}: {result[f'plain {precision}'] / result[f'info_nce {precision}']:.2f}x")
