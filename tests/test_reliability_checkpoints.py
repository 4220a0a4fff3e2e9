"""Checkpoints survive kills and full disks: the previous checkpoint stays loadable, a failed write is one
line, and resume=auto continues. (Crafted pickles are refused: tests/test_bad_inputs.py.)"""

from __future__ import annotations

import errno
import io
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import tiny

from ssl_zoo import checkpoint_io
from ssl_zoo.checkpoint_io import atomic_torch_save, safe_torch_load
from ssl_zoo.cli import main
from ssl_zoo.errors import CheckpointError

QUIET = ("monitor.knn=false", "monitor.probe=false", "monitor.health=false", "monitor.plots=false")

KILLED_WRITER = textwrap.dedent("""
    import io, os, signal, sys
    import torch
    from ssl_zoo.checkpoint_io import atomic_torch_save

    path = sys.argv[1]
    atomic_torch_save({"step": 1, "w": torch.arange(8.0)}, path)
    real_save = torch.save

    def save_half_then_die(obj, f):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)  # killed in the middle of writing the new checkpoint

    torch.save = save_half_then_die
    atomic_torch_save({"step": 2, "w": torch.zeros(100_000)}, path)
""")


def test_a_writer_killed_in_the_middle_of_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "last.ckpt"
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], capture_output=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    (torn,) = tmp_path.glob(".last.ckpt.*.tmp")  # the half-written new checkpoint never took the name
    with pytest.raises(Exception):  # noqa: B017 - it is torn: any loader error
        torch.load(torn, weights_only=True)
    ckpt = safe_torch_load(path)
    assert ckpt["step"] == 1 and torch.equal(ckpt["w"], torch.arange(8.0))
    atomic_torch_save({"step": 3}, path)  # the next save clears the killed writer's leftover
    assert safe_torch_load(path)["step"] == 3 and not list(tmp_path.glob(".last.ckpt.*.tmp"))


def fail_with_full_disk(monkeypatch, when=lambda obj: True):
    """torch.save writes half of the file, then the disk is full (OSError ENOSPC), when ``when(obj)``."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if not when(obj):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", save)


def test_a_full_disk_is_one_line_that_keeps_the_previous_checkpoint_and_leaves_no_temporary_file(tmp_path,
                                                                                                  monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, path)
    fail_with_full_disk(monkeypatch)
    with pytest.raises(CheckpointError) as info:
        atomic_torch_save({"step": 2}, path)
    message = str(info.value)
    assert "\n" not in message and "the disk is full (ENOSPC)" in message
    assert "the previous checkpoint is kept" in message and "resume=auto" in message
    assert safe_torch_load(path)["step"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


@pytest.mark.slow
def test_a_run_whose_disk_fills_stops_in_one_line_and_resumes_from_the_last_whole_checkpoint(in_tmp, monkeypatch,
                                                                                              capsys):
    overrides = tiny("simclr", "trainer.max_steps=6", "trainer.checkpoint_every_n_steps=1", *QUIET)
    with monkeypatch.context() as patch:
        fail_with_full_disk(patch, when=lambda obj: isinstance(obj, dict) and obj.get("global_step", 0) >= 3)
        assert main(["train", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the disk is full" in err[0] and "the previous checkpoint is kept" in err[0], err
    (checkpoints,) = in_tmp.glob("outputs/*/*/checkpoints")
    assert [p.name for p in checkpoints.iterdir()] == ["last.ckpt"]  # no temporary file left behind
    assert safe_torch_load(checkpoints / "last.ckpt")["global_step"] == 2

    assert main(["train", *overrides, "resume=auto"]) == 0
    assert safe_torch_load(checkpoints / "last.ckpt")["global_step"] == 6
