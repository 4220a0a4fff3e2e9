"""Run directories: unique per run (safe for concurrent starts), found again by config hash for
``resume=auto``."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# Keys that do not change what a run computes, left out of its identity.
_NOT_IDENTITY = ("resume", "hydra", "logger")


def config_hash(cfg: DictConfig) -> str:
    """A short, stable hash of the resolved config minus the keys that do not change the result."""
    return container_hash(OmegaConf.to_container(cfg, resolve=True))


def container_hash(container: dict, leave_out: tuple[str, ...] = ()) -> str:
    """:func:`config_hash` of a plain config dict, also without the top-level keys ``leave_out``
    (``("seed",)``: the recipe, the same for every seed of it)."""
    kept = {k: v for k, v in container.items() if k not in _NOT_IDENTITY and k not in leave_out}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:12]


def new_run_dir(root: Path = Path("outputs")) -> Path:
    """``outputs/<date>/<time>``, suffixed ``-1``, ``-2``... when taken: ``mkdir`` is atomic, so two runs
    started in the same second never share a directory."""
    now = time.localtime()
    base = root / time.strftime("%Y-%m-%d", now) / time.strftime("%H-%M-%S", now)
    base.parent.mkdir(parents=True, exist_ok=True)
    for i in range(10_000):
        candidate = base if i == 0 else base.with_name(f"{base.name}-{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run directory under {base.parent}")


def find_run_to_resume(cfg_hash: str, root: Path = Path("outputs")) -> Path | None:
    """The most recent run directory with this config hash that holds a ``checkpoints/last.ckpt``."""
    candidates = []
    for info in root.glob("**/run.json"):
        try:
            meta = json.loads(info.read_text())
        except (OSError, ValueError):
            continue
        last = info.parent / "checkpoints" / "last.ckpt"
        if meta.get("config_hash") == cfg_hash and last.exists():
            candidates.append((last.stat().st_mtime, info.parent))
    return max(candidates)[1] if candidates else None
