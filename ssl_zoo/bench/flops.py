"""Model FLOP utilisation (MFU) of a bench row: the FLOPs one training step needs over the FLOPs the
device could have done in the time the step took.

The numerator is counted, not estimated: torch's ``FlopCounterMode`` over one forward and backward of the
row's method (``Method.step`` on random views of the row's shapes, the method built from the row's run
config), so heads, predictors, the momentum encoder's forward and the loss's matrix products all count,
and both sides of a row share it (they train the same networks on the same views). A convolution counts
the taps that read the input, not those on its zero padding, which direct convolutions skip: on the
1 x 1 and 2 x 2 maps of a ResNet at 32 px most taps are padding, and counting them would put MFU above
100% (see :func:`valid_taps`). The optimizer step,
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
def plain_convolutions():
    """Every convolution through torch's own kernel, so that ``FlopCounterMode`` sees it as one (the small-map
    products of ``ssl_zoo/backbones/small_maps.py`` would otherwise count as matrix products)."""
    from ssl_zoo.backbones.small_maps import SmallMapConv2d

    saved = SmallMapConv2d.MAX_PIXELS
    SmallMapConv2d.MAX_PIXELS = 0
    try:
        yield
    finally:
        SmallMapConv2d.MAX_PIXELS = saved


def valid_taps(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> tuple[int, int]:
    """(taps that read the input, all taps) along one axis of a convolution of a ``size`` px map: a tap that
    falls on the zero padding multiplies nothing, and direct convolutions (oneDNN's, the small-map products)
    skip it. At 32 px a ResNet's last stages run on 2 x 2 and 1 x 1 maps, where most taps are padding (a
    3 x 3 convolution of a 1 x 1 map reads 1 of its 9)."""
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    valid = sum(1 for o in range(out) for j in range(kernel) if 0 <= o * stride - padding + j * dilation < size)
    return valid, out * kernel


def step_flops(cfg: DictConfig, device: torch.device) -> int:
    """FLOPs of one forward and backward of the method of ``cfg`` on a batch of random views of its shapes
    (``data.batch_size`` samples, every crop group at its size), the taps that read padding left out of
    each convolution's count (:func:`valid_taps`). Counted in fp32: the count does not depend on the
    precision the products run in."""
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
    padding_taps = [0]  # FLOPs the counter gives convolutions' padding taps, forward and backward

    def record(module, args) -> None:
        x = args[0]
        (vh, nh), (vw, nw) = (valid_taps(x.shape[-2 + i], module.kernel_size[i], module.stride[i],
                                         module.padding[i], module.dilation[i]) for i in range(2))
        per_tap = 2 * x.shape[0] * module.out_channels * module.in_channels // module.groups
        grad = torch.is_grad_enabled()
        passes = 1 + int(grad and x.requires_grad) + int(grad and module.weight.requires_grad)  # as the counter
        padding_taps[0] += per_tap * (nh * nw - vh * vw) * passes

    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and not isinstance(m.padding, str)]
    handles = [m.register_forward_pre_hook(record) for m in convs]
    counter = FlopCounterMode(display=False)
    try:
        with counter, plain_convolutions():
            model.step(views, torch.arange(batch, device=device)).loss.float().backward()
    finally:
        for h in handles:
            h.remove()
    del model
    return int(counter.get_total_flops() - padding_taps[0])


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
