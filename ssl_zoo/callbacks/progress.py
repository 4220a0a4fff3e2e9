"""Plain progress lines for logs and pipes, where an interactive progress bar would only add noise."""

from __future__ import annotations

import time

import pytorch_lightning as pl


class ProgressLines(pl.Callback):
    """One line per ``every_s`` seconds of training and one per validation, on rank 0."""

    def __init__(self, every_s: float = 30.0):
        self.every_s = every_s
        self._last = time.time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.is_global_zero and time.time() - self._last >= self.every_s:
            self._last = time.time()
            loss = trainer.callback_metrics.get("train/loss")
            total = trainer.estimated_stepping_batches
            print(f"epoch {trainer.current_epoch} step {trainer.global_step}/{total}"
                  + (f" loss {float(loss):.4f}" if loss is not None else ""), flush=True)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if metrics:
            shown = "  ".join(f"{k}={v:.2f}" for k, v in sorted(metrics.items()))
            print(f"validation at step {trainer.global_step}: {shown}", flush=True)
