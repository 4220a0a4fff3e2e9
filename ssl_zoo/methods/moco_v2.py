"""MoCo v2: Improved Baselines with Momentum Contrastive Learning (Chen, Fan, Girshick & He 2020),
on top of MoCo (He et al. 2019).

    for x in loader:
        q = normalize(g_q(f_q(aug(x))))                       # query encoder, 2-layer MLP head
        with no_grad:
            k = normalize(g_k(f_k(shuffle_bn(aug(x)))))       # momentum key encoder, shuffled BN
        loss = info_nce(q, k, queue, T)                       # positive at index 0
        queue.enqueue(gather(k))                              # after the loss
        θ_k ← m θ_k + (1 - m) θ_q                              # after the optimizer step

Recipe: SGD lr 0.03 x B/256, momentum 0.9, wd 1e-4, cosine schedule, 200 epochs, batch 256, T=0.2,
K=65536, m=0.999 (constant), MLP 2048-128 without BN. ``symmetric=true`` adds the swapped term
(as in later reproductions; not in the paper). On one device, ``bn_splits > 1`` emulates per-GPU BN
statistics with split BN, since shuffling a single batch does not change its BN statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_zoo.distributed import batch_shuffle, batch_unshuffle, convert_split_batchnorm, gather_no_grad
from ssl_zoo.errors import ConfigError, check
from ssl_zoo.heads import MLP
from ssl_zoo.losses.contrastive import info_nce
from ssl_zoo.memory import FeatureQueue, MomentumEncoder
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput


@dataclass
class MoCoV2Config(MethodConfig):
    name: str = "moco_v2"
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 128
    temperature: float = 0.2
    queue_size: int = 65536
    momentum: float = 0.999
    final_momentum: float = 0.999
    momentum_schedule: str = "constant"
    shuffle_bn: bool = True
    bn_splits: int = 1
    symmetric: bool = False

    def validate(self, prefix: str = "method") -> None:
        check(self.temperature > 0, f"{prefix}.temperature", self.temperature, "a number > 0")
        check(self.queue_size >= 1, f"{prefix}.queue_size", self.queue_size, "an integer >= 1")
        check(0.0 <= self.momentum <= 1.0, f"{prefix}.momentum", self.momentum, "a number in [0, 1]")
        check(0.0 <= self.final_momentum <= 1.0, f"{prefix}.final_momentum", self.final_momentum, "a number in [0, 1]")
        check(self.momentum_schedule in ("constant", "cosine"), f"{prefix}.momentum_schedule",
              self.momentum_schedule, "one of: constant, cosine")
        check(self.bn_splits >= 1, f"{prefix}.bn_splits", self.bn_splits, "an integer >= 1")


class MoCoV2(Method):
    name = "moco_v2"
    Config = MoCoV2Config

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        hp = self.hp
        if hp.bn_splits > 1:
            convert_split_batchnorm(self.backbone, hp.bn_splits)
        self.projector = MLP(self.feature_dim, hp.proj_hidden_dim, hp.proj_output_dim, hidden_bn=False)
        self.key_encoder = MomentumEncoder(self.backbone, self.projector, base_momentum=hp.momentum,
                                           final_momentum=hp.final_momentum, schedule=hp.momentum_schedule)
        self.queue = FeatureQueue(hp.queue_size, hp.proj_output_dim)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            trainer, data = self.trainer, self.cfg.data
            global_batch = data.batch_size * trainer.num_devices * trainer.num_nodes
            if self.hp.queue_size % global_batch:
                raise ConfigError("method.queue_size", self.hp.queue_size,
                                  f"a multiple of the global batch {global_batch}", "so a batch never wraps the queue")
            if self.hp.bn_splits > 1 and data.batch_size % self.hp.bn_splits:
                raise ConfigError("method.bn_splits", self.hp.bn_splits,
                                  f"a divisor of data.batch_size={data.batch_size}")

    @torch.no_grad()
    def keys(self, x):
        if self.hp.shuffle_bn:
            x, unshuffle = batch_shuffle(x)
            return batch_unshuffle(self.key_encoder(x), unshuffle)
        return self.key_encoder(x)

    def step(self, views, index) -> StepOutput:
        x1, x2 = views[0], views[1]
        h1 = self.backbone(x1)
        q1 = self.projector(h1)
        k2 = self.keys(x2)
        queue = self.queue()
        loss = info_nce(q1, k2, queue, self.hp.temperature)
        keys = [k2]
        if self.hp.symmetric:
            q2, k1 = self.projector(self.backbone(x2)), self.keys(x1)
            loss = (loss + info_nce(q2, k1, queue, self.hp.temperature)) / 2
            keys.append(k1)
        for k in keys:  # enqueue only after every loss term has used the current queue
            self.queue.enqueue(gather_no_grad(F.normalize(k, dim=1)))
        return StepOutput(loss, features=h1)
