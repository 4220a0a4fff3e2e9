"""BYOL: Bootstrap Your Own Latent (Grill et al. 2020).

    for x in loader:
        v1, v2 = t(x), t'(x)                        # asymmetric augmentations (blur 1.0/0.1, solarize 0/0.2)
        p1, p2 = q(g(f(v1))), q(g(f(v2)))           # online: encoder, projector, predictor
        with no_grad:
            z1, z2 = g'(f'(v1)), g'(f'(v2))         # target: EMA of encoder and projector
        loss = byol_loss(p1, z2) + byol_loss(p2, z1)    # 2 - 2 cos, symmetrised (the paper sums)
        θ' ← τ θ' + (1 - τ) θ,  τ: 0.996 -> 1 cosine over training

Recipe: LARS, base lr 0.2 x B/256, wd 1.5e-6, batch 4096, 1000 epochs, 10 warm-up epochs,
projector and predictor 4096-256 with BN. The reference code sets lr, wd and the base τ by schedule
length (``byol/configs/byol.py``): 40 epochs 0.45, 1e-6, 0.97; 100 epochs 0.45, 1e-6, 0.99; 300 epochs
0.3, 1e-6, 0.99; 1000 epochs the paper's. Deviation: the output layers of our projector and predictor
have a bias, the reference's do not.

``pred_lr_scale`` (1, the paper's, by default) multiplies the predictor's learning rate: a predictor that
adapts faster than the encoder (as SimSiam's fixed-lr predictor, Chen & He 2021, and DirectPred's
analysis, Tian et al. 2021) is an option for short schedules, not part of the paper's recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_zoo.errors import check
from ssl_zoo.heads import MLP
from ssl_zoo.losses.negative_free import byol_loss
from ssl_zoo.memory import MomentumEncoder
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput


@dataclass
class BYOLConfig(MethodConfig):
    name: str = "byol"
    proj_hidden_dim: int = 4096
    proj_output_dim: int = 256
    pred_hidden_dim: int = 4096
    base_momentum: float = 0.996
    final_momentum: float = 1.0
    pred_lr_scale: float = 1.0

    def validate(self, prefix: str = "method") -> None:
        for key in ("proj_hidden_dim", "proj_output_dim", "pred_hidden_dim"):
            check(getattr(self, key) >= 1, f"{prefix}.{key}", getattr(self, key), "an integer >= 1")
        check(0.0 <= self.base_momentum <= 1.0, f"{prefix}.base_momentum", self.base_momentum, "a number in [0, 1]")
        check(self.base_momentum <= self.final_momentum <= 1.0, f"{prefix}.final_momentum", self.final_momentum,
              f"a number in [method.base_momentum={self.base_momentum}, 1]")
        check(self.pred_lr_scale > 0, f"{prefix}.pred_lr_scale", self.pred_lr_scale, "a number > 0")


class BYOL(Method):
    name = "byol"
    Config = BYOLConfig

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        hp = self.hp
        self.projector = MLP(self.feature_dim, hp.proj_hidden_dim, hp.proj_output_dim)
        self.predictor = MLP(hp.proj_output_dim, hp.pred_hidden_dim, hp.proj_output_dim)
        self.target = MomentumEncoder(self.backbone, self.projector, base_momentum=hp.base_momentum,
                                      final_momentum=hp.final_momentum)

    def param_groups(self) -> list[dict]:
        return self.param_groups_apart("predictor", lr_scale=self.hp.pred_lr_scale)

    def step(self, views, index) -> StepOutput:
        v1, v2 = views[0], views[1]
        h1, h2 = self.backbone(v1), self.backbone(v2)
        p1, p2 = self.predictor(self.projector(h1)), self.predictor(self.projector(h2))
        with torch.no_grad():
            z1, z2 = self.target(v1), self.target(v2)
        loss = byol_loss(p1, z2) + byol_loss(p2, z1)
        return StepOutput(loss, features=h1)
