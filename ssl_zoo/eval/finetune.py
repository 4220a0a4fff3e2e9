"""Fine-tuning: the whole pre-trained network plus a new linear head, trained end to end on labels.

Training views are random-resized crops with horizontal flips (the supervised protocol of SimCLR v2,
Chen et al. 2020b, appendix B.5); the test split uses the deterministic evaluation view. Optimizer:
AdamW (default) or SGD with momentum, cosine schedule over all steps, no warm-up. Deviation: SimCLR v2
fine-tunes with LARS and a batch of 1024; batch-norm statistics are updated as in its recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ssl_zoo.errors import check
from ssl_zoo.eval.linear import check_training_fields, fit, seeded_loader, topk_accuracy

OPTIMIZERS = ("adamw", "sgd")


@dataclass
class FinetuneConfig:
    optimizer: str = "adamw"
    lr: float = 1.0e-3
    epochs: int = 30
    batch_size: int = 256
    weight_decay: float = 0.05
    momentum: float = 0.9  # sgd only
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    subsets: str = "full"  # full: whole training and test splits; monitor: the kNN monitor's subsets

    def validate(self, prefix: str = "eval") -> None:
        check(self.optimizer in OPTIMIZERS, f"{prefix}.optimizer", self.optimizer, "one of: " + ", ".join(OPTIMIZERS))
        check_training_fields(self, prefix)


class Classifier(nn.Module):
    """``head(encoder(x))``: the encoder's features [B, D] -> logits [B, num_classes]."""

    def __init__(self, encoder: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x).float())


def build_optimizer(params, cfg: FinetuneConfig, total_steps: int):
    if cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                    nesterov=cfg.momentum > 0)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    model.to(device).eval()
    logits, labels = [], []
    for x, y in loader:
        logits.append(model(x.to(device)).float().cpu())
        labels.append(y)
    return topk_accuracy(torch.cat(logits), torch.cat(labels))


def finetune(encoder: nn.Module, feature_dim: int, train_set: Dataset, test_loader: DataLoader, num_classes: int,
             cfg: FinetuneConfig, seed: int, device: torch.device, num_workers: int = 0) -> dict[str, float]:
    """Train ``encoder`` (modified in place) with a new head on ``train_set``; test top-1/top-5 in percent."""
    torch.manual_seed(seed)
    model = Classifier(encoder, feature_dim, num_classes)
    loader = seeded_loader(train_set, cfg.batch_size, seed, num_workers)
    optimizer, scheduler = build_optimizer(model.parameters(), cfg, cfg.epochs * len(loader))
    fit(model, loader, optimizer, scheduler, cfg.epochs, device)
    return evaluate(model, test_loader, device)
