"""``trainer.precision=auto``: the fastest precision that is safe on the device at hand.

Measured (BENCHMARKS.md): bf16 autocast runs ResNet-18 ~10x *slower* than fp32 on an AVX2-only AMD
EPYC and 0.77x as fast on an AVX-512F Xeon without AVX-512 BF16, so bf16 is chosen on a CPU only when
it has native bf16 matrix units (AVX-512 BF16 or AMX). On CUDA: bf16 autocast where the GPU supports
it, else fp16 with a scaler.
"""

from __future__ import annotations

import torch


def cpu_has_native_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return any(flag in flags for flag in (" avx512_bf16", " amx_bf16"))


def resolve_precision(precision: str, accelerator: str) -> str:
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"
