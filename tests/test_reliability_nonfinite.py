"""Numerical faults: a NaN loss at step k stops the run with one line (step, value, last good checkpoint) and
exit code 2, and resume=auto continues; with trainer.skip_nonfinite=true the step is skipped, the weights
stay as they were, and the count is logged and kept in the checkpoint."""

from __future__ import annotations

import csv

import pytest
import pytorch_lightning as pl
import torch
from conftest import tiny

from ssl_zoo.checkpoint_io import safe_torch_load
from ssl_zoo.cli import compose, main
from ssl_zoo.methods.simclr import SimCLR
from ssl_zoo.train import train

QUIET = ("monitor.knn=false", "monitor.probe=false", "monitor.health=false", "monitor.plots=false")
NAN_AT = 3


def nan_loss_at(monkeypatch, step: int) -> None:
    """SimCLR whose loss is NaN at optimizer step ``step`` (a test-only fault)."""
    real_step = SimCLR.step

    def faulty(self, views, index):
        out = real_step(self, views, index)
        if self.global_step == step:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(SimCLR, "step", faulty)


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_naming_step_value_and_checkpoint_then_resume_auto_continues(in_tmp, monkeypatch,
                                                                                             capsys):
    overrides = tiny("simclr", "trainer.max_steps=6", "trainer.checkpoint_every_n_steps=1", *QUIET)
    with monkeypatch.context() as patch:
        nan_loss_at(patch, NAN_AT)
        assert main(["train", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    (last,) = in_tmp.glob("outputs/*/*/checkpoints/last.ckpt")
    assert len(err) == 1 and err[0].startswith("error: non-finite loss nan"), err
    assert f"at step {NAN_AT}" in err[0] and f"last good checkpoint: {last}" in err[0]
    ckpt = safe_torch_load(last)
    assert ckpt["global_step"] == NAN_AT  # the faulty step wrote nothing
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())

    assert main(["train", *overrides, "resume=auto"]) == 0
    assert "resume=auto: continuing" in capsys.readouterr().out
    assert safe_torch_load(last)["global_step"] == 6


class ParameterRecorder(pl.Callback):
    """The method's parameters before and after each optimizer step."""

    def __init__(self):
        self.before, self.after = {}, {}

    @staticmethod
    def params(module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in module.named_parameters()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before[trainer.global_step] = self.params(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after[trainer.global_step - 1] = self.params(pl_module)


@pytest.mark.slow
def test_skip_nonfinite_skips_the_step_keeps_the_weights_and_counts_it_in_log_and_checkpoint(in_tmp, monkeypatch):
    nan_loss_at(monkeypatch, NAN_AT)
    overrides = tiny("simclr", "trainer.max_steps=5", "trainer.skip_nonfinite=true", "trainer.log_every_n_steps=1",
                     *QUIET)
    recorder = ParameterRecorder()
    summary = train(compose(overrides), in_tmp / "run", extra_callbacks=[recorder])
    assert summary["steps"] == 5
    for step in (NAN_AT - 1, NAN_AT, NAN_AT + 1):
        same = all(torch.equal(recorder.before[step][k], recorder.after[step][k]) for k in recorder.before[step])
        assert same == (step == NAN_AT), f"step {step}: parameters {'unchanged' if same else 'changed'}"
    ckpt = safe_torch_load(in_tmp / "run" / "checkpoints" / "last.ckpt")
    (guard,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("NonFiniteGuard")]
    assert guard == {"skipped_steps": 1}
    with open(in_tmp / "run" / "metrics.csv") as f:
        counts = [float(row["train/skipped_steps"]) for row in csv.DictReader(f) if row.get("train/skipped_steps")]
    assert counts and max(counts) == 1.0


def test_huge_but_finite_gradients_are_not_a_fault():
    """Their float32 sum overflows to inf; the check is element-wise, so no fault (and no StopIteration,
    which inside a Lightning hook would end the epoch silently)."""
    from types import SimpleNamespace

    from ssl_zoo.callbacks.nonfinite import NonFiniteGuard

    huge, broken = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(2))
    huge.grad = torch.full((4,), 3e38)
    optimizer = torch.optim.SGD([huge], lr=0.1)
    trainer = SimpleNamespace(precision_plugin=SimpleNamespace())
    guard = NonFiniteGuard()
    assert not torch.isfinite(huge.grad.sum()) and guard._fault(trainer, optimizer) is None
    broken.grad = torch.tensor([1.0, float("nan")])
    optimizer.add_param_group({"params": [broken]})
    assert guard._fault(trainer, optimizer) == "gradient nan"
