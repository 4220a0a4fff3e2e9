"""The learning rate depends on the global batch only: 2 nodes x 2 devices x 2 accumulated batches of b
train with the rate of one device with a batch of 8b, through the code path ``configure_optimizers`` takes
(Lightning's Trainer reports devices, nodes and accumulation; nothing is launched)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
from conftest import tiny

from ssl_zoo.cli import compose
from ssl_zoo.config import validate_config
from ssl_zoo.data import SSLDataModule
from ssl_zoo.methods import METHODS
from ssl_zoo.transforms import build_eval_transform, build_view_transform

B = 8


def _optimizer_lrs(batch_size: int, devices: int, num_nodes: int, accumulate: int, extra: tuple[str, ...] = ()):
    """Each group's lr after ``configure_optimizers`` (before the schedule's factor), the schedule's base
    rates and its rate at the end of warm-up, and the global batch the run trains with."""
    cfg = compose(tiny("simclr", f"data.batch_size={batch_size}", "data.num_samples=1024", "optimizer=lars",
                       "optimizer.lr=0.3", "optimizer.lr_scaling=linear", "scheduler=warmup_cosine",
                       "scheduler.warmup_epochs=1", "trainer.max_steps=-1", "trainer.max_epochs=4", *extra))
    typed = validate_config(cfg)
    data = typed["data"]
    datamodule = SSLDataModule(data, build_view_transform(typed["augmentation"], data.image_size, data.mean,
                                                          data.std, data.channels),
                               build_eval_transform(data.image_size, data.mean, data.std, data.channels), seed=0)
    datamodule.setup("fit")
    model = METHODS["simclr"](cfg, num_train=datamodule.train_size)
    strategy = "ddp" if devices * num_nodes > 1 else "auto"
    trainer = pl.Trainer(accelerator="cpu", devices=devices, num_nodes=num_nodes, strategy=strategy,
                         accumulate_grad_batches=accumulate, max_epochs=4, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    # What fit() does before configure_optimizers: attach the model and the data module to the trainer.
    trainer._data_connector.attach_datamodule(model, datamodule=datamodule)
    model.trainer = trainer
    conf = model.configure_optimizers()
    optimizer, scheduler = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    steps_per_epoch = model._steps_per_epoch
    for _ in range(steps_per_epoch):  # to the end of the one warm-up epoch: the full scaled rate
        optimizer.step()
        scheduler.step()
    return {"initial": [g["initial_lr"] for g in optimizer.param_groups], "base": list(scheduler.base_lrs),
            "after_warmup": [g["lr"] for g in optimizer.param_groups], "total_steps": model.total_steps(),
            "steps_per_epoch": steps_per_epoch}


@pytest.mark.parametrize("rule,expected", [("linear", 0.3 * 8 * B / 256), ("sqrt", 0.3 * (8 * B / 256) ** 0.5)])
def test_two_nodes_two_devices_two_accumulations_train_with_the_lr_of_one_device_at_8x_batch(rule, expected):
    multi = _optimizer_lrs(B, devices=2, num_nodes=2, accumulate=2, extra=(f"optimizer.lr_scaling={rule}",))
    single = _optimizer_lrs(8 * B, devices=1, num_nodes=1, accumulate=1, extra=(f"optimizer.lr_scaling={rule}",))
    assert multi == single
    assert multi["initial"] == pytest.approx([expected] * len(multi["initial"]))
    assert multi["after_warmup"] == pytest.approx(multi["initial"])
    # 1024 samples / (8 x 8) per optimizer step: the schedule is as long in steps, so warm-up and decay match.
    assert multi["steps_per_epoch"] == 1024 // (8 * B) and multi["total_steps"] == 4 * multi["steps_per_epoch"]


def test_one_device_accumulating_8_batches_matches_too():
    accumulated = _optimizer_lrs(B, devices=1, num_nodes=1, accumulate=8)
    assert accumulated == _optimizer_lrs(8 * B, devices=1, num_nodes=1, accumulate=1)


def test_a_forgotten_node_count_changes_the_lr():
    # The regression this guards against: a global batch that leaves out nodes (or accumulation).
    two_nodes = _optimizer_lrs(B, devices=2, num_nodes=2, accumulate=2)
    one_node = _optimizer_lrs(B, devices=2, num_nodes=1, accumulate=2)
    assert two_nodes["initial"][0] == pytest.approx(2 * one_node["initial"][0])
