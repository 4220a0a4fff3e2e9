"""SwAV's Sinkhorn-Knopp codes: the exp-domain loop of ``ssl_zoo.losses.sinkhorn`` against the same
iterations in the log domain (``log_domain=True``, a logsumexp per step), at the size a queue gives on
one device: the batch plus SwAV's small-batch queue of 3840 embeddings (B = 4096), 3000 prototypes,
ε = 0.05, 3 iterations, float32 cosine scores. ``python -m ssl_zoo.bench.sinkhorn [rows] [rounds]``.

One warm-up call per variant, then the variants alternated, medians printed.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from ssl_zoo.bench.measure import time_alternated
from ssl_zoo.losses import sinkhorn


def measure(rows: int = 4096, rounds: int = 7, prototypes: int = 3000) -> dict[str, float]:
    """Median seconds per call of each variant, and their largest difference in a code."""
    g = torch.Generator().manual_seed(0)
    scores = F.normalize(torch.randn(rows, 128, generator=g), dim=1) @ F.normalize(
        torch.randn(prototypes, 128, generator=g), dim=1).t()
    variants = {"exp domain": False, "log domain": True}
    codes = {name: sinkhorn(scores, 0.05, 3, log_domain=log) for name, log in variants.items()}  # warm-up too
    result = time_alternated({name: (lambda log=log: sinkhorn(scores, 0.05, 3, log_domain=log))
                              for name, log in variants.items()}, rounds, warmup=False)
    result["max difference"] = float((codes["exp domain"] - codes["log domain"]).abs().max())
    return result


if __name__ == "__main__":
    result = measure(*(int(a) for a in sys.argv[1:3]))
    for name in ("exp domain", "log domain"):
        print(f"{name}: {1000 * result[name]:.1f} ms per call")
    print(f"log / exp domain: {result['log domain'] / result['exp domain']:.2f}x; "
          f"largest difference in a code: {result['max difference']:.1e}")
