"""Linear evaluation: a linear classifier on frozen features (Zhang et al. 2016; the protocol of
SimCLR, Chen et al. 2020, appendix B.6, and MoCo, He et al. 2020).

Fast path (``augment=false``): the classifier trains on the cached features of the deterministic
evaluation view. Paper protocol (``augment=true``): every epoch draws a new random-resized crop and
horizontal flip of each training image and runs it through the frozen encoder. Both: SGD with
momentum 0.9 (Nesterov), a cosine learning-rate schedule over all steps, cross-entropy; top-1 and
top-5 on the test split's evaluation view. The classifier is a batch norm without affine parameters
followed by a linear layer (MoCo v3 and MAE do the same): it standardises each feature, so one learning
rate suits backbones whose features have very different scales, and it is still a linear map at test
time. Deviation: SimCLR scales lr with batch/256 and uses 90 epochs; here lr and epochs are given as
they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import v2

from ssl_zoo.errors import check


@dataclass
class LinearConfig:
    lr: float = 0.1
    epochs: int = 100
    batch_size: int = 256
    weight_decay: float = 0.0
    momentum: float = 0.9
    augment: bool = False  # true: random-resized-crop + flip views every epoch (no feature cache)
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    subsets: str = "full"  # full: whole training and test splits; monitor: the kNN monitor's subsets

    def validate(self, prefix: str = "eval") -> None:
        check_training_fields(self, prefix)


def check_training_fields(cfg, prefix: str) -> None:
    """The fields every supervised evaluation protocol shares (linear, fine-tune, few-shot)."""
    check(cfg.lr > 0, f"{prefix}.lr", cfg.lr, "a number > 0")
    check(cfg.epochs >= 1, f"{prefix}.epochs", cfg.epochs, "an integer >= 1")
    check(cfg.batch_size >= 1, f"{prefix}.batch_size", cfg.batch_size, "an integer >= 1")
    check(cfg.weight_decay >= 0, f"{prefix}.weight_decay", cfg.weight_decay, "a number >= 0")
    check(0 <= cfg.momentum < 1, f"{prefix}.momentum", cfg.momentum, "a number in [0, 1)")
    check(len(cfg.crop_scale) == 2 and 0 < cfg.crop_scale[0] <= cfg.crop_scale[1] <= 1,
          f"{prefix}.crop_scale", list(cfg.crop_scale), "[lo, hi] with 0 < lo <= hi <= 1")
    check_subsets(cfg.subsets, prefix)


SUBSETS = ("full", "monitor")


def check_subsets(value: str, prefix: str) -> None:
    check(value in SUBSETS, f"{prefix}.subsets", value, "one of: " + ", ".join(SUBSETS),
          "full: the whole splits; monitor: the training-time kNN monitor's seeded subsets")


def linear_head(feature_dim: int, num_classes: int) -> nn.Module:
    """Feature standardisation (batch norm, no affine) then a linear layer: [B, D] -> [B, num_classes]."""
    return nn.Sequential(nn.BatchNorm1d(feature_dim, affine=False), nn.Linear(feature_dim, num_classes))


def topk_accuracy(logits: Tensor, labels: Tensor, topk: Iterable[int] = (1, 5)) -> dict[str, float]:
    """``{"top1": %, "top5": %}`` of ``logits`` [N, C] against ``labels`` [N] (k capped at C)."""
    ranked = logits.argsort(dim=1, descending=True)
    hit = ranked == labels.view(-1, 1)
    return {f"top{k}": 100.0 * hit[:, :min(k, logits.shape[1])].any(dim=1).float().mean().item() for k in topk}


class AugmentedSplit(Dataset):
    """``base[indices[i]]`` through a random ``transform`` (fresh randomness each epoch) -> (image, label)."""

    def __init__(self, base: Dataset, indices: list[int], transform: Callable):
        self.base, self.indices, self.transform = base, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image, label = self.base[self.indices[i]]
        return self.transform(image).as_subclass(torch.Tensor), int(label)


def crop_flip_transform(image_size: int, mean: list[float], std: list[float], scale: list[float]) -> v2.Compose:
    """The supervised-protocol training view: random-resized crop (area ``scale``) and horizontal flip."""
    return v2.Compose([v2.RandomResizedCrop(image_size, scale=tuple(scale), antialias=True),
                       v2.RandomHorizontalFlip(), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(list(mean), list(std))])


def seeded_loader(dataset: Dataset, batch_size: int, seed: int, num_workers: int = 0) -> DataLoader:
    """Shuffled batches in an order fixed by ``seed``. A last batch of one sample is dropped: batch norm
    cannot normalise a single sample in training mode."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    lone_last = len(dataset) > batch_size and len(dataset) % batch_size == 1
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=lone_last, generator=generator,
                      num_workers=num_workers)


def sgd_cosine(params, lr: float, momentum: float, weight_decay: float, total_steps: int):
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))


def fit(model: nn.Module, loader: DataLoader, optimizer, scheduler, epochs: int, device: torch.device,
        encoder: nn.Module | None = None) -> None:
    """Cross-entropy training of ``model`` on ``loader``; ``encoder`` (frozen, eval mode) maps images to
    the model's inputs first when given."""
    model.to(device).train()
    for _ in range(epochs):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            if encoder is not None:
                with torch.no_grad():
                    x = encoder(x).float()
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()


@torch.no_grad()
def predict(model: nn.Module, inputs: Tensor, device: torch.device, batch_size: int = 1024) -> Tensor:
    model.to(device).eval()
    return torch.cat([model(inputs[i:i + batch_size].to(device)).float().cpu()
                      for i in range(0, len(inputs), batch_size)])


def linear_on_features(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
                       cfg: LinearConfig, seed: int, device: torch.device) -> dict[str, float]:
    """Fast path: a linear classifier fitted on cached features; test top-1/top-5 in percent."""
    torch.manual_seed(seed)
    head = linear_head(train_x.shape[1], num_classes)
    loader = seeded_loader(TensorDataset(train_x, train_y), cfg.batch_size, seed)
    optimizer, scheduler = sgd_cosine(head.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay,
                                      cfg.epochs * len(loader))
    fit(head, loader, optimizer, scheduler, cfg.epochs, device)
    return topk_accuracy(predict(head, test_x, device), test_y)


def linear_augmented(encoder: nn.Module, feature_dim: int, train_set: Dataset, test_x: Tensor, test_y: Tensor,
                     num_classes: int, cfg: LinearConfig, seed: int, device: torch.device,
                     num_workers: int = 0) -> dict[str, float]:
    """Paper protocol: new augmented views every epoch through the frozen ``encoder``; ``test_x`` are the
    test split's (cached) features of the evaluation view."""
    torch.manual_seed(seed)
    head = linear_head(feature_dim, num_classes)
    loader = seeded_loader(train_set, cfg.batch_size, seed, num_workers)
    optimizer, scheduler = sgd_cosine(head.parameters(), cfg.lr, cfg.momentum, cfg.weight_decay,
                                      cfg.epochs * len(loader))
    encoder.to(device).eval()
    fit(head, loader, optimizer, scheduler, cfg.epochs, device, encoder=encoder)
    return topk_accuracy(predict(head, test_x, device), test_y)
