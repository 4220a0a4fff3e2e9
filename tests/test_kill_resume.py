"""``kill -9`` at a random step, then ``resume=auto``: the run ends bit-identical to an uninterrupted one.

Every registered method, from the command line. The killed run is a separate process that checkpoints every
step (atomically, so the checkpoint read here is always whole); it is SIGKILLed once its checkpoint has
reached a step drawn with a seeded RNG (mid-epoch or at the epoch boundary; the kill may land while a
later checkpoint is being written). Its re-run with ``resume=auto`` finds the run directory by config
hash and continues it. Compared, with ``torch.equal``: weights and buffers (EMA targets, queues, banks,
centres), optimizer and scheduler state, every callback's state (online probe, kNN monitor, RNG
states, skipped-step count) and the loop position. The resumed and the uninterrupted runs go through the
same entry point inside the test process, with the killed process's one thread: only the run that is
killed pays for a new interpreter.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny

from ssl_zoo.cli import main
from ssl_zoo.methods import METHODS

# 48 samples / batch 8 = 6 steps an epoch; 10 steps cross the epoch boundary (and its kNN validation).
STEPS = 10
EXTRA = (f"trainer.max_steps={STEPS}", "trainer.checkpoint_every_n_steps=1", "data.num_samples=48",
         "monitor.knn_baseline=false")


def start(cwd: Path, *overrides: str) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    # One thread each: the same reduction order in every process, and two runs side by side on two cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "ssl_zoo.cli", "train", *overrides], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def checkpoint_step(path: Path) -> int:
    """``global_step`` of a checkpoint file; -1 while there is none. mmap reads only what is touched."""
    if not path.exists():
        return -1
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def last_checkpoint(cwd: Path) -> dict:
    (path,) = cwd.glob("outputs/*/*/checkpoints/last.ckpt")
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_identical(a, b, where: str) -> None:
    """Tensors equal bit for bit (dtype and shape included), containers recursively, the rest by ==."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs (max |diff| {(a.double() - b.double()).abs().max()})"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(map(str, a.keys() ^ b.keys()))}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_complete_run(cwd: Path, method: str) -> None:
    """The uninterrupted run is also every method's end-to-end CLI check: its run directory is whole."""
    (run_dir,) = [p.parent for p in cwd.glob("outputs/*/*/summary.json")]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["method"] == method and summary["knn_top1"] is not None
    assert (run_dir / "config.yaml").exists() and (run_dir / "checkpoints" / "last.ckpt").exists()
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss" in header and "lr-" in header


def run_here(cwd: Path, *args: str) -> None:
    """A run in this process, with the one thread of the killed subprocess (the same reduction order, so
    bit-identical results) and none of a new interpreter's start-up cost."""
    cwd.mkdir(parents=True, exist_ok=True)
    threads, here = torch.get_num_threads(), os.getcwd()
    torch.set_num_threads(1)
    try:
        os.chdir(cwd)
        assert main(["train", *args]) == 0
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_sigkill_at_a_random_step_then_resume_auto_is_bit_identical(method, tmp_path, capsys):
    overrides = tiny(method, *EXTRA)
    kill_at = random.Random(f"kill-{method}").randint(2, 6)  # seeded: a failure replays at the same step
    killed = start(tmp_path / "killed", *overrides)
    deadline = time.time() + 300
    step = -1
    while step < kill_at:
        assert killed.poll() is None, f"run ended before the kill at step {kill_at}: {killed.stderr.read()[-2000:]}"
        assert time.time() < deadline, "no checkpoint appeared"
        ckpts = list((tmp_path / "killed").glob("outputs/*/*/checkpoints/last.ckpt"))
        step = checkpoint_step(ckpts[0]) if ckpts else -1
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    killed_at = checkpoint_step(next((tmp_path / "killed").glob("outputs/*/*/checkpoints/last.ckpt")))
    assert kill_at <= killed_at < STEPS

    capsys.readouterr()
    run_here(tmp_path / "killed", *overrides, "resume=auto")
    assert "resume=auto: continuing" in capsys.readouterr().out
    run_here(tmp_path / "straight", *overrides)
    assert_complete_run(tmp_path / "straight", method)
    a, b = last_checkpoint(tmp_path / "straight"), last_checkpoint(tmp_path / "killed")
    assert a["global_step"] == b["global_step"] == STEPS and a["epoch"] == b["epoch"]
    for key in ("state_dict", "optimizer_states", "lr_schedulers"):
        assert_identical(a[key], b[key], key)
    # ModelCheckpoint's state holds its own directory, different by construction; every other callback
    # (probe, kNN monitor, RNG states, non-finite guard) must match.
    callbacks = {k: v for k, v in a["callbacks"].items() if not k.startswith(("ModelCheckpoint", "StepCheckpoint"))}
    assert_identical(callbacks, {k: b["callbacks"][k] for k in callbacks}, "callbacks")
    assert_identical(a["loops"]["fit_loop"]["state_dict"], b["loops"]["fit_loop"]["state_dict"], "sampler")
