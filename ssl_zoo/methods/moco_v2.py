"""MoCo v2: Improved Baselines with Momentum Contrastive Learning (Chen, Fan, Girshick & He 2020),
on top of MoCo (He et al. 2019, :mod:`ssl_zoo.methods.moco_v1`, whose machinery it reuses).

    for x in loader:
        q = normalize(g_q(f_q(aug(x))))                       # query encoder, 2-layer MLP head
        with no_grad:
            k = normalize(g_k(f_k(shuffle_bn(aug(x)))))       # momentum key encoder, shuffled BN
        loss = info_nce(q, k, queue, T)                       # positive at index 0
        queue.enqueue(gather(k))                              # after the loss
        θ_k ← m θ_k + (1 - m) θ_q                              # after the optimizer step

What changes from v1: the MLP head (2048-128, no BN), T = 0.2, blur in the augmentation, a cosine
schedule. Recipe: SGD lr 0.03 x B/256, momentum 0.9, wd 1e-4, cosine schedule, 200 epochs, batch 256,
T=0.2, K=65536, m=0.999 (constant). ``symmetric=true`` adds the swapped term (as in later
reproductions; not in the paper). Shuffle BN as in v1 (``shuffle_bn``: auto | ddp | split | off);
on one device ``bn_splits > 1`` emulates per-GPU BN statistics with split BN, since shuffling a single
batch does not change its BN statistics (1 by default here: per-batch BN, as a one-GPU run of the
official code).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ssl_zoo.errors import check
from ssl_zoo.heads import MLP
from ssl_zoo.methods.moco_v1 import MoCoV1, MoCoV1Config


@dataclass
class MoCoV2Config(MoCoV1Config):
    name: str = "moco_v2"
    proj_hidden_dim: int = 2048
    temperature: float = 0.2
    bn_splits: int = 1

    def validate(self, prefix: str = "method") -> None:
        super().validate(prefix)
        check(self.proj_hidden_dim >= 1, f"{prefix}.proj_hidden_dim", self.proj_hidden_dim, "an integer >= 1")


class MoCoV2(MoCoV1):
    name = "moco_v2"
    Config = MoCoV2Config

    def build_projector(self) -> nn.Module:
        return MLP(self.feature_dim, self.hp.proj_hidden_dim, self.hp.proj_output_dim, hidden_bn=False)
