"""Sweeps: a 4-trial Optuna search (conf/hydra/sweeper/knn_optuna.yaml) of lr and temperature on a tiny
synthetic run, maximising kNN top-1, with a sqlite study (optuna 2.10 with SQLAlchemy 1.x); the runs of
one sweep share a logger group."""

from __future__ import annotations

import pytest
import yaml
from conftest import tiny

from ssl_zoo.cli import main

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs the `sweep` extra")


@pytest.mark.slow
def test_optuna_sweep_runs_four_trials_and_reports_the_best(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    overrides = tiny("simclr", "trainer.max_steps=2", "monitor.knn_baseline=false", "monitor.plots=false",
                     "monitor.probe=false")
    assert main(["train", "-m", "hydra/sweeper=knn_optuna", "hydra.sweeper.n_trials=4",
                 f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}", f"hydra.sweep.dir={sweep}",
                 *overrides]) == 0
    trials = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "summary.json").exists())
    assert len(trials) == 4
    configs = [yaml.safe_load((t / "config.yaml").read_text()) for t in trials]
    assert len({(c["optimizer"]["lr"], c["method"]["temperature"]) for c in configs}) == 4
    for c in configs:
        assert 0.03 <= c["optimizer"]["lr"] <= 3.0 and 0.05 <= c["method"]["temperature"] <= 0.5
    assert len({c["logger"]["group"] for c in configs}) == 1 and configs[0]["logger"]["group"]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["name"] == "optuna" and set(best["best_params"]) == {"optimizer.lr", "method.temperature"}
    assert (tmp_path / "optuna.db").is_file()
