"""Numerical faults: a NaN/Inf loss or gradient never reaches the weights or a checkpoint.

Checked after the backward pass and before the optimizer step (``on_before_optimizer_step``):

* default: the run stops with one line naming the step, the value and the last good checkpoint
  (``non-finite loss nan at step 17; last good checkpoint: .../last.ckpt``); the weights are those of
  the previous step and nothing is saved, so ``resume=auto`` continues from the last good state.
* ``trainer.skip_nonfinite=true``: the step is skipped (gradients set to None, so the optimizer
  applies neither the update nor momentum nor weight decay), counted, logged as
  ``train/skipped_steps`` and the count kept in the checkpoint.

Mixed precision with a GradScaler (``16-mixed``): infinite gradients are the scaler's business (it
skips that step and lowers its scale), so only the loss is checked there. A checkpoint whose weights
are not finite is refused whatever the mode.

Limits: state a method updates inside its forward pass (BatchNorm running statistics, queues, banks,
centres) is not rolled back by a skipped step; a NaN input corrupting those shows up as a NaN loss at
the next steps and, with skipping, is caught by the checkpoint check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from ssl_zoo.errors import SSLZooError


class NonFiniteError(SSLZooError):
    """A NaN or Inf loss or gradient: the run stops before the weights change."""


class NonFiniteGuard(pl.Callback):
    def __init__(self, skip: bool = False, last_checkpoint: str | Path | None = None):
        self.skip = skip
        self.last_checkpoint = Path(last_checkpoint) if last_checkpoint else None
        self.skipped_steps = 0
        self._loss: torch.Tensor | None = None

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        self._loss = loss.detach()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        fault = self._fault(trainer, optimizer)
        if fault is None:
            return
        if not self.skip:
            where = str(self.last_checkpoint) if self.last_checkpoint and self.last_checkpoint.exists() \
                else "none written yet"
            raise NonFiniteError(f"non-finite {fault} at step {trainer.global_step}; last good checkpoint: {where}"
                                 " (resume=auto continues from it; trainer.skip_nonfinite=true skips such steps)")
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None  # no update at all: zeroed grads would still apply momentum and weight decay
        self.skipped_steps += 1
        pl_module.log("train/skipped_steps", float(self.skipped_steps))

    def _fault(self, trainer, optimizer) -> str | None:
        """``"loss nan"``, ``"gradient inf"``... of the current step, or None when all is finite."""
        if self._loss is not None and not torch.isfinite(self._loss).all():
            return f"loss {self._loss.float().flatten()[0].item()}"
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return None  # a GradScaler skips overflowing steps itself and lowers its scale
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        # Element-wise, not through a sum: huge but finite gradients overflow a float32 sum to inf, and a
        # StopIteration raised in this hook would end Lightning's epoch silently.
        if grads and not torch.stack([torch.isfinite(g).all() for g in grads]).all():
            bad = next(g for g in grads if not torch.isfinite(g).all())
            value = bad[~torch.isfinite(bad)].flatten()[0].item()
            return f"gradient {value}"
        return None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        for key, value in checkpoint.get("state_dict", {}).items():
            if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
                raise NonFiniteError(f"refusing to write a checkpoint at step {trainer.global_step}: weight {key} "
                                     "is not finite; the previous checkpoint is kept (resume=auto continues from it)")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
