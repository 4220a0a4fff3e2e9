"""``last.ckpt`` and ``best.ckpt``: the two checkpoints of a run.

``last`` is written every ``every_n_steps`` optimizer steps (mid-epoch, for preemptible machines) or at
each epoch end; ``best`` holds the highest kNN top-1 and is written when validation measures it. Two
callbacks, because a monitored checkpoint skips its step-interval saves while the metric is absent.
"""

from __future__ import annotations

from pathlib import Path

from pytorch_lightning.callbacks import ModelCheckpoint


class StepCheckpoint(ModelCheckpoint):
    """A step-interval checkpoint that, at an epoch's last batch, waits for the epoch-end validation.

    Saved before that validation, the checkpoint would resume *after* it (Lightning restores the loop as
    past the batch), so a run killed between the save and the validation would silently skip one kNN
    measurement and ``best.ckpt`` candidate. Saving once validation ends keeps resume exact.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._waiting_for_validation = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._validation_follows(trainer):
            self._waiting_for_validation = True
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._waiting_for_validation and not trainer.sanity_checking:
            self._waiting_for_validation = False
            if not self._should_skip_saving_checkpoint(trainer):
                self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    @staticmethod
    def _validation_follows(trainer) -> bool:
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch or not trainer.enable_validation:
            return False
        if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
            return False  # the run ends here; Lightning does not validate after the last step
        every = trainer.check_val_every_n_epoch
        return every is None or (trainer.current_epoch + 1) % every == 0


def checkpoint_callbacks(dirpath: Path, every_n_steps: int | None, best_by_knn: bool) -> list[ModelCheckpoint]:
    """``[last]`` or ``[last, best]`` (see the module docstring)."""
    saver = StepCheckpoint if every_n_steps else ModelCheckpoint
    last = saver(dirpath=str(dirpath), filename="last", monitor=None, save_top_k=1,
                 every_n_train_steps=every_n_steps, enable_version_counter=False)
    if not best_by_knn:
        return [last]
    best = ModelCheckpoint(dirpath=str(dirpath), filename="best", monitor="val/knn_top1", mode="max", save_top_k=1,
                           auto_insert_metric_name=False, enable_version_counter=False)
    return [last, best]
