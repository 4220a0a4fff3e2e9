"""DDP from the command line and global BN as a config choice.

``ssl-zoo train ... trainer.devices=2 trainer.accelerator=cpu trainer.strategy=ddp`` runs two gloo ranks
through Lightning's launcher (it starts rank 1 by running the same command again); ``trainer.sync_batchnorm``
reaches Lightning, which converts every BN of the method, momentum encoders included, to SyncBatchNorm; and
the paper recipes whose papers used global BN (SimCLR, BYOL) turn it on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny
from pytorch_lightning.plugins import TorchSyncBatchNorm

from ssl_zoo.cli import compose
from ssl_zoo.methods import METHODS
from ssl_zoo.train import build_trainer

DDP = ("trainer.devices=2", "trainer.accelerator=cpu", "trainer.strategy=ddp")


def _console_script() -> str:
    script = Path(sys.executable).with_name("ssl-zoo")
    return str(script) if script.exists() else shutil.which("ssl-zoo")


@pytest.mark.slow
def test_two_cpu_ranks_train_from_the_console_script(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GLOO_SOCKET_IFNAME": "lo"}
    result = subprocess.run([_console_script(), "train", *tiny("simclr", *DDP)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1" in result.stdout + result.stderr  # the second rank really ran
    (run_dir,) = {p.parent for p in (tmp_path / "outputs").glob("*/*/run.json")}  # both ranks: one directory
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 5 and summary["method"] == "simclr"
    assert (run_dir / "train_ddp_process_1.log").exists()  # rank 1 was started by Lightning's launcher
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 5


@pytest.mark.parametrize("sync", [True, False])
def test_sync_batchnorm_reaches_lightning(sync, tmp_path):
    cfg = compose(tiny("byol", *DDP, f"trainer.sync_batchnorm={str(sync).lower()}"))
    trainer = build_trainer(cfg, tmp_path, [], [])
    layer_sync = trainer.strategy._layer_sync  # what DDPStrategy applies to the model when fitting starts
    assert isinstance(layer_sync, TorchSyncBatchNorm) if sync else layer_sync is None
    if sync:
        model = layer_sync.apply(METHODS["byol"](cfg))
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
        target_norms = [m for m in model.target.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert target_norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in target_norms)
        # The EMA still pairs the target's BN buffers with the (converted) online ones.
        online = model.target.online_buffers()
        assert len(online) == len(list(model.target.encoder.buffers()))
        assert all(any(b is o for o in online) for b in (m.running_mean for m in model.backbone.modules()
                                                         if isinstance(m, torch.nn.SyncBatchNorm)))


@pytest.mark.parametrize("recipe,method", [("simclr_lars_4096", "simclr"), ("byol_lars_4096", "byol")])
def test_paper_recipes_with_global_bn_default_to_it_at_batch_4096(recipe, method):
    from ssl_zoo.optim import effective_batch_size

    cfg = compose([f"experiment={recipe}"])
    t = cfg.trainer
    assert cfg.method.name == method and cfg.optimizer.name == "lars"
    assert t.sync_batchnorm is True and t.strategy == "ddp"
    assert effective_batch_size(cfg.data.batch_size, t.devices, t.num_nodes, t.accumulate_grad_batches) == 4096


@pytest.mark.parametrize("recipe", ["simclr_lars_4096", "byol_lars_4096"])
def test_slurm_launcher_asks_for_the_nodes_and_gpus_the_recipes_train_on(recipe):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the optional `slurm` extra")
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ssl_zoo.cli import conf_dir

    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = hydra_compose("train", overrides=["hydra/launcher=slurm_2x8", f"experiment={recipe}"],
                            return_hydra_config=True)
    launcher, trainer = cfg.hydra.launcher, cfg.trainer
    assert launcher._target_.endswith("SlurmLauncher")
    # Lightning's SLURMEnvironment wants one task per device, and as many nodes as the trainer counts.
    assert launcher.nodes == trainer.num_nodes == 2
    assert launcher.tasks_per_node == launcher.gpus_per_node == trainer.devices == 8
