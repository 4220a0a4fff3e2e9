"""Whole runs: secrets never reach a run directory, and two runs started at once into the same outputs/ get
their own directories and keep their own files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import tiny
from omegaconf import OmegaConf

from ssl_zoo.cli import main

QUIET = ("monitor.knn=false", "monitor.probe=false", "monitor.health=false", "monitor.plots=false")
SECRET = "secret-123"


@pytest.mark.slow
def test_the_wandb_api_key_never_appears_in_the_run_directory(in_tmp, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["train", *tiny("simclr", "trainer.max_steps=2", "logger=wandb", "logger.mode=offline",
                                "logger.tensorboard=false", *QUIET)]) == 0
    (run_dir,) = [p.parent for p in in_tmp.glob("outputs/*/*/summary.json")]
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in files)  # the wandb logger did write its offline run here
    leaks = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaks, f"the API key is written in {leaks}"


@pytest.mark.slow
def test_two_runs_started_at_once_get_their_own_directories_and_keep_their_own_files(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    procs = {seed: subprocess.Popen([sys.executable, "-m", "ssl_zoo.cli", "train",
                                     *tiny("simclr", "trainer.max_steps=3", f"seed={seed}", *QUIET)],
                                    cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in (1, 2)}
    for proc in procs.values():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    run_dirs = sorted(p.parent for p in tmp_path.glob("outputs/*/*/run.json"))
    assert len(run_dirs) == 2
    seeds = set()
    for run_dir in run_dirs:  # every file in a directory belongs to the run that directory names
        seed = OmegaConf.load(run_dir / "config.yaml").seed
        seeds.add(seed)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["run_dir"].endswith(str(run_dir.relative_to(tmp_path))) and summary["steps"] == 3
        ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert ckpt["hyper_parameters"]["cfg"]["seed"] == seed and ckpt["global_step"] == 3
        assert OmegaConf.load(run_dir / ".hydra" / "overrides.yaml").count(f"seed={seed}") == 1
    assert seeds == {1, 2}
