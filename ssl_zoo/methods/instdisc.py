"""InstDisc: Unsupervised Feature Learning via Non-Parametric Instance Discrimination (Wu, Xiong, Yu & Lin 2018).

    for x, i in loader:                                     # N images, i their dataset indices
        v = normalize(W f(aug(x)))                          # one view, 128-d embedding
        # loss=nce (the paper): the bank row V[i] is the positive, m rows drawn uniformly the noise
        loss = nce(v · V[i] / T, v · V[noise] / T, log Z, n)   # Z estimated at the first step, then fixed
                                                    # (normaliser_momentum < 1: a running mean)
        # loss=softmax: the non-parametric softmax over all n rows, cross_entropy(v · Vᵀ / T, i)
        loss += λ ||v - V[i]||²                             # proximal regularisation (eq. 7)
        V[i] ← normalize(0.5 V[i] + 0.5 v)                  # after the loss, with gathered v and i

Recipe (ImageNet): ResNet, 128-d, T = 0.07, m = 4096 noise samples, bank momentum 0.5, SGD lr 0.03,
momentum 0.9, wd 1e-4, batch 256, 200 epochs with lr x0.1 at 120 and 160; crop (area 0.2-1), grey
0.2, colour jitter 0.4, flip (``augmentation=instdisc``). CIFAR-10 (the authors' code): T = 0.1,
wd 5e-4, batch 128. Deviation: ``proximal_lambda`` is 0 by default, as the authors' released code, where
the bank's momentum update is what smooths each entry's trajectory; set it to add the paper's explicit
term. ``bank_init=features`` starts the bank from the encoder's embeddings of every training image (one pass
before the first step) instead of random vectors, for short budgets: a row is refreshed once per epoch, so
with random rows the first epoch's positives are noise (the default run's budget is two epochs). With NCE
it needs ``normaliser_momentum`` below 1 (Z following the bank) and is refused otherwise: Z, estimated once
from a filled bank whose rows are all alike, is so large that no positive reaches it and the run collapses
(measured on the default budget: kNN -24 points). Under data parallelism
every rank draws its own noise and the bank is updated with the gathered features and indices, so all
ranks keep the same bank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F

from ssl_zoo.distributed import gather_no_grad
from ssl_zoo.errors import check
from ssl_zoo.memory.bank import MemoryBank, check_bank_init
from ssl_zoo.methods._clustering import fill_from_training_set
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput

LOSSES = ("nce", "softmax")


@dataclass
class InstDiscConfig(MethodConfig):
    min_views = 1
    name: str = "instdisc"
    loss: str = "nce"
    embed_dim: int = 128
    temperature: float = 0.07
    num_negatives: int = 4096  # m noise samples per anchor (loss=nce)
    bank_momentum: float = 0.5
    normaliser_momentum: float = 1.0  # 1: NCE's Z fixed at the first step (the paper); < 1: a running mean
    proximal_lambda: float = 0.0
    bank_init: str = "random"  # or "features" (loss=softmax): the encoder's embeddings before the first step
    shared_noise: bool = False  # one draw of the m noise rows for the whole batch (MemoryBank.nce_loss)

    def validate(self, prefix: str = "method") -> None:
        check(self.loss in LOSSES, f"{prefix}.loss", self.loss, "one of: " + ", ".join(LOSSES))
        check(self.embed_dim >= 1, f"{prefix}.embed_dim", self.embed_dim, "an integer >= 1")
        check(self.temperature > 0, f"{prefix}.temperature", self.temperature, "a number > 0")
        check(self.num_negatives >= 1, f"{prefix}.num_negatives", self.num_negatives, "an integer >= 1")
        check(0.0 <= self.bank_momentum < 1.0, f"{prefix}.bank_momentum", self.bank_momentum, "a number in [0, 1)")
        check(0.0 <= self.normaliser_momentum <= 1.0, f"{prefix}.normaliser_momentum", self.normaliser_momentum,
              "a number in [0, 1]")
        check(self.proximal_lambda >= 0, f"{prefix}.proximal_lambda", self.proximal_lambda, "a number >= 0")
        check_bank_init(prefix, self.bank_init, self.normaliser_momentum, uses_nce=self.loss == "nce")


class InstDisc(Method):
    name = "instdisc"
    Config = InstDiscConfig

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        self.require_num_train("the memory bank keeps one row per training image")
        hp = self.hp
        self.head = nn.Linear(self.feature_dim, hp.embed_dim)
        # the full softmax needs no normaliser (an unestimated one is NaN, which no checkpoint may hold)
        self.bank = MemoryBank(num_train, hp.embed_dim, hp.bank_momentum, num_normalisers=int(hp.loss == "nce"),
                               normaliser_momentum=hp.normaliser_momentum)

    def embed(self, x):
        return F.normalize(self.head(self.backbone(x)), dim=1)

    def on_train_start(self) -> None:
        if self.hp.bank_init == "features":
            fill_from_training_set(self, self.embed, self.bank)

    def step(self, views, index) -> StepOutput:
        hp, bank = self.hp, self.bank
        h = self.backbone(views[0])
        v = F.normalize(self.head(h), dim=1)                                        # [N, E]
        if hp.loss == "nce":
            loss = bank.nce_loss(v, index, hp.num_negatives, hp.temperature,   # own row vs m noise rows
                                 shared_noise=hp.shared_noise)
        else:
            # over all n rows; a copy, as the update below writes the bank in place before the backward
            loss = F.cross_entropy(v @ bank.all().clone().T / hp.temperature, index)
        logs = {"instance_loss": loss.detach()}
        if hp.proximal_lambda > 0:
            proximal = (v - bank(index)).pow(2).sum(dim=1).mean()
            loss = loss + hp.proximal_lambda * proximal
            logs["proximal"] = proximal.detach()
        bank.update(gather_no_grad(index), gather_no_grad(v))  # every rank writes every rank's rows
        return StepOutput(loss, features=h, logs=logs)
