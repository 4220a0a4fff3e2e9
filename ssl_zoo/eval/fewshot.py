"""Semi-supervised evaluation with few labels (SimCLR v2, Chen et al. 2020b, sec. 3 and appendix B.5):
fine-tune the pre-trained network (or, with ``mode=linear``, a linear classifier on frozen features)
on 1% and 10% of the labelled training images, then score the whole test split.

The subsets are class-balanced (stratified): of each class, ``round(fraction x its count)`` images (at
least one), drawn with a generator seeded by ``seed``, so every protocol and checkpoint sees the same
images. Deviation: SimCLR v2 uses ImageNet's fixed 1%/10% lists; here they are drawn per data set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ssl_zoo.errors import check
from ssl_zoo.eval.finetune import OPTIMIZERS
from ssl_zoo.eval.linear import check_subsets

MODES = ("finetune", "linear")


@dataclass
class FewshotConfig:
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1])
    mode: str = "finetune"
    optimizer: str = "adamw"  # finetune mode; linear mode uses SGD
    lr: float = 1.0e-3
    epochs: int = 60
    batch_size: int = 256
    weight_decay: float = 0.0
    momentum: float = 0.9
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    subsets: str = "full"  # full: whole training and test splits; monitor: the kNN monitor's subsets

    def validate(self, prefix: str = "eval") -> None:
        check(len(self.fractions) >= 1 and all(0 < f <= 1 for f in self.fractions), f"{prefix}.fractions",
              list(self.fractions), "a list of label fractions in (0, 1], e.g. [0.01, 0.1]")
        check(self.mode in MODES, f"{prefix}.mode", self.mode, "one of: " + ", ".join(MODES))
        check(self.optimizer in OPTIMIZERS, f"{prefix}.optimizer", self.optimizer, "one of: " + ", ".join(OPTIMIZERS))
        check(self.lr > 0, f"{prefix}.lr", self.lr, "a number > 0")
        check(self.epochs >= 1, f"{prefix}.epochs", self.epochs, "an integer >= 1")
        check(self.batch_size >= 1, f"{prefix}.batch_size", self.batch_size, "an integer >= 1")
        check(self.weight_decay >= 0, f"{prefix}.weight_decay", self.weight_decay, "a number >= 0")
        check(len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1,
              f"{prefix}.crop_scale", list(self.crop_scale), "[lo, hi] with 0 < lo <= hi <= 1")
        check_subsets(self.subsets, prefix)


def stratified_subset(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """Positions into ``labels`` [N]: ``max(1, round(fraction x n_c))`` of each class c, seeded, sorted."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    chosen = []
    for c in torch.unique(labels[labels >= 0]).tolist():
        members = (labels == c).nonzero().flatten()
        take = max(1, round(fraction * len(members)))
        chosen.append(members[torch.randperm(len(members), generator=generator)[:take]])
    return torch.cat(chosen).sort().values if chosen else torch.zeros(0, dtype=torch.long)
