"""MoCo v3: An Empirical Study of Training Self-Supervised Vision Transformers (Chen, Xie & He 2021).

    for x in loader:                                  # N images per rank
        x1, x2 = aug1(x), aug2(x)                     # BYOL's asymmetric augmentations
        q1, q2 = pred(proj(f(x1))), pred(proj(f(x2)))     # projector 3-layer, predictor 2-layer, BN everywhere
        with no_grad:
            k1, k2 = proj'(f'(x1)), proj'(f'(x2))     # momentum encoder; keys gathered from every rank
        loss = ctr(q1, k2) + ctr(q2, k1)              # ctr(q, k) = 2T · CE(q·kᵀ/T, own key): no queue,
                                                      # the other keys of the global batch are the negatives
        θ' ← m θ' + (1 - m) θ,  m: 0.99 -> 1 (cosine)

ViT stability trick (section 4.2): a frozen random patch projection (``freeze_patch_embed``: the
backbone's ``patch_embed`` gets no gradient; timm ViTs have one, ResNets have none and ignore it).

Recipe (ImageNet, ViT-B/16 and ViT-S/16): AdamW lr 1.5e-4 x B/256, wd 0.1, batch 4096, 300 epochs with
40 warm-up epochs, T = 0.2, heads 4096-256; 76.7% (ViT-B) and 73.2% (ViT-S) linear top-1. ResNet-50
(the authors' code): LARS lr 0.6 (100 ep) or 0.3 (300 ep) x B/256, wd 1e-6, T = 1.0, 10 warm-up
epochs, 2-layer projector, predictor without output BN, crop area from 0.2; 68.9% / 72.8% / 74.6% at
100 / 300 / 1000 epochs. Deviations: queries are gathered (with gradient) along with the keys and the
loss is taken over the global batch, which is the authors' mean of per-rank losses; the momentum
update follows the optimizer step instead of preceding the next forward pass (the same sequence).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ssl_zoo.distributed import gather_no_grad, gather_with_grad
from ssl_zoo.errors import check
from ssl_zoo.heads import MLP
from ssl_zoo.losses.contrastive import info_nce
from ssl_zoo.memory import MomentumEncoder
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput


@dataclass
class MoCoV3Config(MethodConfig):
    name: str = "moco_v3"
    proj_hidden_dim: int = 4096
    proj_output_dim: int = 256
    proj_layers: int = 3
    pred_hidden_dim: int = 4096
    pred_last_bn: bool = True  # the ViT predictor ends with BN; the ResNet one does not
    temperature: float = 0.2
    base_momentum: float = 0.99
    final_momentum: float = 1.0
    freeze_patch_embed: bool = True

    def validate(self, prefix: str = "method") -> None:
        for key in ("proj_hidden_dim", "proj_output_dim", "pred_hidden_dim"):
            check(getattr(self, key) >= 1, f"{prefix}.{key}", getattr(self, key), "an integer >= 1")
        check(self.proj_layers >= 1, f"{prefix}.proj_layers", self.proj_layers, "an integer >= 1")
        check(self.temperature > 0, f"{prefix}.temperature", self.temperature, "a number > 0")
        check(0.0 <= self.base_momentum <= 1.0, f"{prefix}.base_momentum", self.base_momentum, "a number in [0, 1]")
        check(self.base_momentum <= self.final_momentum <= 1.0, f"{prefix}.final_momentum", self.final_momentum,
              f"a number in [method.base_momentum={self.base_momentum}, 1]")


class MoCoV3(Method):
    name = "moco_v3"
    Config = MoCoV3Config

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        hp = self.hp
        patch_embed = getattr(self.backbone, "patch_embed", None)
        if hp.freeze_patch_embed and patch_embed is not None:
            patch_embed.requires_grad_(False)  # a random projection, never trained (param groups skip it)
        self.projector = MLP(self.feature_dim, hp.proj_hidden_dim, hp.proj_output_dim, num_layers=hp.proj_layers,
                             last_bn=True, bias=False)
        self.predictor = MLP(hp.proj_output_dim, hp.pred_hidden_dim, hp.proj_output_dim, num_layers=2,
                             last_bn=hp.pred_last_bn, bias=False)
        self.momentum_encoder = MomentumEncoder(self.backbone, self.projector, base_momentum=hp.base_momentum,
                                                final_momentum=hp.final_momentum)

    def contrast(self, q, k):
        """2T · InfoNCE of this rank's queries against the keys of the global batch (He et al.'s ``ctr``)."""
        t = self.hp.temperature
        return info_nce(gather_with_grad(q), gather_no_grad(k), temperature=t) * (2 * t)

    def step(self, views, index) -> StepOutput:
        x1, x2 = views[0], views[1]
        h1, h2 = self.backbone(x1), self.backbone(x2)
        q1, q2 = self.predictor(self.projector(h1)), self.predictor(self.projector(h2))
        with torch.no_grad():
            k1, k2 = self.momentum_encoder(x1), self.momentum_encoder(x2)
        loss = self.contrast(q1, k2) + self.contrast(q2, k1)
        return StepOutput(loss, features=h1)
