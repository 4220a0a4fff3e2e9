"""Barlow Twins: Self-Supervised Learning via Redundancy Reduction (Zbontar et al. 2021).

    for x in loader:
        y1, y2 = t(x), t'(x)                           # BYOL's asymmetric augmentations
        z1, z2 = g(f(y1)), g(f(y2))                    # projector: 3 layers 8192, BN + ReLU, no biases
        z1, z2 = gather(z1), gather(z2)                # the global batch, with gradient
        c = bn(z1).T @ bn(z2) / N                      # cross-correlation [D, D] over the global batch
        loss = Σ_i (1 - c_ii)² + λ Σ_{i≠j} c_ij²       # λ = 0.0051

Recipe (ImageNet, ResNet-50, 73.2% linear top-1 after 1000 epochs): batch 2048, LARS with base lr
0.2 x B/256 for weights and 0.0048 x B/256 for biases and BN parameters (which get neither weight
decay nor LARS adaptation), wd 1.5e-6, 10 warm-up epochs then cosine to 1/1000, projector 8192-8192-8192.

Gradient scale: every rank computes the same global loss from the gathered embeddings, and the gather
sums their gradients over ranks, so with DDP's averaging the gradient is that of the global loss. The
reference all-reduces c in place, which autograd does not see: its gradient is 1/world_size of the
loss's (LARS's trust ratio hides most of that). Small-data recipes shrink the projector (documented in
their experiment files).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_zoo.distributed import gather_with_grad
from ssl_zoo.errors import check
from ssl_zoo.heads import MLP
from ssl_zoo.losses.negative_free import barlow_twins_terms
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput
from ssl_zoo.optim import param_groups


@dataclass
class BarlowTwinsConfig(MethodConfig):
    name: str = "barlow_twins"
    proj_hidden_dim: int = 8192
    proj_output_dim: int = 8192
    proj_layers: int = 3
    off_diagonal_weight: float = 0.0051  # λ
    bias_lr_scale: float = 0.024  # 0.0048 / 0.2: the reference's learning rate of biases and BN parameters

    def validate(self, prefix: str = "method") -> None:
        for key in ("proj_hidden_dim", "proj_output_dim", "proj_layers"):
            check(getattr(self, key) >= 1, f"{prefix}.{key}", getattr(self, key), "an integer >= 1")
        check(self.off_diagonal_weight >= 0, f"{prefix}.off_diagonal_weight", self.off_diagonal_weight,
              "a number >= 0")
        check(self.bias_lr_scale > 0, f"{prefix}.bias_lr_scale", self.bias_lr_scale, "a number > 0")


class BarlowTwins(Method):
    name = "barlow_twins"
    Config = BarlowTwinsConfig

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        hp = self.hp
        self.projector = MLP(self.feature_dim, hp.proj_hidden_dim, hp.proj_output_dim, num_layers=hp.proj_layers,
                             bias=False)

    def param_groups(self) -> list[dict]:
        groups = param_groups(self.named_parameters(), self.cfg.optimizer.weight_decay,
                              self.cfg.optimizer.get("exclude_bias_and_norm", True))
        for group in groups:
            if not group["layer_adaptation"]:  # the excluded biases and norms
                group["lr_scale"] = self.hp.bias_lr_scale
        return groups

    def step(self, views, index) -> StepOutput:
        h1 = self.backbone(views[0])
        z1, z2 = self.projector(h1), self.projector(self.backbone(views[1]))
        # The correlation's diagonal sits near 1, where bf16 keeps only ~2 decimals: float32 under autocast.
        dtype = torch.promote_types(z1.dtype, torch.float32)
        with torch.autocast(z1.device.type, enabled=False):
            z1, z2 = gather_with_grad(z1).to(dtype), gather_with_grad(z2).to(dtype)
            terms = barlow_twins_terms(z1, z2, self.hp.off_diagonal_weight)
        return StepOutput(terms["loss"], features=h1,
                          logs={"on_diagonal": terms["on_diagonal"].detach(),
                                "off_diagonal": terms["off_diagonal"].detach()})
