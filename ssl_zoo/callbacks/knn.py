"""kNN monitor: weighted kNN top-1 of the backbone features, at every validation.

The validation loop runs two loaders: [kNN bank (training split, no augmentation), validation split].
Features come from the method's ``validation_step``; here they are collected, gathered across ranks
and classified with :func:`ssl_zoo.eval.knn.knn_accuracy`. A validation run before training records
the random-initialisation baseline (``val/knn_top1_random_init``), kept in the checkpoint.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from ssl_zoo.distributed import gather_no_grad
from ssl_zoo.eval.knn import knn_accuracy


class KNNMonitor(pl.Callback):
    def __init__(self, num_classes: int, k: int = 200, temperature: float = 0.1):
        self.num_classes, self.k, self.temperature = num_classes, k, temperature
        self.measuring_baseline = False
        self.baseline_top1: float | None = None
        self.last_top1: float | None = None
        self.last_step: int = -1
        self._features: dict[int, list] = {}
        self._labels: dict[int, list] = {}

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._features, self._labels = {}, {}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        self._features.setdefault(dataloader_idx, []).append(outputs["features"].detach().float())
        self._labels.setdefault(dataloader_idx, []).append(outputs["labels"].detach())

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if len(self._features) < 2 or trainer.sanity_checking:
            return
        bank, test = (gather_no_grad(torch.cat(self._features[i])) for i in (0, 1))
        bank_labels, test_labels = (gather_no_grad(torch.cat(self._labels[i])) for i in (0, 1))
        acc = knn_accuracy(bank, bank_labels, test, test_labels, self.num_classes, self.k, self.temperature)
        self._features, self._labels = {}, {}
        self.last_top1, self.last_step = acc[1], trainer.global_step
        if self.measuring_baseline:
            self.baseline_top1 = acc[1]
            pl_module.log("val/knn_top1_random_init", acc[1])
        pl_module.log("val/knn_top1", acc[1], prog_bar=True)
        pl_module.log("val/knn_top5", acc[5])

    def state_dict(self) -> dict[str, Any]:
        return {"baseline_top1": self.baseline_top1, "last_top1": self.last_top1, "last_step": self.last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.baseline_top1 = state_dict.get("baseline_top1")
        self.last_top1 = state_dict.get("last_top1")
        self.last_step = state_dict.get("last_step", -1)
