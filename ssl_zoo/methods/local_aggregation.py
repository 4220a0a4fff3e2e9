"""Local Aggregation: Unsupervised Learning of Visual Embeddings (Zhuang, Zhai & Yamins 2019).

    at the start of every epoch:
        y_h = kmeans(bank, K_h) for h = 1..H                 # H clusterings of the memory bank
    for x, i in loader:
        v = l2(W f(aug(x)))                                   # 128-d embedding
        B = the k nearest bank entries of v                   # background neighbours (k = 4096)
        C = {j : y_h[j] = y_h[i] for some h}                  # close neighbours
        loss = -log P(C ∩ B | v) / P(B | v),  P(A | v) ∝ Σ_{j ∈ A} exp(v·v_j / T),  T = 0.07
        bank[i] ← l2(0.5 bank[i] + 0.5 v)                     # after the loss

Recipe (ImageNet, ResNet-50): k = 4096, T = 0.07, bank momentum 0.5, k-means of 10000 clusters
repeated several times (H clusterings) every epoch, initialised from instance recognition (IR, Wu et
al. 2018) trained for 10 epochs; SGD lr 0.03, momentum 0.9, wd 1e-4, batch 128, lr / 10 at plateaus;
60.2% linear top-1 (ResNet-18: 50.1%).

Deviations: the IR start is ``warmup_epochs`` of the same loss with C = {i} (instance recognition over
the background neighbours); the sample's own bank entry is always one of its background neighbours (so
C ∩ B is never empty); before the first epoch the bank is filled with the evaluation view's embeddings;
a multi-rank run clusters on rank 0 and shares the labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_zoo.distributed import gather_no_grad, rank
from ssl_zoo.errors import ConfigError, check
from ssl_zoo.losses.clustering import local_aggregation_loss
from ssl_zoo.memory.bank import MemoryBank
from ssl_zoo.memory.kmeans import BACKENDS, kmeans
from ssl_zoo.methods._clustering import fill_from_training_set, from_rank0
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput


@dataclass
class LocalAggregationConfig(MethodConfig):
    min_views: ClassVar[int] = 1
    name: str = "local_aggregation"
    embed_dim: int = 128
    temperature: float = 0.07
    bank_momentum: float = 0.5
    background_neighbours: int = 4096
    num_clusters: list[int] = field(default_factory=lambda: [10000, 10000, 10000])
    kmeans_iterations: int = 20
    kmeans_backend: str = "auto"
    warmup_epochs: int = 0  # epochs of instance recognition (C = {i}) before clustering starts

    def validate(self, prefix: str = "method") -> None:
        check(self.temperature > 0, f"{prefix}.temperature", self.temperature, "a number > 0")
        check(0.0 <= self.bank_momentum < 1.0, f"{prefix}.bank_momentum", self.bank_momentum, "a number in [0, 1)")
        check(len(self.num_clusters) >= 1 and all(k >= 2 for k in self.num_clusters), f"{prefix}.num_clusters",
              list(self.num_clusters), "a non-empty list of integers >= 2")
        for key in ("embed_dim", "background_neighbours", "kmeans_iterations"):
            check(getattr(self, key) >= 1, f"{prefix}.{key}", getattr(self, key), "an integer >= 1")
        check(self.warmup_epochs >= 0, f"{prefix}.warmup_epochs", self.warmup_epochs, "an integer >= 0")
        check(self.kmeans_backend in BACKENDS, f"{prefix}.kmeans_backend", self.kmeans_backend,
              f"one of: {', '.join(BACKENDS)}")


class LocalAggregation(Method):
    name = "local_aggregation"
    Config = LocalAggregationConfig

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        self.require_num_train("Local Aggregation keeps a memory bank of every training image")
        hp = self.hp
        self.embedding = nn.Linear(self.feature_dim, hp.embed_dim)
        self.bank = MemoryBank(num_train, hp.embed_dim, momentum=hp.bank_momentum, num_normalisers=0)
        # Until the first clustering (before the first training step), image i is in cluster i mod K_h.
        self.register_buffer("cluster_labels", torch.stack([torch.arange(num_train) % k for k in hp.num_clusters]))
        self.register_buffer("clustered_epoch", torch.tensor(-1))

    def setup(self, stage: str) -> None:
        if stage == "fit":
            for key, value in (("num_clusters", max(self.hp.num_clusters)),
                               ("background_neighbours", self.hp.background_neighbours)):
                if value > self.num_train:
                    raise ConfigError(f"method.{key}", getattr(self.hp, key),
                                      f"at most the {self.num_train} training images")

    def embed(self, x):
        return F.normalize(self.embedding(self.backbone(x)), dim=1)

    def on_train_epoch_start(self) -> None:
        # A resumed epoch keeps the clusters it started with (they are in the checkpoint).
        if int(self.clustered_epoch) != self.current_epoch:
            self.recluster(self.current_epoch)

    @torch.no_grad()
    def recluster(self, epoch: int) -> None:
        hp, bank = self.hp, self.bank.bank
        fill_from_training_set(self, self.embed, self.bank)  # a fresh run: the current embeddings
        for h, k in enumerate(hp.num_clusters):
            labels = torch.zeros_like(self.cluster_labels[h])
            if rank() == 0:
                labels = kmeans(bank, k, hp.kmeans_iterations, seed=self.cfg.seed + epoch * len(hp.num_clusters) + h,
                                backend=hp.kmeans_backend).assignments.to(labels.device)
            self.cluster_labels[h] = from_rank0(labels)
        self.clustered_epoch.fill_(epoch)

    def neighbours(self, v, index):
        """Background neighbours [B, K] (bank indices, the sample's own entry first) and which are close."""
        bank = self.bank.all()
        with torch.no_grad():
            sims = v.detach().to(bank.dtype) @ bank.t()
            sims[torch.arange(len(index), device=sims.device), index] = float("inf")  # own entry always in B
            k = min(self.hp.background_neighbours, bank.shape[0])
            background = sims.topk(k, dim=1).indices
            if self.current_epoch < self.hp.warmup_epochs:
                close = background == index[:, None]
            else:
                labels = self.cluster_labels
                close = (labels[:, background] == labels[:, index][:, :, None]).any(dim=0)
        return background, close

    def step(self, views, index) -> StepOutput:
        h = self.backbone(views[0])
        v = F.normalize(self.embedding(h), dim=1)
        background, close = self.neighbours(v, index)
        # [B, K] in float32: at T = 0.07 the bf16 rounding of a similarity would move its logit by ~0.1.
        similarities = (v.float().unsqueeze(1) * self.bank(background).float()).sum(dim=2)
        loss = local_aggregation_loss(similarities, close, self.hp.temperature)
        self.bank.update(gather_no_grad(index), gather_no_grad(v))
        return StepOutput(loss, features=h, logs={"close_fraction": close.float().mean()})
