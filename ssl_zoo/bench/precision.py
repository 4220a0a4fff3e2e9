"""fp32 against bf16 autocast for one ResNet-18 training step on the CPU: the measurement behind
``trainer.precision=auto`` (ssl_zoo/precision.py). ``python -m ssl_zoo.bench.precision [batch] [rounds]``.

A 1-channel ImageNet-stem ResNet-18 at 32 px in channels_last; forward, backward and an SGD step per
timed step; one warm-up step per precision, then the two precisions alternated, medians printed.
"""

from __future__ import annotations

import sys

import torch

from ssl_zoo.bench.measure import grey_resnet18, time_alternated


def measure(batch: int = 128, rounds: int = 3) -> dict[str, float]:
    torch.manual_seed(0)
    model, x = grey_resnet18(batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(x).float().logsumexp(1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    seconds = time_alternated({"fp32": lambda: step(False), "bf16": lambda: step(True)}, rounds)
    return {name: batch / s for name, s in seconds.items()}


if __name__ == "__main__":
    rates = measure(*(int(a) for a in sys.argv[1:3]))
    for name, rate in rates.items():
        print(f"{name}: {rate:.1f} img/s")
    print(f"bf16/fp32: {rates['bf16'] / rates['fp32']:.2f}")
