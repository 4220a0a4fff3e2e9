"""The command line: one-line errors with exit code 2, `list`, and short runs of every method."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny

from ssl_zoo.cli import main
from ssl_zoo.methods import METHODS


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ssl_zoo.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_unknown_method_lists_the_valid_ones_and_exits_2(tmp_path):
    result = run_cli("train", "method=nope", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "method='nope'" in lines[0]
    for name in METHODS:
        assert name in lines[0]
    assert not (tmp_path / "outputs").exists()


BAD_VALUES = [
    (["optimizer.lr=-0.1"], "optimizer.lr"),
    (["data.batch_size=0"], "data.batch_size"),
    (["optimizer.lrr=0.1"], "optimizer.lrr"),
    (["method.temperature=abc"], "method.temperature"),
    (["trainer.max_epochs=0"], "trainer.max_epochs"),
    (["backbone=vit_tiny", "backbone.patch_size=5"], "backbone.patch_size"),
    (["augmentation.crops.0.hflip_prob=1.5"], "hflip_prob"),
    (["data=nope"], "data='nope'"),
    (["seed=-1"], "seed"),
    (["trainer.precision=fp8"], "trainer.precision"),
]


@pytest.mark.parametrize("overrides,key", BAD_VALUES, ids=[k for _, k in BAD_VALUES])
def test_bad_config_is_one_line_naming_the_key(overrides, key, in_tmp, capsys):
    assert main(["train", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and key in err[0], err
    assert not (in_tmp / "outputs").exists()


def test_list_shows_every_group_and_choice(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for group in ("method", "backbone", "augmentation", "optimizer", "scheduler", "data", "trainer", "logger"):
        assert f"{group}:" in out
    for name in METHODS:
        assert name in out


# Every method's end-to-end CLI run (a whole run directory) is checked by tests/test_kill_resume.py, whose
# uninterrupted reference run is one; here, the three shapes of method with the in-process entry point.
@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr", "moco_v2", "byol"])
def test_each_method_trains_five_steps_from_the_cli(method, in_tmp):
    assert main(["train", *tiny(method)]) == 0
    (run_dir,) = [p.parent for p in (in_tmp / "outputs").glob("*/*/summary.json")]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 5 and summary["method"] == method
    assert summary["knn_top1"] is not None and summary["knn_top1_random_init"] is not None
    assert (run_dir / "metrics.csv").exists() and (run_dir / "config.yaml").exists()
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss" in header and "lr-" in header


@pytest.mark.slow
def test_moco_v2_with_vit_tiny_runs(in_tmp):
    assert main(["train", *tiny("moco_v2", "backbone=vit_tiny", "backbone.patch_size=4")]) == 0


AUGMENTATIONS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "augmentation").glob("*.yaml"))


@pytest.mark.parametrize("choice", AUGMENTATIONS)
def test_every_documented_option_is_overridable_without_a_plus(choice):
    """Fields users set from the command line are in the group yamls, so `group.key=value` works as shown in
    the README (Hydra refuses a key that is not in the composed config unless it is written `+key`)."""
    from ssl_zoo.cli import compose
    from ssl_zoo.config import AugmentationConfig, TrainerConfig, typed_group

    cfg = compose([f"augmentation={choice}", "augmentation.backend=batched", "trainer.val_check_interval=0.5",
                   "trainer.limit_train_batches=10"])
    assert typed_group(cfg, "augmentation", AugmentationConfig).backend == "batched"
    trainer = typed_group(cfg, "trainer", TrainerConfig)
    trainer.validate()
    assert trainer.val_check_interval == 0.5 and trainer.limit_train_batches == 10
