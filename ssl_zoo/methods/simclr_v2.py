"""SimCLR v2: Big Self-Supervised Models are Strong Semi-Supervised Learners (Chen, Kornblith, Swersky,
Norouzi & Hinton 2020b).

    for x in loader:                                  # N images
        h = f(cat(aug(x), aug(x)))                    # one encoder pass over the 2N views
        z1, z2 = g(h).chunk(2)                        # 3-layer projector, BN on every layer
        loss = nt_xent(z1, z2, T, extra_negatives=queue)   # + MoCo-style memory of negatives (optional)
        with no_grad: queue.enqueue(normalize(g'(f'(views))))   # keys of an EMA copy, after the loss

What changes from SimCLR v1 (:mod:`ssl_zoo.methods.simclr`): a deeper projection head (3 layers,
hidden width = the backbone's, output 128, BN on the output as well), and representations for
fine-tuning taken from the head's first layer (``eval_features=proj1``: Linear -> BN -> ReLU on
top of the backbone; the default ``backbone`` keeps the encoder's pooled features, which is what a
linear probe reads). The paper's optional memory (``queue_size > 0``) keeps the keys of a momentum
(EMA, m = 0.999) copy of encoder and head, as MoCo, as extra negatives; it was worth ~1% in the paper.

Recipe (ImageNet): LARS, base lr 0.3 x B/256 (0.1 x sqrt(B) in the paper's large-batch runs), wd 1e-6,
batch 4096, 800 epochs, 10 warm-up epochs, T = 0.1; SimCLR v1's augmentations. Deviation: the hidden
width is a field (``proj_hidden_dim``, default 2048 = ResNet-50's width), and the memory is off by
default, as the public code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_zoo.distributed import gather_no_grad, gather_with_grad
from ssl_zoo.errors import ConfigError, check
from ssl_zoo.heads import MLP
from ssl_zoo.losses.contrastive import nt_xent
from ssl_zoo.memory import FeatureQueue, MomentumEncoder
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput

EVAL_FEATURES = ("backbone", "proj1")


@dataclass
class SimCLRV2Config(MethodConfig):
    name: str = "simclr_v2"
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 128
    proj_layers: int = 3
    temperature: float = 0.1
    eval_features: str = "backbone"  # backbone | proj1 (the head's first layer, the paper's fine-tuning input)
    queue_size: int = 0  # 0: no memory of negatives
    queue_momentum: float = 0.999
    global_negatives: bool = True

    def validate(self, prefix: str = "method") -> None:
        check(self.temperature > 0, f"{prefix}.temperature", self.temperature, "a number > 0")
        for key in ("proj_hidden_dim", "proj_output_dim"):
            check(getattr(self, key) >= 1, f"{prefix}.{key}", getattr(self, key), "an integer >= 1")
        check(self.proj_layers >= 2, f"{prefix}.proj_layers", self.proj_layers, "an integer >= 2",
              "the first layer is a hidden layer that eval_features=proj1 reads")
        check(self.eval_features in EVAL_FEATURES, f"{prefix}.eval_features", self.eval_features,
              "one of: " + ", ".join(EVAL_FEATURES))
        check(self.queue_size >= 0, f"{prefix}.queue_size", self.queue_size, "an integer >= 0 (0: no queue)")
        check(0.0 <= self.queue_momentum <= 1.0, f"{prefix}.queue_momentum", self.queue_momentum, "a number in [0, 1]")


class SimCLRV2(Method):
    name = "simclr_v2"
    Config = SimCLRV2Config

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        hp = self.hp
        self.projector = MLP(self.feature_dim, hp.proj_hidden_dim, hp.proj_output_dim, num_layers=hp.proj_layers,
                             last_bn=True)
        self.backbone_dim = self.feature_dim
        if hp.eval_features == "proj1":
            self.feature_dim = hp.proj_hidden_dim  # what the probe, kNN and export see
        if hp.queue_size:
            self.key_encoder = MomentumEncoder(self.backbone, self.projector, base_momentum=hp.queue_momentum,
                                               final_momentum=hp.queue_momentum, schedule="constant")
            self.queue = FeatureQueue(hp.queue_size, hp.proj_output_dim)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hp.queue_size:
            keys_per_step = 2 * self.cfg.data.batch_size * self.trainer.world_size
            if self.hp.queue_size % keys_per_step:
                raise ConfigError("method.queue_size", self.hp.queue_size,
                                  f"0 or a multiple of the keys enqueued per step (2 views x global batch = "
                                  f"{keys_per_step})")

    def first_layer(self, h):
        """The projection head's first layer (Linear -> BN -> ReLU): SimCLR v2's fine-tuning input."""
        return self.projector.net[:3](h)

    def forward(self, images):
        h = self.backbone(self._format(images))
        return self.first_layer(h) if self.hp.eval_features == "proj1" else h

    def step(self, views, index) -> StepOutput:
        x = torch.cat([views[0], views[1]])
        h = self.backbone(x)
        hidden = self.first_layer(h)
        z1, z2 = self.projector.net[3:](hidden).chunk(2)
        if self.hp.global_negatives:
            z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
        queue = self.queue() if self.hp.queue_size else None
        loss = nt_xent(z1, z2, self.hp.temperature, extra_negatives=queue)
        if self.hp.queue_size:
            with torch.no_grad():
                self.queue.enqueue(gather_no_grad(F.normalize(self.key_encoder(x), dim=1)))
        n = views[0].shape[0]
        features = hidden[:n] if self.hp.eval_features == "proj1" else h[:n]
        return StepOutput(loss, features=features)
