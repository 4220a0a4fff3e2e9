"""A catalogue of bad inputs: each stops with one line naming the key and the fix, exit code 2, no traceback,
and leaves the existing run directories exactly as they were (snapshot of outputs/ before and after)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import tiny

from ssl_zoo.cli import lock_run_dir, main

QUIET = ("monitor.knn=false", "monitor.probe=false", "monitor.health=false", "monitor.plots=false")
SYNTHETIC_ONLY = ("data=", "data.num_samples=", "data.num_test_samples=")


class WouldRunCode:
    """Unpickling this (``weights_only=False``) would create ``marker``: the shape of a malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_crafted_checkpoint(path: Path, marker: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"cfg": {"method": {"name": "simclr"}}},
                "payload": WouldRunCode(marker)}, path)


@contextmanager
def working_dir(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder holding one real 2-step simclr run in outputs/, plus bad files to point the config at."""
    cwd = tmp_path_factory.mktemp("bad_inputs")
    with working_dir(cwd):
        assert main(["train", *tiny("simclr", "trainer.max_steps=2", *QUIET)]) == 0
    (ckpt,) = cwd.glob("outputs/*/*/checkpoints/last.ckpt")
    (cwd / "empty" / "sub").mkdir(parents=True)
    (cwd / "empty" / "readme.txt").write_text("no images")
    (cwd / "notes.ckpt").write_text("not a checkpoint")
    write_crafted_checkpoint(cwd / "crafted.ckpt", cwd / "code_ran")
    return cwd, ckpt


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root``; for files their size, modification time and bytes' hash."""
    out = {}
    for path in sorted(root.rglob("*")):
        stat = path.stat()
        # a folder's own mtime moves when a failed start's new run directory is made and removed beside it
        details = (stat.st_size, stat.st_mtime_ns, hash(path.read_bytes())) if path.is_file() else "folder"
        out[str(path.relative_to(root))] = details
    return out


def train(method: str, *overrides: str) -> list[str]:
    return ["train", *tiny(method, *QUIET), *overrides]


def folder(*overrides: str) -> list[str]:
    return ["train", *(o for o in tiny("simclr", *QUIET) if not o.startswith(SYNTHETIC_ONLY)), *overrides]


# (id, argv, the key the line must name, the fix it must give). {ckpt} and {cwd} are filled in per test.
CASES = [
    # unknown group choices
    ("unknown method", ["train", "method=nope"], "method='nope'", "choose one of"),
    ("unknown backbone", train("simclr", "backbone=resnet999"), "backbone='resnet999'", "choose one of"),
    ("unknown optimizer", train("simclr", "optimizer=adam2"), "optimizer='adam2'", "choose one of"),
    ("unknown logger", train("simclr", "logger=nope"), "logger='nope'", "choose one of"),
    ("unknown experiment", train("simclr", "experiment=nope"), "experiment='nope'", "choose one of"),
    ("unknown data", train("simclr", "data=imagenet22k"), "data='imagenet22k'", "choose one of"),
    # unknown keys
    ("unknown optimizer key", train("simclr", "optimizer.lrr=0.1"), "optimizer.lrr", "check its spelling"),
    ("unknown trainer key", train("simclr", "trainer.max_epoch=3"), "trainer.max_epoch", "check its spelling"),
    ("unknown top-level key", train("simclr", "+foo=1"), "foo", "check its spelling"),
    ("unknown method key", train("simclr", "+method.temprature=0.2"), "method.temprature", "check its spelling"),
    # wrong types
    ("text for a float", train("simclr", "method.temperature=abc"), "method.temperature", "type float"),
    ("text for an int", train("simclr", "data.batch_size=eight"), "data.batch_size", "type int"),
    ("float for an int", train("simclr", "trainer.max_steps=1.5"), "trainer.max_steps", "type int"),
    # impossible values
    ("negative lr", train("simclr", "optimizer.lr=-0.1"), "optimizer.lr", "a number > 0"),
    ("zero lr", train("simclr", "optimizer.lr=0"), "optimizer.lr", "a number > 0"),
    ("zero batch", train("simclr", "data.batch_size=0"), "data.batch_size", "an integer >= 1"),
    ("negative batch", train("simclr", "data.batch_size=-8"), "data.batch_size", "an integer >= 1"),
    ("zero epochs", train("simclr", "trainer.max_epochs=0", "trainer.max_steps=-1"), "trainer.max_epochs",
     "an integer >= 1"),
    ("negative epochs", train("simclr", "trainer.max_epochs=-3", "trainer.max_steps=-1"), "trainer.max_epochs",
     "an integer >= 1"),
    ("zero steps", train("simclr", "trainer.max_steps=0"), "trainer.max_steps", "-1 (no limit)"),
    ("negative weight decay", train("simclr", "optimizer.weight_decay=-1"), "optimizer.weight_decay", ">= 0"),
    ("zero accumulation", train("simclr", "trainer.accumulate_grad_batches=0"), "trainer.accumulate_grad_batches",
     ">= 1"),
    ("zero checkpoint interval", train("simclr", "trainer.checkpoint_every_n_steps=0"),
     "trainer.checkpoint_every_n_steps", "null or an integer >= 1"),
    ("zero kNN k", train("simclr", "monitor.knn_k=0"), "monitor.knn_k", "an integer >= 1"),
    ("negative seed", train("simclr", "seed=-1"), "seed", "an integer >= 0"),
    ("validation interval over one epoch", train("simclr", "trainer.val_check_interval=1.5"),
     "trainer.val_check_interval", "a fraction in (0, 1]"),
    ("unknown precision", train("simclr", "trainer.precision=fp8"), "trainer.precision", "one of:"),
    ("two channels", train("simclr", "data.channels=2"), "data.channels", "1 (grey) or 3 (RGB)"),
    ("mean per channel", train("simclr", "data.mean=[0.5,0.5]"), "data.mean", "one per channel"),
    ("tiny images", train("simclr", "data.image_size=4"), "data.image_size", ">= 8"),
    ("flip probability", train("simclr", "augmentation.crops.0.hflip_prob=1.5"), "hflip_prob", "[0, 1]"),
    ("wrong class count", folder("data=cifar10", "data.num_classes=100"), "data.num_classes",
     "10 for data.name=cifar10"),
    ("bad logger mode", train("simclr", "logger=wandb", "logger.mode=sometimes"), "logger.mode",
     "offline, online, disabled"),
    ("zero devices", train("simclr", "trainer.devices=0"), "trainer.devices", "an integer >= 1"),
    ("more GPUs than exist", train("simclr", "trainer.accelerator=gpu", "trainer.devices=64"), "trainer.devices",
     "the CUDA devices on this machine"),
    ("global BN on CPU", train("simclr", "trainer.accelerator=cpu", "trainer.sync_batchnorm=true"),
     "trainer.sync_batchnorm", "global BN needs CUDA devices"),
    # cross-group
    ("queue not a multiple of the batch", train("moco_v2", "method.queue_size=100"), "method.queue_size",
     "a multiple of the global batch 8"),
    *[(f"{m} on grey images", train(m, "data.channels=1", "data.mean=[0.4]", "data.std=[0.25]"), "data.channels",
       f"3 (RGB) for method={m}") for m in ("colorization", "split_brain", "cmc")],
    ("ViT patch does not divide the image", train("simclr", "backbone=vit_tiny", "backbone.patch_size=5"),
     "backbone.patch_size", "a divisor of data.image_size=16"),
    ("too few views for the method", train("simclr", "augmentation.crops.0.num=1"), "augmentation.crops",
     "at least 2 views for method=simclr"),
    ("local crop before the global one", train("simclr", "augmentation=multicrop", "augmentation.crops.0.size=0.5"),
     "augmentation.crops[1].size", "the global, largest crops come first"),
    ("multi-crop on a fixed-size ViT", train("dino", "backbone=vit_tiny", "backbone.patch_size=4",
                                              "augmentation.crops.2.size=8"),
     "backbone.kwargs.dynamic_img_size", "true with multi-crop views"),
    ("batch larger than the data set", train("simclr", "data.batch_size=128"), "data.batch_size",
     "lower data.batch_size"),
    # checkpoints
    ("checkpoint of another method", train("byol", "resume={ckpt}"), "method=simclr", "resume it with method=simclr"),
    ("missing checkpoint", train("simclr", "resume={cwd}/nowhere/last.ckpt"), "resume=", "no such checkpoint file"),
    ("not a checkpoint", train("simclr", "resume={cwd}/notes.ckpt"), "notes.ckpt", "not a readable checkpoint"),
    ("crafted pickle checkpoint", train("simclr", "resume={cwd}/crafted.ckpt"), "crafted.ckpt",
     "refused for safety"),
    # data roots
    ("data root without images", folder("data=imagefolder", "data.root={cwd}/empty", "data.labelled=false"),
     "data.root=", "a folder holding image files"),
    ("data root that does not exist", folder("data=imagefolder", "data.root={cwd}/nowhere", "data.labelled=false"),
     "data.root=", "this folder does not exist"),
    ("CIFAR root that does not exist", folder("data=cifar10", "data.root={cwd}/nowhere"), "data.root=",
     "this path does not exist"),
    ("labelled folder without val_root", folder("data=imagefolder", "data.root={cwd}/empty", "data.labelled=true",
                                                "data.num_classes=2"), "data.val_root", "data.labelled=false"),
    # the other commands
    ("eval without a protocol", ["eval"], "protocol", "choose one of"),
    ("eval without a checkpoint", ["eval", "knn"], "ckpt", "the path of a checkpoint"),
    ("eval of a missing checkpoint", ["eval", "knn", "ckpt={cwd}/nowhere.ckpt"], "nowhere.ckpt", "does not exist"),
    ("eval of a crafted pickle", ["eval", "knn", "ckpt={cwd}/crafted.ckpt"], "crafted.ckpt", "refused for safety"),
    ("export of a crafted pickle", ["export", "ckpt={cwd}/crafted.ckpt", "out={cwd}/x.pt"], "crafted.ckpt",
     "refused for safety"),
    ("unknown command", ["trian", "method=simclr"], "'trian'", "choose one of"),
]


def test_the_catalogue_holds_at_least_thirty_bad_inputs():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


def fill(argv: list[str], cwd: Path, ckpt: Path) -> list[str]:
    return [a.replace("{ckpt}", str(ckpt)).replace("{cwd}", str(cwd)) for a in argv]


@pytest.mark.parametrize("argv,key,fix", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_key_and_the_fix_and_changes_no_run_directory(argv, key, fix, workspace,
                                                                                        capsys):
    cwd, ckpt = workspace
    before = snapshot(cwd / "outputs")
    with working_dir(cwd):
        code = main(fill(argv, cwd, ckpt))
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert key in lines[0] and fix in lines[0], lines[0]
    assert "Traceback" not in out + err
    assert snapshot(cwd / "outputs") == before
    assert not (cwd / "code_ran").exists()  # the crafted checkpoint was never unpickled


def test_the_crafted_checkpoint_would_run_code_if_it_were_unpickled(tmp_path):
    """The control for the cases above: the payload is real, only weights_only loading stops it."""
    write_crafted_checkpoint(tmp_path / "c.ckpt", tmp_path / "ran")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "c.ckpt", weights_only=True)
    assert not (tmp_path / "ran").exists()
    torch.load(tmp_path / "c.ckpt", weights_only=False)
    assert (tmp_path / "ran").exists()


def test_resume_auto_of_a_run_in_use_by_another_process_is_refused(workspace, capsys):
    cwd, ckpt = workspace
    run_dir = ckpt.parent.parent
    before = snapshot(cwd / "outputs")
    held = lock_run_dir(run_dir)  # as a running ssl-zoo train of that run holds it
    try:
        with working_dir(cwd):
            code = main(train("simclr", "trainer.max_steps=2", "resume=auto"))
    finally:
        held.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is in use by another ssl-zoo train" in err[0], err
    assert run_dir.name in err[0] and "resume=null" in err[0]
    assert snapshot(cwd / "outputs") == before


@pytest.mark.slow
def test_the_command_as_a_process_exits_2_with_one_line_and_no_traceback(workspace):
    cwd, ckpt = workspace
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = train("byol", "resume={cwd}/crafted.ckpt")
    result = subprocess.run([sys.executable, "-m", "ssl_zoo.cli", *fill(argv, cwd, ckpt)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:"), result.stderr
    assert not (cwd / "code_ran").exists()
