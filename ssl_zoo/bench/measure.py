"""What one measured block of training steps yields, and the statistics of a benchmark row.

A step's time runs from the end of the previous step to the end of this one, so it holds everything the
training loop spends per batch: waiting for the loader, the host-to-device copy, on-device view
generation, forward, backward, optimizer, EMA and queue updates, and the loop's own logging. The data
wait is the part before the forward starts. Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU
and the process's peak resident set size (``VmHWM``, reset per block) on a CPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class StepClock:
    """Per-step times of one block: call :meth:`batch_ready` when a batch is ready for the forward and
    :meth:`step_done` when the step (optimizer and all) is over; the first ``warmup`` steps are dropped."""

    device: torch.device
    warmup: int = 1
    step_s: list[float] = field(default_factory=list)
    wait_s: list[float] = field(default_factory=list)
    _last_end: float | None = None
    _ready: float | None = None
    _seen: int = 0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def start(self) -> None:
        """The loop is about to ask for its first batch."""
        self._last_end = self._now()

    def batch_ready(self) -> None:
        self._ready = self._now()

    def step_done(self) -> None:
        end = self._now()
        if self._last_end is not None and self._ready is not None and self._seen >= self.warmup:
            self.step_s.append(end - self._last_end)
            self.wait_s.append(self._ready - self._last_end)
        self._seen += 1
        self._last_end, self._ready = end, None


class PeakMemory:
    """Peak memory of a block: GPU memory allocated by torch on CUDA, the process's peak RSS on a CPU.

    The RSS peak (``VmHWM``) is reset through ``/proc/self/clear_refs`` where the kernel allows it
    (Linux >= 4.0); elsewhere it is the peak since the process started, said so by :attr:`resettable`.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.resettable = True

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.resettable = False

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return rss_peak_bytes()


def rss_peak_bytes() -> int:
    """This process's peak resident set size in bytes (``VmHWM``; ``ru_maxrss`` where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def rss_now_bytes() -> int:
    """This process's current resident set size in bytes (0 where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class Block:
    """One measured block of one side: per-step times (warm-up dropped) and the block's peak memory."""

    step_s: list[float]
    wait_s: list[float]
    peak_bytes: int


@dataclass
class SideResult:
    """A side of a row over all its blocks: ``images_per_step`` counts every view of every sample."""

    batch_size: int
    views: int
    blocks: list[Block] = field(default_factory=list)

    @property
    def steps(self) -> list[float]:
        return [s for b in self.blocks for s in b.step_s]

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def median_step_s(self) -> float:
        return median(self.steps)

    @property
    def samples_per_s(self) -> float:
        return self.batch_size / self.median_step_s

    @property
    def images_per_s(self) -> float:
        return self.batch_size * self.views / self.median_step_s

    @property
    def data_wait(self) -> float:
        """Fraction of the measured time spent before the forward: the sum of waits over the sum of steps."""
        return wait_fraction([w for b in self.blocks for w in b.wait_s], self.steps)

    @property
    def peak_bytes(self) -> int:
        return max((b.peak_bytes for b in self.blocks), default=0)


def median(values: list[float]) -> float:
    """The median; NaN for no values (a row that measured nothing shows as such, never as 0)."""
    return statistics.median(values) if values else float("nan")


def grey_resnet18(batch: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The micro-benchmarks' encoder and input: torchvision's ResNet-18 with a 1-channel ImageNet stem in
    channels_last, and a random batch of 1 x 32 x 32 images (Fashion-MNIST's shape at the default size)."""
    import torchvision  # imported here: only the micro-benchmarks need it

    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    x = torch.randn(batch, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    return model.to(memory_format=torch.channels_last), x


def time_alternated(calls: dict[str, Callable[[], object]], rounds: int, warmup: bool = True) -> dict[str, float]:
    """Median seconds of each call: one warm-up call each (unless the caller warmed them up), then
    ``rounds`` rounds calling each in turn, so that a shared machine's load falls on all alike."""
    if warmup:
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: median(t) for name, t in times.items()}


def wait_fraction(waits: list[float], steps: list[float]) -> float:
    total = sum(steps)
    return sum(waits) / total if total > 0 else float("nan")


def ratio(ours: float, theirs: float) -> float:
    return ours / theirs if theirs and theirs == theirs and theirs > 0 else float("nan")
