"""``ssl-zoo bench``: rows of (method, batch, image size, views, precision), each measured on both sides
alternately in one process, printed as Markdown tables."""

from __future__ import annotations

import gc
import platform
import sys
import time
from dataclasses import dataclass, field

import torch

from ssl_zoo.bench.config import BenchConfig
from ssl_zoo.bench.flops import matmul_peak_flops, mfu, row_dtype, step_flops
from ssl_zoo.bench.measure import SideResult, ratio, rss_now_bytes
from ssl_zoo.errors import check


@dataclass
class Row:
    method: str
    batch_size: int
    image_size: int
    precision: str                 # as asked (auto, 32-true, ...)
    resolved: str = ""             # what it resolved to on this device
    local_views: int | None = None  # DINO's local crops (None: the bench default, 6)
    views: int = 0
    backbone: str = ""
    results: dict[str, SideResult] = field(default_factory=dict)
    flops: int = 0                 # one training step's forward and backward (ssl_zoo.bench.flops)
    peak_flops: float = float("nan")  # the device's measured matmul FLOP/s at the row's precision


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check(name != "cuda" or torch.cuda.is_available(), "device", name, "cpu (no CUDA device is visible)")
    return torch.device(name)


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_row(row: Row, bench: BenchConfig, device: torch.device, overrides: list[str], log) -> Row:
    """Both sides of ``row``, alternated ``bench.rounds`` times (ours first in odd rounds, lightly first in
    even ones), so drifts of a shared machine's load fall on both."""
    from ssl_zoo.bench import lightly_loop, ours
    from ssl_zoo.config import typed_group
    from ssl_zoo.data.config import DataConfig
    from ssl_zoo.data.datasets import build_datasets
    from ssl_zoo.precision import resolve_precision

    row.resolved = resolve_precision(row.precision, "gpu" if device.type == "cuda" else "cpu")
    cfg = ours.compose_run(row.method, bench, row.batch_size, row.image_size, row.precision, device, overrides,
                           row.local_views)
    row.views = sum(int(g.num) for g in cfg.augmentation.crops)
    row.backbone = cfg.backbone.name + (f"/{cfg.backbone.patch_size}" if "vit" in cfg.backbone.name else "")
    row.flops, row.peak_flops = step_flops(cfg, device), device_peak(device, row_dtype(row.resolved))
    for side in bench.sides:
        row.results[side] = SideResult(row.batch_size, row.views)
    data = typed_group(cfg, "data", DataConfig)
    for r in range(bench.rounds):
        order = bench.sides if r % 2 == 0 else list(reversed(bench.sides))
        for side in order:
            started = time.perf_counter()
            if side == "ours":
                block = ours.run_block(cfg, device, bench.warmup)
            else:
                # The same images ours trains on (RGB), loaded for this block only: each side's peak holds
                # its own copy of the data set, never the other side's.
                base = build_datasets(data).train
                block = lightly_loop.run_block(cfg, base, device, row.resolved, bench.warmup, bench.steps,
                                               bench.num_workers)
                del base
            row.results[side].blocks.append(block)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            med = sorted(block.step_s)[len(block.step_s) // 2] if block.step_s else float("nan")
            log(f"  {row.method} b{row.batch_size} {row.image_size}px {row.resolved} round {r + 1}/{bench.rounds} "
                f"{side}: median step {med:.3f} s ({time.perf_counter() - started:.0f} s with set-up)")
    return row


_PEAKS: dict[tuple[str, torch.dtype], float] = {}


def device_peak(device: torch.device, dtype: torch.dtype) -> float:
    """The device's matmul peak at ``dtype``, measured once per run."""
    key = (str(device), dtype)
    if key not in _PEAKS:
        _PEAKS[key] = matmul_peak_flops(device, dtype)
    return _PEAKS[key]


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def _num(x: float, digits: int = 1) -> str:
    return "n/a" if x != x else f"{x:,.{digits}f}"


def speed_table(rows: list[Row], device: torch.device) -> str:
    mem = "peak GPU MiB" if device.type == "cuda" else "peak RSS MiB"
    head = (f"| method | backbone | batch | px | views | precision | side | steps | images/s | samples/s | "
            f"data wait | {mem} | GFLOP/step | MFU | ours/lightly |")
    lines = [head, "|" + "|".join([" --- "] * 15) + "|"]
    for row in rows:
        prec = row.precision if row.precision == row.resolved else f"{row.precision} ({row.resolved})"
        ours, theirs = row.results.get("ours"), row.results.get("lightly")
        for side, res in row.results.items():
            rel = ""
            if side == "ours" and ours and theirs:
                rel = f"**{_num(ratio(ours.images_per_s, theirs.images_per_s), 2)}x**"
            lines.append(f"| {row.method} | {row.backbone} | {row.batch_size} | {row.image_size} | {row.views} "
                         f"| {prec} | {side} | {res.num_steps} | {_num(res.images_per_s)} | {_num(res.samples_per_s)} "
                         f"| {_num(100 * res.data_wait, 0)}% | {_mib(res.peak_bytes)} | {_num(row.flops / 1e9)} "
                         f"| {_num(100 * mfu(row.flops, res.median_step_s, row.peak_flops))}% | {rel} |")
    return "\n".join(lines)


def main_rows(bench: BenchConfig) -> list[Row]:
    """Each method at the bench's batch and size, at each asked precision; ``auto`` and ``32-true`` are
    measured once where auto resolves to fp32 (a CPU without native bf16)."""
    rows = []
    for method in bench.methods:
        for precision in bench.precision:
            rows.append(Row(method, bench.batch_size, bench.image_size, precision))
    return rows


def sweep_rows(bench: BenchConfig, registered: set[str]) -> list[tuple[str, list[Row]]]:
    method, precision = bench.sweep_method, bench.precision[0]
    out = []
    if "batch" in bench.sweep:
        out.append(("images/s against batch size", [Row(method, b, bench.image_size, precision)
                                                    for b in bench.batch_sizes]))
    if "size" in bench.sweep:
        out.append(("images/s against image size", [Row(method, bench.batch_size, s, precision)
                                                    for s in bench.image_sizes]))
    if "views" in bench.sweep and "dino" in registered:
        out.append(("images/s against views: DINO, 2 global crops alone and with 6 local crops",
                    [Row("dino", bench.batch_size, bench.image_size, precision, local_views=k) for k in (0, 6)]))
    return out


def dedupe(rows: list[Row], device: torch.device) -> list[Row]:
    from ssl_zoo.precision import resolve_precision

    seen, kept = set(), []
    for row in rows:
        resolved = resolve_precision(row.precision, "gpu" if device.type == "cuda" else "cpu")
        key = (row.method, row.batch_size, row.image_size, row.local_views, resolved)
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept


def run_bench(bench: BenchConfig, overrides: list[str], log=None) -> str:
    """Measure every row; returns (and prints) the Markdown report."""
    from ssl_zoo.methods import METHODS

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    device = resolve_device(bench.device)
    if "lightly" in bench.sides:
        from ssl_zoo.bench.lightly_loop import import_lightly

        import_lightly()
    sweeps = sweep_rows(bench, set(METHODS))
    from ssl_zoo.bench.ours import check_method_overrides

    check_method_overrides(sorted({*bench.methods, *(r.method for _, rows in sweeps for r in rows)}), overrides)
    started = time.time()
    header = [f"machine: {machine_name(device)} ({device.type}, {torch.get_num_threads()} torch threads, "
              f"{bench.num_workers} loader workers), torch {torch.__version__}" + _lightly_version(bench),
              f"command: ssl-zoo bench {' '.join(sys.argv[2:]) if sys.argv[1:2] == ['bench'] else ''}".rstrip(),
              f"each row: {bench.rounds} rounds x ({bench.warmup} warm-up + {bench.steps} measured steps) per side, "
              "sides alternated; figures are medians of the measured steps"]
    if "dino" in METHODS and "dino" not in bench.methods:
        header.append("DINO (ViT-tiny) is left out of the default run on a CPU: methods=simclr,byol,moco_v2,dino "
                      "adds it")
    if device.type == "cpu":
        header.append(f"peak RSS includes what the process holds before a block: {_mib(rss_now_bytes())} MiB at start")
    header.append("MFU: a step's forward and backward FLOPs (counted; convolution taps on padding left out) per "
                  "median step time, over this device's measured matmul peak at the row's precision")
    sections = []
    rows = dedupe(main_rows(bench), device)
    for row in rows:
        measure_row(row, bench, device, overrides, log)
    sections.append(("Training step, end to end", rows))
    for title, sweep in sweeps:
        sweep = dedupe(sweep, device)
        for row in sweep:
            measure_row(row, bench, device, overrides, log)
        sections.append((title, sweep))
    if _PEAKS:
        peaks = (f"{str(dtype).replace('torch.', '')} {flops / 1e9:,.0f} GFLOP/s"
                 for (_, dtype), flops in _PEAKS.items())
        header.append("measured matmul peaks: " + ", ".join(peaks))
    parts = ["\n".join(header)]
    for title, section in sections:
        parts.append(f"### {title}\n\n{speed_table(section, device)}")
    if "knn" in bench.sweep:
        from ssl_zoo.bench.knn_cost import knn_table

        parts.append("### kNN monitor against bank size\n\n" + knn_table(bench, device, overrides, log))
    if "accuracy" in bench.sweep:
        from ssl_zoo.bench.accuracy import accuracy_table

        parts.append(f"### kNN after {bench.accuracy_epochs} epochs, the same recipe on both sides\n\n"
                     + accuracy_table(bench, device, overrides, log))
    few = bench.rounds * bench.steps < 10
    parts.append(f"total {time.time() - started:.0f} s" + (" -- fewer than 10 measured steps per side: a smoke "
                                                            "run, not a measurement" if few else ""))
    report = "\n\n".join(parts) + "\n"
    print(report, flush=True)
    if bench.out:
        with open(bench.out, "w") as f:
            f.write(report)
    return report


def _lightly_version(bench: BenchConfig) -> str:
    if "lightly" not in bench.sides:
        return ""
    import lightly

    return f", lightly {lightly.__version__}"
