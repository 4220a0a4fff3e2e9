"""The small-map convolutions (ssl_zoo/backbones/small_maps.py) against torch's own, for one ResNet-18
forward and backward at 32 px with the ImageNet stem, where layer3's maps are 2 x 2 and layer4's 1 x 1:
seven of the network's 3x3 convolutions run as one matrix product over the whole map.
``python -m ssl_zoo.bench.small_maps [batch] [rounds]``.

Both encoders hold the same weights (1-channel stem, channels_last); fp32, and bf16 autocast when the CPU
has native bf16 units; one warm-up step per variant, then the variants alternated, medians printed.
"""

from __future__ import annotations

import copy
import sys

import torch

from ssl_zoo.backbones.small_maps import use_matmul_on_small_maps
from ssl_zoo.bench.measure import grey_resnet18, time_alternated
from ssl_zoo.precision import cpu_has_native_bf16


def measure(batch: int = 256, rounds: int = 5) -> dict[str, float]:
    torch.manual_seed(0)
    plain, x = grey_resnet18(batch)
    models = {"torch": plain, "small maps": use_matmul_on_small_maps(copy.deepcopy(plain))}  # same weights
    precisions = [False, True] if cpu_has_native_bf16() else [False]

    def step(model: torch.nn.Module, bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(x).float().logsumexp(1).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    calls = {f"{name} {'bf16' if bf16 else 'fp32'}": (lambda m=model, b=bf16: step(m, b))
             for bf16 in precisions for name, model in models.items()}
    return {name: batch / s for name, s in time_alternated(calls, rounds).items()}


if __name__ == "__main__":
    rates = measure(*(int(a) for a in sys.argv[1:3]))
    for name, rate in rates.items():
        print(f"{name}: {rate:.1f} img/s")
    for precision in ("fp32", "bf16"):
        if f"torch {precision}" in rates:
            ratio = rates[f"small maps {precision}"] / rates[f"torch {precision}"]
            print(f"small maps / torch, {precision}: {ratio:.2f}")
