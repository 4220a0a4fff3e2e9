"""Shared test set-up: offline, few threads, tiny runs."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Under pytest-xdist each worker gets one core's worth of threads (two workers with two threads each on
# a 2-core machine spend their time waiting on each other); subprocesses the tests start inherit it.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
os.environ.setdefault("MKL_NUM_THREADS", str(_THREADS))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(_THREADS, torch.get_num_threads()))

# A run small enough for a CPU test: 16 px synthetic images, 8 per batch.
TINY = [
    "data=synthetic", "data.image_size=16", "data.batch_size=8", "data.val_batch_size=32", "data.num_samples=64",
    "data.num_test_samples=32", "data.num_workers=0", "trainer=cpu", "trainer.max_steps=5",
    "trainer.max_epochs=100", "logger=csv", "monitor.knn_k=5", "monitor.plots=false",
]
TINY_DIR = Path(__file__).parent / "tiny"


def tiny_method(method: str) -> list[str]:
    """Overrides that shrink ``method``'s heads for tests: ``tests/tiny/<method>.txt``, one per line.
    Every registered method must have one (``test_every_method_has_tiny_settings``)."""
    path = TINY_DIR / f"{method}.txt"
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def tiny(method: str, *extra: str) -> list[str]:
    """The whole override list of a tiny run of ``method``."""
    return [f"method={method}", *TINY, *tiny_method(method), *extra]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run inside a fresh directory, so run directories land in tmp_path/outputs."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
