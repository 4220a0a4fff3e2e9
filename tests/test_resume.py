"""A stopped run resumed from its checkpoint ends where an uninterrupted run ends."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import tiny

from ssl_zoo.cli import compose
from ssl_zoo.train import train


class Killed(Exception):
    pass


class KillAfter(pl.Callback):
    """Aborts the run once step ``k``'s checkpoint is written, as a kill would: no end-of-epoch work,
    no further checkpoint."""

    def __init__(self, k: int):
        self.k = k

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step >= self.k:
            raise Killed(f"killed at step {trainer.global_step}")


def last_state(run_dir: Path) -> dict:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt


# The three shapes of method (in-batch negatives; queue + momentum encoder; predictor + EMA target), in
# process; tests/test_kill_resume.py drives every registered method through a real kill -9.
@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr", "moco_v2", "byol"])
def test_stop_at_k_and_resume_equals_uninterrupted(method, in_tmp):
    # 48 samples / batch 8 = 6 steps an epoch: stopping at 4 is mid-epoch; 10 steps cross an epoch.
    overrides = tiny(method, "trainer.max_steps=10", "trainer.checkpoint_every_n_steps=1", "data.num_samples=48")
    straight = train(compose(overrides), in_tmp / "straight")
    with pytest.raises(Killed):
        train(compose(overrides), in_tmp / "resumed", extra_callbacks=[KillAfter(4)])
    assert last_state(in_tmp / "resumed")["global_step"] == 4
    resumed = train(compose([*overrides, "resume=auto"]), in_tmp / "resumed")
    assert straight["steps"] == resumed["steps"] == 10
    a, b = last_state(in_tmp / "straight"), last_state(in_tmp / "resumed")
    assert a["global_step"] == b["global_step"] == 10
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)
    assert a["optimizer_states"][0]["state"].keys() == b["optimizer_states"][0]["state"].keys()
