"""Online linear probe: a linear classifier trained on detached backbone features during pre-training.

It has its own optimizer and never touches the backbone's gradients (the features it sees are
detached). It reuses the features the method already computed for its loss, so it costs no extra
forward pass. Under DDP its gradients are averaged across ranks, so every rank keeps the same probe.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_zoo.distributed import all_reduce_mean


class OnlineLinearProbe(pl.Callback):
    def __init__(self, feature_dim: int, num_classes: int, lr: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 0.0):
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.optimizer = torch.optim.SGD(self.classifier.parameters(), lr=lr, momentum=momentum,
                                         weight_decay=weight_decay)
        self._correct = self._seen = 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.classifier.to(pl_module.device)
        # Move optimizer state (momentum buffers restored from a checkpoint) to the same device.
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if torch.is_tensor(value):
                    state[key] = value.to(pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not isinstance(outputs, dict) or "features" not in outputs:
            return
        features, labels = outputs["features"].float(), outputs["labels"]
        keep = labels >= 0
        if not keep.any():
            return
        with torch.enable_grad():
            logits = self.classifier(features[keep])
            loss = F.cross_entropy(logits, labels[keep])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        for p in self.classifier.parameters():
            p.grad = all_reduce_mean(p.grad)
        self.optimizer.step()
        acc = (logits.argmax(1) == labels[keep]).float().mean()
        pl_module.log("probe/train_loss", loss.detach())
        pl_module.log("probe/train_top1", 100.0 * acc)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._correct = self._seen = 0

    @torch.no_grad()
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if dataloader_idx != len(trainer.val_dataloaders) - 1:  # the last loader is the validation split
            return
        logits = self.classifier(outputs["features"].float())
        self._correct += (logits.argmax(1) == outputs["labels"]).sum().item()
        self._seen += outputs["labels"].numel()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._seen:
            pl_module.log("val/probe_top1", 100.0 * self._correct / self._seen, add_dataloader_idx=False)

    def state_dict(self) -> dict[str, Any]:
        return {"classifier": self.classifier.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.classifier.load_state_dict(state_dict["classifier"])
        self.optimizer.load_state_dict(state_dict["optimizer"])
