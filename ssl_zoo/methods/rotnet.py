"""RotNet: Unsupervised Representation Learning by Predicting Image Rotations (Gidaris, Singh & Komodakis
2018).

    for x in loader:                                       # one view [B, C, H, W], square
        x4 = cat(rot90(x, k) for k in 0, 1, 2, 3)           # every image at 0, 90, 180, 270 degrees
        y4 = [0]*B + [1]*B + [2]*B + [3]*B
        loss = CE(c(f(x4)), y4)                             # 4-way rotation classifier on the features

All four rotations of each image go into the same batch, as the paper does (it found this better than
one random rotation per image). Recipe (CIFAR-10, the paper): a 4-block NIN, SGD momentum 0.9, wd 5e-4,
batch 128, lr 0.1 divided by 5 after epochs 30, 60 and 80 of 100; ImageNet: AlexNet, batch 192.
Deviations: the encoder is the configured backbone and the classifier a head on its pooled features
(``classifier_hidden_dim`` 0: linear; > 0: one hidden layer with BN and ReLU) instead of the NIN's
last blocks. The probe reads the features of the upright images (no second pass).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_zoo.errors import check
from ssl_zoo.heads import MLP
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput

ROTATIONS = 4


def rotate_all(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, C, H, H] -> (the 4 rotations [4B, C, H, H], labels [4B]): block k holds x turned by k·90°
    counter-clockwise."""
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(ROTATIONS)])
    labels = torch.arange(ROTATIONS, device=x.device).repeat_interleave(x.shape[0])
    return rotated, labels


@dataclass
class RotNetConfig(MethodConfig):
    min_views = 1
    name: str = "rotnet"
    classifier_hidden_dim: int = 0  # 0: a linear classifier; > 0: Linear-BN-ReLU-Linear

    def validate(self, prefix: str = "method") -> None:
        check(self.classifier_hidden_dim >= 0, f"{prefix}.classifier_hidden_dim", self.classifier_hidden_dim,
              "an integer >= 0 (0: a linear classifier)")


class RotNet(Method):
    name = "rotnet"
    Config = RotNetConfig

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        hidden = self.hp.classifier_hidden_dim
        self.classifier = (MLP(self.feature_dim, hidden, ROTATIONS) if hidden else
                           nn.Linear(self.feature_dim, ROTATIONS))

    def step(self, views, index) -> StepOutput:
        x = views[0]
        rotated, labels = rotate_all(x)
        h = self.backbone(self._format(rotated))
        logits = self.classifier(h)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
        return StepOutput(loss, features=h[: x.shape[0]], logs={"rotation_acc": accuracy})
