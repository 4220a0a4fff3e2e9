"""Model FLOP utilisation (MFU) of a bench row: the FLOPs one training step needs over the FLOPs the
device could have done in the time the step took.

The numerator is counted, not estimated: torch's ``FlopCounterMode`` over one forward and backward of the
row's method (``Method.step`` on random views of the row's shapes, the method built from the row's run
config), so heads, predictors, the momentum encoder's forward and the loss's matrix products all count,
and both sides of a row share it (they train the same networks on the same views; convolutions count
every tap, as the architecture defines them, however each side computes them). The optimizer step,
the augmentation and the data loading do work too but are left out, as MFU conventionally does. The
denominator is measured on this device: the best of a few timed square matrix products at the row's
precision (bf16 under a bf16 precision, fp16 under fp16, fp32 otherwise), so MFU is against what this
device's matmul reaches here, not a data-sheet figure.
"""

from __future__ import annotations

import contextlib
import time

import torch
from omegaconf import DictConfig

PRECISION_DTYPES = {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "16-mixed": torch.float16,
                    "16-true": torch.float16}


def row_dtype(resolved_precision: str) -> torch.dtype:
    """The matrix-multiply dtype a resolved Lightning precision runs its products in."""
    return PRECISION_DTYPES.get(resolved_precision, torch.float32)


@contextlib.contextmanager
def nominal_convolutions():
    """Convolutions counted as the architecture defines them (every tap of every output, padding included),
    not as the small-map products run them (``ssl_zoo/backbones/small_maps.py`` skips the taps that only
    read padding): the FLOPs both sides' ResNet-18 stand for, whichever way each computes them."""
    from ssl_zoo.backbones.small_maps import SmallMapConv2d

    saved = SmallMapConv2d.MAX_PIXELS
    SmallMapConv2d.MAX_PIXELS = 0
    try:
        yield
    finally:
        SmallMapConv2d.MAX_PIXELS = saved


def step_flops(cfg: DictConfig, device: torch.device) -> int:
    """FLOPs of one forward and backward of the method of ``cfg`` on a batch of random views of its shapes
    (``data.batch_size`` samples, every crop group at its size). Counted in fp32: the count does not
    depend on the precision the products run in."""
    from torch.utils.flop_counter import FlopCounterMode

    from ssl_zoo.methods import METHODS
    from ssl_zoo.transforms.config import CropGroupConfig

    batch, size, channels = int(cfg.data.batch_size), int(cfg.data.image_size), int(cfg.data.channels)
    torch.manual_seed(0)
    model = METHODS[cfg.method.name](cfg, num_train=max(batch, 65536)).to(device).train()
    views = [torch.randn(batch, channels, side, side, device=device)
             for group in cfg.augmentation.crops
             for side in [CropGroupConfig(num=int(group.num), size=float(group.size)).resolve_size(size)]
             for _ in range(int(group.num))]
    counter = FlopCounterMode(display=False)
    with counter, nominal_convolutions():
        model.step(views, torch.arange(batch, device=device)).loss.float().backward()
    del model
    return int(counter.get_total_flops())


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 5) -> float:
    """FLOP/s of the fastest of ``repeats`` timed ``n x n`` matrix products in ``dtype`` (after a warm-up):
    the device's reachable matmul peak at that precision. ``n``: 8192 on a GPU, 1024 on a CPU."""
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    calls = 10 if device.type == "cuda" else 1

    def timed() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / calls

    timed()
    best = min(timed() for _ in range(repeats))
    return 2.0 * n ** 3 / best


def mfu(flops_per_step: int, median_step_s: float, peak_flops: float) -> float:
    """Achieved FLOP/s over the peak; NaN where a figure is missing."""
    if not flops_per_step or not peak_flops or median_step_s != median_step_s or median_step_s <= 0:
        return float("nan")
    return flops_per_step / median_step_s / peak_flops
