"""Peak memory of one SimCLR training step against the batch size, with and without GradCache.

    python -m ssl_zoo.bench.memory                                  # B = 256, 1024, 4096; chunk 256; CPU
    python -m ssl_zoo.bench.memory --batches 256 1024 --chunk 128 --device cuda

Each (batch, GradCache or not) runs in a fresh Python process, so one peak never hides another: it builds
SimCLR with a ResNet-18 (CIFAR stem) at 32 px, runs one forward and backward on random views of the
batch and reports the peak resident set size (``VmHWM``) on a CPU, or the peak of
``torch.cuda.max_memory_allocated`` on a GPU, next to the memory held before the step (the model and
the inputs), as one Markdown table. GradCache (``method.grad_cache_chunk``, Gao et al. 2021) keeps one
chunk's activations at a time, so its step peak grows with the chunk, not with the batch (only the
inputs, the representations and the B x B similarities still grow with B).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _proc_kib(field: str, path: str = "/proc/self/status") -> int:
    """A ``<field>: <n> kB`` line of a /proc file (this process's status by default)."""
    with open(path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{path} has no {field}")


def measure_one(batch: int, chunk: int | None, device: str, image_size: int = 32) -> dict:
    """One step in this process; returns sizes in MiB. Meant for a fresh process (see :func:`main`)."""
    import torch

    from ssl_zoo.cli import compose
    from ssl_zoo.methods import METHODS

    torch.manual_seed(0)
    cfg = compose(["method=simclr", "backbone=resnet18", "data=synthetic", f"data.image_size={image_size}",
                   f"method.grad_cache_chunk={'null' if chunk is None else chunk}", "trainer.channels_last=false"])
    model = METHODS["simclr"](cfg).to(device).train()
    views = [torch.randn(batch, cfg.data.channels, image_size, image_size, device=device) for _ in range(2)]
    index = torch.arange(batch, device=device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = _proc_kib("VmRSS") / 1024
    start = time.perf_counter()
    out = model.step(views, index)
    out.loss.backward()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _proc_kib("VmHWM") / 1024
    return {"batch": batch, "chunk": chunk, "device": device, "before_mib": round(before, 1),
            "peak_mib": round(peak, 1), "step_mib": round(peak - before, 1),
            "seconds": round(time.perf_counter() - start, 2), "loss": float(out.loss)}


def run_fresh(batch: int, chunk: int | None, device: str, image_size: int, timeout: float) -> dict:
    """:func:`measure_one` in a new interpreter; ``{"error": ...}`` if it fails or runs out of time."""
    cmd = [sys.executable, "-m", "ssl_zoo.bench.memory", "--one", str(batch), str(chunk or 0), device,
           str(image_size)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    except subprocess.TimeoutExpired:
        return {"batch": batch, "chunk": chunk, "device": device, "error": f"over {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {"batch": batch, "chunk": chunk, "device": device, "error": tail[0][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def predicted_step_mib(rows: list[dict], batch: int, chunk: int | None) -> float | None:
    """The step memory of ``batch`` extrapolated linearly from the largest measured batch of the same kind
    (with or without GradCache), or None before any such measurement."""
    same = [r for r in rows if "error" not in r and r["chunk"] == chunk and r["batch"] < batch]
    if not same:
        return None
    ref = max(same, key=lambda r: r["batch"])
    return ref["step_mib"] * batch / ref["batch"]


def table(rows: list[dict]) -> str:
    lines = ["| batch | GradCache chunk | device | before step (MiB) | peak (MiB) | step (MiB) | seconds |",
             "| ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['batch']} | {r['chunk'] or '-'} | {r['device']} | {r['error']} | | | |")
        else:
            lines.append(f"| {r['batch']} | {r['chunk'] or '-'} | {r['device']} | {r['before_mib']} | "
                         f"{r['peak_mib']} | {r['step_mib']} | {r['seconds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssl_zoo.bench.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--chunk", type=int, default=256, help="GradCache chunk (images) of the cached runs")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<i>")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per measurement")
    parser.add_argument("--json", action="store_true", help="print one JSON object per row instead of a table")
    parser.add_argument("--one", nargs=4, metavar=("BATCH", "CHUNK", "DEVICE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        batch, chunk, device, size = args.one
        print(json.dumps(measure_one(int(batch), int(chunk) or None, device, int(size))))
        return 0
    rows = []
    for batch in args.batches:
        for chunk in (None, args.chunk):
            if chunk is not None and chunk >= batch:
                continue  # one chunk is the whole batch: the same computation as without GradCache
            need = predicted_step_mib(rows, batch, chunk)
            # MemAvailable: what a new process can take without swapping
            available = _proc_kib("MemAvailable", "/proc/meminfo") / 1024
            if not args.device.startswith("cuda") and need is not None and need > 0.8 * available:
                # A step that cannot fit would swap the machine or wake the OOM killer (which may pick
                # another process): report the linear extrapolation instead of running it.
                row = {"batch": batch, "chunk": chunk, "device": args.device,
                       "error": f"not run: ~{need / 1024:.0f} GiB predicted for the step "
                                f"(linear in B from the largest batch measured), {available / 1024:.0f} "
                                f"GiB available"}
            else:
                row = run_fresh(batch, chunk, args.device, args.image_size, args.timeout)
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(f"measured: {row}", file=sys.stderr, flush=True)
    if not args.json:
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
