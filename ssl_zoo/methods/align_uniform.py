"""Alignment and uniformity as a training loss: Understanding Contrastive Representation Learning through
Alignment and Uniformity on the Hypersphere (Wang & Isola 2020, sec. 5).

    for x in loader:                                   # N images
        z1, z2 = normalize(g(f(aug(x)))), normalize(g(f(aug(x))))    # [N, 128] on the unit sphere
        loss = align_w * align(z1, z2, alpha) + unif_w * (uniform(z1, t) + uniform(z2, t)) / 2

Recipe (the authors' STL-10 example): SGD lr 0.12 x B/256, momentum 0.9, wd 1e-4, batch 768, 200 epochs,
lr x0.1 at epochs 155, 170 and 185, alpha=2, t=2, both weights 1, a 128-d output. Deviations: the
encoder is this run's backbone followed by one linear layer to ``proj_output_dim`` (theirs: a small
AlexNet whose last layer is that linear map); the losses are taken over the global batch, gathered from
all ranks (theirs: one process).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_zoo.distributed import gather_with_grad
from ssl_zoo.errors import check
from ssl_zoo.losses.uniformity import align_loss, uniform_loss
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput


@dataclass
class AlignUniformConfig(MethodConfig):
    name: str = "align_uniform"
    proj_output_dim: int = 128
    align_weight: float = 1.0
    unif_weight: float = 1.0
    align_alpha: float = 2.0
    unif_t: float = 2.0

    def validate(self, prefix: str = "method") -> None:
        check(self.proj_output_dim >= 1, f"{prefix}.proj_output_dim", self.proj_output_dim, "an integer >= 1")
        check(self.align_weight >= 0, f"{prefix}.align_weight", self.align_weight, "a number >= 0")
        check(self.unif_weight >= 0, f"{prefix}.unif_weight", self.unif_weight, "a number >= 0")
        check(self.align_alpha > 0, f"{prefix}.align_alpha", self.align_alpha, "a number > 0")
        check(self.unif_t > 0, f"{prefix}.unif_t", self.unif_t, "a number > 0")


class AlignUniform(Method):
    name = "align_uniform"
    Config = AlignUniformConfig

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        self.projector = nn.Linear(self.feature_dim, self.hp.proj_output_dim)

    def step(self, views, index) -> StepOutput:
        x1, x2 = views[0], views[1]
        h = self.backbone(torch.cat([x1, x2]))
        z1, z2 = F.normalize(self.projector(h), dim=1).chunk(2)
        z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
        hp = self.hp
        align = align_loss(z1, z2, hp.align_alpha)
        uniform = (uniform_loss(z1, hp.unif_t) + uniform_loss(z2, hp.unif_t)) / 2
        loss = hp.align_weight * align + hp.unif_weight * uniform
        return StepOutput(loss, features=h[: x1.shape[0]], logs={"align": align.detach(), "uniform": uniform.detach()})
