"""MoCo: Momentum Contrast for Unsupervised Visual Representation Learning (He, Fan, Wu, Xie & Girshick 2019).

    for x in loader:                                    # N images
        q = normalize(W_q f_q(aug(x)))                  # query encoder, linear 128-d head
        with no_grad:
            k = normalize(W_k f_k(shuffle_bn(aug(x))))  # momentum key encoder, shuffled BN
        loss = info_nce(q, k, queue, T)                 # positive at index 0, the queue's K keys as negatives
        queue.enqueue(gather(k))                        # after the loss
        θ_k ← m θ_k + (1 - m) θ_q                        # after the optimizer step, m = 0.999

Recipe (ImageNet, ResNet-50): SGD lr 0.03 x B/256, momentum 0.9, wd 1e-4 (on every parameter), batch
256 on 8 GPUs, 200 epochs, lr x0.1 at epochs 120 and 160; T = 0.07, K = 65536, m = 0.999 (constant);
fc layer replaced by a 128-d linear head; InstDisc-style augmentation (``augmentation=moco_v1``).
Shuffle BN (``shuffle_bn``, see :class:`ssl_zoo.distributed.ShuffleBN`): across ranks under DDP;
on one device per-sub-batch BN (``bn_splits`` emulated devices, 8 in the paper's set-up) with a
permuted key batch. ``symmetric=true`` adds the swapped term (later reproductions; not in the paper).
Deviation: the linear head sits on the pooled backbone features, which the online probe and
evaluation read (the paper evaluates the same pooled features).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F

from ssl_zoo.distributed import SHUFFLE_BN_MODES, ShuffleBN, gather_no_grad
from ssl_zoo.errors import ConfigError, check
from ssl_zoo.losses.contrastive import info_nce
from ssl_zoo.memory import FeatureQueue, MomentumEncoder
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput


@dataclass
class MoCoV1Config(MethodConfig):
    name: str = "moco_v1"
    proj_output_dim: int = 128
    temperature: float = 0.07
    queue_size: int = 65536
    momentum: float = 0.999
    final_momentum: float = 0.999
    momentum_schedule: str = "constant"
    shuffle_bn: str = "auto"  # auto | ddp | split | off
    bn_splits: int = 8  # emulated devices of split BN (shuffle_bn=split, or auto on one device)
    symmetric: bool = False

    def validate(self, prefix: str = "method") -> None:
        check(self.proj_output_dim >= 1, f"{prefix}.proj_output_dim", self.proj_output_dim, "an integer >= 1")
        check(self.temperature > 0, f"{prefix}.temperature", self.temperature, "a number > 0")
        check(self.queue_size >= 1, f"{prefix}.queue_size", self.queue_size, "an integer >= 1")
        check(0.0 <= self.momentum <= 1.0, f"{prefix}.momentum", self.momentum, "a number in [0, 1]")
        check(0.0 <= self.final_momentum <= 1.0, f"{prefix}.final_momentum", self.final_momentum, "a number in [0, 1]")
        check(self.momentum_schedule in ("constant", "cosine"), f"{prefix}.momentum_schedule",
              self.momentum_schedule, "one of: constant, cosine")
        check(self.shuffle_bn in SHUFFLE_BN_MODES, f"{prefix}.shuffle_bn", self.shuffle_bn,
              "one of: " + ", ".join(SHUFFLE_BN_MODES))
        check(self.bn_splits >= 1, f"{prefix}.bn_splits", self.bn_splits, "an integer >= 1")


class MoCoV1(Method):
    name = "moco_v1"
    Config = MoCoV1Config

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        hp = self.hp
        self.shuffle_bn = ShuffleBN(hp.shuffle_bn, hp.bn_splits)
        self.shuffle_bn.convert(self.backbone)  # before the key encoder copies it: both get split BN
        self.projector = self.build_projector()
        self.key_encoder = MomentumEncoder(self.backbone, self.projector, base_momentum=hp.momentum,
                                           final_momentum=hp.final_momentum, schedule=hp.momentum_schedule)
        self.queue = FeatureQueue(hp.queue_size, hp.proj_output_dim)

    def build_projector(self) -> nn.Module:
        """MoCo v1's head: the backbone's fc replaced by a linear layer to ``proj_output_dim``."""
        return nn.Linear(self.feature_dim, self.hp.proj_output_dim)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            trainer, data = self.trainer, self.cfg.data
            global_batch = data.batch_size * trainer.world_size
            if self.hp.queue_size % global_batch:
                raise ConfigError("method.queue_size", self.hp.queue_size,
                                  f"a multiple of the global batch {global_batch}", "so a batch never wraps the queue")
            self.shuffle_bn.setup(self, trainer.world_size, data.batch_size)

    def step(self, views, index) -> StepOutput:
        x1, x2 = views[0], views[1]
        h1 = self.backbone(x1)
        q1 = self.projector(h1)
        k2 = self.shuffle_bn(self.key_encoder, x2)
        queue = self.queue()
        loss = info_nce(q1, k2, queue, self.hp.temperature)
        keys = [k2]
        if self.hp.symmetric:
            q2, k1 = self.projector(self.backbone(x2)), self.shuffle_bn(self.key_encoder, x1)
            loss = (loss + info_nce(q2, k1, queue, self.hp.temperature)) / 2
            keys.append(k1)
        for k in keys:  # enqueue only after every loss term has used the current queue
            self.queue.enqueue(gather_no_grad(F.normalize(k, dim=1)))
        return StepOutput(loss, features=h1)
