"""SimSiam: Exploring Simple Siamese Representation Learning (Chen & He 2021).

    for x in loader:
        x1, x2 = aug(x), aug(x)
        z1, z2 = g(f(x1)), g(f(x2))                 # projector: 3 layers, BN on every output
        p1, p2 = h(z1), h(z2)                       # predictor: bottleneck 2048-512-2048
        loss = (D(p1, z2) + D(p2, z1)) / 2          # D(p, z) = -cos(p, stopgrad(z))

No momentum encoder, no negatives: the stop-gradient alone prevents collapse (paper sec. 4).
Shapes: views [B, C, H, W] -> h [B, feature_dim] -> z, p [B, proj_output_dim].

Recipe: SGD lr 0.05 x B/256, momentum 0.9, wd 1e-4 on every parameter, cosine decay without warm-up,
batch 512, 100 epochs; the predictor keeps its initial lr (``fixed_predictor_lr``, the paper's
"fixed lr for h" ablation and the official default). Projector layers 2048 wide, output BN without
affine parameters, as the official code. ``pred_lr_scale`` (1, the paper's, by default) multiplies the
predictor's lr, as BYOL's option of the same name: not part of the paper's recipe.
Deviations from the official code: its encoder starts with the last BN of each residual block at zero
(``zero_init_residual``; ours: ``backbone.zero_init_residual``, off by default for every method), and
its projector's hidden width is the encoder's (512 for a ResNet-18; ours 2048, ``proj_hidden_dim``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ssl_zoo.errors import check
from ssl_zoo.heads import MLP
from ssl_zoo.losses.negative_free import simsiam_loss
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput


@dataclass
class SimSiamConfig(MethodConfig):
    name: str = "simsiam"
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 2048
    proj_layers: int = 3
    pred_hidden_dim: int = 512
    fixed_predictor_lr: bool = True
    pred_lr_scale: float = 1.0

    def validate(self, prefix: str = "method") -> None:
        for key in ("proj_hidden_dim", "proj_output_dim", "pred_hidden_dim", "proj_layers"):
            check(getattr(self, key) >= 1, f"{prefix}.{key}", getattr(self, key), "an integer >= 1")
        check(self.pred_lr_scale > 0, f"{prefix}.pred_lr_scale", self.pred_lr_scale, "a number > 0")


class SimSiam(Method):
    name = "simsiam"
    Config = SimSiamConfig

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        hp = self.hp
        # BN (no affine) on the projector output: +0.7 points in the paper's Table 4 (67.4 -> 68.1).
        self.projector = MLP(self.feature_dim, hp.proj_hidden_dim, hp.proj_output_dim, num_layers=hp.proj_layers,
                             last_bn=True)
        self.predictor = MLP(hp.proj_output_dim, hp.pred_hidden_dim, hp.proj_output_dim)

    def param_groups(self) -> list[dict]:
        return self.param_groups_apart("predictor", fixed_lr=self.hp.fixed_predictor_lr,
                                       lr_scale=self.hp.pred_lr_scale)

    def step(self, views, index) -> StepOutput:
        h1, h2 = self.backbone(views[0]), self.backbone(views[1])
        z1, z2 = self.projector(h1), self.projector(h2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = (simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2
        # Collapse shows as a vanishing per-dimension std of the normalised output (paper fig. 2).
        std = (z1.detach() / z1.detach().norm(dim=1, keepdim=True).clamp_min(1e-12)).std(dim=0).mean()
        return StepOutput(loss, features=h1, logs={"z_std": std})
