"""Shared test set-up: offline, few threads, tiny runs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

# A run small enough for a CPU test: 16 px synthetic images, 8 per batch, a narrow head.
TINY = [
    "data=synthetic", "data.image_size=16", "data.batch_size=8", "data.val_batch_size=32", "data.num_samples=64",
    "data.num_test_samples=32", "data.num_workers=0", "trainer=cpu", "trainer.max_steps=5",
    "trainer.max_epochs=100", "logger=csv", "method.proj_hidden_dim=32", "monitor.knn_k=5",
]

HEADS = {
    "simclr": ["method.proj_output_dim=16"],
    "moco_v2": ["method.proj_output_dim=16", "method.queue_size=64"],
    "byol": ["method.proj_output_dim=16", "method.pred_hidden_dim=32"],
}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run inside a fresh directory, so run directories land in tmp_path/outputs."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
