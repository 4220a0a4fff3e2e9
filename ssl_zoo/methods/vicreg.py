"""VICReg: Variance-Invariance-Covariance Regularization (Bardes, Ponce & LeCun 2021).

    for x in loader:
        x1, x2 = t(x), t'(x)                           # BYOL's asymmetric augmentations
        z1, z2 = h(f(x1)), h(f(x2))                    # expander: 3 layers 8192, BN + ReLU
        z1, z2 = gather(z1), gather(z2)                # the global batch, with gradient
        loss = 25 mse(z1, z2)                                          # invariance
             + 25 (mean relu(1 - std(z1)) + mean relu(1 - std(z2))) / 2   # variance, std over the batch
             + 1 (Σ_{i≠j} cov(z1)_ij² + Σ_{i≠j} cov(z2)_ij²) / D        # covariance

Recipe (ImageNet, ResNet-50, 73.2% linear top-1 after 1000 epochs): batch 2048, LARS base lr
0.2 x B/256, wd 1e-6, biases and BN parameters excluded from decay and adaptation, 10 warm-up epochs
then cosine to 1/1000, expander 8192-8192-8192, std epsilon 1e-4.

Deviation: the invariance term is the mean over the global batch (the reference takes each rank's
local mean; with equal per-rank batches DDP's gradient is the same). Small-data recipes shrink the
expander (documented in their experiment files).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_zoo.distributed import gather_with_grad
from ssl_zoo.errors import check
from ssl_zoo.heads import MLP
from ssl_zoo.losses.negative_free import vicreg_terms
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput


@dataclass
class VICRegConfig(MethodConfig):
    name: str = "vicreg"
    proj_hidden_dim: int = 8192
    proj_output_dim: int = 8192
    proj_layers: int = 3
    sim_weight: float = 25.0
    var_weight: float = 25.0
    cov_weight: float = 1.0
    eps: float = 1e-4

    def validate(self, prefix: str = "method") -> None:
        for key in ("proj_hidden_dim", "proj_output_dim", "proj_layers"):
            check(getattr(self, key) >= 1, f"{prefix}.{key}", getattr(self, key), "an integer >= 1")
        for key in ("sim_weight", "var_weight", "cov_weight"):
            check(getattr(self, key) >= 0, f"{prefix}.{key}", getattr(self, key), "a number >= 0")
        check(self.eps > 0, f"{prefix}.eps", self.eps, "a number > 0")


class VICReg(Method):
    name = "vicreg"
    Config = VICRegConfig

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        hp = self.hp
        self.projector = MLP(self.feature_dim, hp.proj_hidden_dim, hp.proj_output_dim, num_layers=hp.proj_layers)

    def step(self, views, index) -> StepOutput:
        hp = self.hp
        h1 = self.backbone(views[0])
        z1, z2 = self.projector(h1), self.projector(self.backbone(views[1]))
        # Batch statistics (std, covariance) in float32 even under autocast: bf16 rounds them to ~2 decimals.
        dtype = torch.promote_types(z1.dtype, torch.float32)
        with torch.autocast(z1.device.type, enabled=False):
            z1, z2 = gather_with_grad(z1).to(dtype), gather_with_grad(z2).to(dtype)
            terms = vicreg_terms(z1, z2, hp.sim_weight, hp.var_weight, hp.cov_weight, hp.eps)
        logs = {k: terms[k].detach() for k in ("invariance", "variance", "covariance")}
        return StepOutput(terms["loss"], features=h1, logs=logs)
