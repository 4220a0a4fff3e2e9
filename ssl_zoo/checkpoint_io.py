"""Checkpoint files that are always whole, and only ever loaded as data.

Saving: the checkpoint is written to a temporary file next to the target, flushed and ``fsync``-ed,
then ``os.replace``-d over it (an atomic rename on POSIX and Windows) and the directory entry is synced.
A process killed at any moment therefore leaves either the previous checkpoint or the new one, never a
torn file (the next successful save of the same file removes the killed writer's temporary file); a
failed write (full disk, quota, permissions) removes the temporary file, keeps the previous checkpoint
and raises :class:`ssl_zoo.errors.CheckpointError` with one line saying what to free.

Loading: always ``torch.load(..., weights_only=True)``: a checkpoint is tensors and plain values, so a
file whose unpickling would build arbitrary objects (and could run code) is refused, not executed.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from ssl_zoo.errors import CheckpointError


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` such that ``path`` is at all times absent, the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        reason = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
        raise CheckpointError(f"cannot write checkpoint {path}: {reason} ({errno.errorcode.get(e.errno, 'OSError')});"
                              f" the previous checkpoint is kept: free space in {path.parent} or set "
                              "hydra.run.dir to another disk, then resume=auto") from None
    except BaseException:  # an interrupt or a serialisation error: no stray temporary file
        _remove_quietly(tmp)
        raise
    _fsync_dir(path.parent)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer killed mid-write (kill -9)
        _remove_quietly(str(stale))


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint loaded with ``weights_only=True``; anything else is one :class:`CheckpointError` line."""
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: give the path of a .ckpt file or resume=auto")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt, truncated or unsafe files get the same answer
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        why = f"unpickling it would call {unsafe.group(1)} (objects beyond tensors and plain values), refused " \
            "for safety" if unsafe else f"it is not a readable checkpoint ({type(e).__name__})"
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {why}; give an ssl_zoo .ckpt "
                              "or start a fresh run") from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with atomic, fsync-ed writes and ``weights_only`` loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Callable | Any = "cpu",
                        weights_only: bool | None = None) -> dict[str, Any]:
        # weights_only is forced: a resumed run never unpickles arbitrary objects, whatever the caller asks.
        return safe_torch_load(path, map_location=map_location)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
