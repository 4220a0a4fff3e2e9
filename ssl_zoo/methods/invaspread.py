"""InvaSpread: Unsupervised Embedding Learning via Invariant and Spreading Instance Feature
(Ye, Zhang, Yuen & Chang 2019).

    for x in loader:                                  # N images
        x1, x2 = aug(x), aug(x)                       # the image and an augmented copy
        z = normalize(W f(cat(x1, x2)))               # one encoder, no memory bank, no momentum encoder
        loss = invaspread_loss(z1, z2, T)             # each of the 2N features classified among the 2N - 1
                                                      # others: its other view positive, and "not" every
                                                      # other image's view (the spreading term)

Recipe (CIFAR-10, the authors' code): ResNet-18, 128-d L2-normalised embedding, T = 0.1, batch 128,
SGD lr 0.03, momentum 0.9, wd 5e-4, lr x0.1 from epoch 120; crop (area 0.2-1), colour jitter 0.4,
grey 0.2, flip (``augmentation=moco_v1``, the same views). The classifier weights are the features
themselves, with the gradient stopped on that side (``detach_weights``, as the authors' code).
Deviation: the negatives come from the global batch under data parallelism (``global_negatives``);
the paper trained on one batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ssl_zoo.distributed import gather_with_grad
from ssl_zoo.errors import check
from ssl_zoo.losses.contrastive import invaspread_loss
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput


@dataclass
class InvaSpreadConfig(MethodConfig):
    name: str = "invaspread"
    embed_dim: int = 128
    temperature: float = 0.1
    detach_weights: bool = True
    global_negatives: bool = True  # negatives from every rank's batch; False: this rank's batch only

    def validate(self, prefix: str = "method") -> None:
        check(self.embed_dim >= 1, f"{prefix}.embed_dim", self.embed_dim, "an integer >= 1")
        check(self.temperature > 0, f"{prefix}.temperature", self.temperature, "a number > 0")


class InvaSpread(Method):
    name = "invaspread"
    Config = InvaSpreadConfig

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        self.head = nn.Linear(self.feature_dim, self.hp.embed_dim)

    def step(self, views, index) -> StepOutput:
        x1, x2 = views[0], views[1]
        h = self.backbone(torch.cat([x1, x2]))  # one pass: BN statistics over both views, as the authors
        z1, z2 = self.head(h).chunk(2)
        if self.hp.global_negatives:
            z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
        loss = invaspread_loss(z1, z2, self.hp.temperature, detach_weights=self.hp.detach_weights)
        return StepOutput(loss, features=h[: x1.shape[0]])
