"""DeepCluster-v2 (Caron et al. 2020, *Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments*, the SwAV paper's appendix): DeepCluster with a memory of last epoch's embeddings.

    at the start of every epoch, for each head h (several clusterings of different random starts):
        centroids_h, y_h = spherical_kmeans(memory[h % 2], K_h)   # embeddings of the 2 global crops
        prototypes_h ← centroids_h                                  # fixed (not trained) during the epoch
    for x, i in loader:
        z_v = l2(g(f(crop_v(x))))                                   # all crops: 2 global + local (multi-crop)
        loss = mean_h mean_v cross_entropy(prototypes_h(z_v) / T, y_h[i])
        memory[c, i] ← z_c  for the 2 global crops c                # for the next epoch's clustering

Recipe (ImageNet, ResNet-50): 3 heads of 3000 prototypes, T = 0.1, 10 iterations of spherical k-means,
projection head 2048-2048-128 with BN, multi-crop 2x224 + 6x96, LARS with base lr 4.8 at batch 4096
(0.3 per 256), wd 1e-6, cosine schedule with warm-up, 800 epochs: 75.2% linear top-1.

Deviations: before the first epoch the memory is filled with the embeddings of the evaluation view
(the reference makes a pass over the training crops); empty clusters are split off big ones (the
reference keeps their previous centroid); a multi-rank run clusters on rank 0 and shares the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_zoo.distributed import gather_no_grad, rank
from ssl_zoo.errors import ConfigError, check
from ssl_zoo.heads import MLP
from ssl_zoo.memory.kmeans import BACKENDS, kmeans
from ssl_zoo.methods._clustering import eval_mode, from_rank0, training_set_features
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput

MEMORY_CROPS = 2  # the global crops whose embeddings are remembered and clustered


@dataclass
class DeepClusterV2Config(MethodConfig):
    name: str = "deepcluster_v2"
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 128
    num_prototypes: list[int] = field(default_factory=lambda: [3000, 3000, 3000])
    temperature: float = 0.1
    kmeans_iterations: int = 10
    kmeans_backend: str = "auto"

    def validate(self, prefix: str = "method") -> None:
        check(self.temperature > 0, f"{prefix}.temperature", self.temperature, "a number > 0")
        check(len(self.num_prototypes) >= 1 and all(k >= 2 for k in self.num_prototypes),
              f"{prefix}.num_prototypes", list(self.num_prototypes), "a non-empty list of integers >= 2")
        for key in ("proj_hidden_dim", "proj_output_dim", "kmeans_iterations"):
            check(getattr(self, key) >= 1, f"{prefix}.{key}", getattr(self, key), "an integer >= 1")
        check(self.kmeans_backend in BACKENDS, f"{prefix}.kmeans_backend", self.kmeans_backend,
              f"one of: {', '.join(BACKENDS)}")


class DeepClusterV2(Method):
    name = "deepcluster_v2"
    Config = DeepClusterV2Config

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        self.require_num_train("DeepCluster-v2 keeps one embedding and assignment per training image")
        hp = self.hp
        self.projector = MLP(self.feature_dim, hp.proj_hidden_dim, hp.proj_output_dim)
        self.prototypes = nn.ModuleList(nn.Linear(hp.proj_output_dim, k, bias=False) for k in hp.num_prototypes)
        self.prototypes.requires_grad_(False)  # set to the k-means centroids each epoch, never trained
        with torch.no_grad():
            for head in self.prototypes:
                head.weight.copy_(F.normalize(head.weight, dim=1))
        memory = F.normalize(torch.randn(MEMORY_CROPS, num_train, hp.proj_output_dim), dim=2)
        self.register_buffer("memory", memory)
        # Until the first clustering (before the first training step), image i is in cluster i mod K_h.
        self.register_buffer("assignments", torch.stack([torch.arange(num_train) % k for k in hp.num_prototypes]))
        self.register_buffer("clustered_epoch", torch.tensor(-1))

    def setup(self, stage: str) -> None:
        if stage == "fit" and max(self.hp.num_prototypes) > self.num_train:
            raise ConfigError("method.num_prototypes", list(self.hp.num_prototypes),
                              f"at most the {self.num_train} training images per head")

    def embed(self, x):
        return F.normalize(self.projector(self.backbone(x)), dim=1)

    def on_train_epoch_start(self) -> None:
        # A resumed epoch keeps the prototypes and assignments it started with (they are in the checkpoint).
        if int(self.clustered_epoch) != self.current_epoch:
            self.recluster(self.current_epoch)

    @torch.no_grad()
    def recluster(self, epoch: int) -> None:
        hp = self.hp
        if int(self.clustered_epoch) < 0:  # no epoch has written the memory yet
            with eval_mode(self):
                first = training_set_features(lambda x: self.embed(self._format(x)), self.trainer.datamodule,
                                              self.device)
            self.memory.copy_(first.unsqueeze(0).expand_as(self.memory))
        for h, (head, k) in enumerate(zip(self.prototypes, hp.num_prototypes)):
            centroids = torch.zeros_like(head.weight)
            labels = torch.zeros_like(self.assignments[h])
            if rank() == 0:
                result = kmeans(self.memory[h % MEMORY_CROPS], k, hp.kmeans_iterations,
                                seed=self.cfg.seed + epoch * len(hp.num_prototypes) + h,
                                backend=hp.kmeans_backend, spherical=True)
                centroids, labels = result.centroids.to(centroids), result.assignments.to(labels.device)
            head.weight.copy_(from_rank0(centroids))
            self.assignments[h] = from_rank0(labels)
        self.clustered_epoch.fill_(epoch)

    def step(self, views, index) -> StepOutput:
        # One backbone pass per run of same-size views (the global crops together, then the local ones).
        z, h_first, start = [], None, 0
        while start < len(views):
            end = start + 1
            while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
                end += 1
            h = self.backbone(torch.cat(views[start:end]))
            if h_first is None:
                h_first = h[: views[0].shape[0]]
            z.extend(F.normalize(self.projector(h), dim=1).chunk(end - start))
            start = end
        loss = 0.0
        for h, head in enumerate(self.prototypes):
            targets = self.assignments[h][index]
            loss = loss + torch.stack([F.cross_entropy(head(zv) / self.hp.temperature, targets) for zv in z]).mean()
        loss = loss / len(self.prototypes)
        with torch.no_grad():  # this epoch's embeddings of the global crops, for the next clustering
            rows = gather_no_grad(index)
            for c in range(MEMORY_CROPS):
                self.memory[c, rows] = gather_no_grad(z[c]).to(self.memory.dtype)
        return StepOutput(loss, features=h_first)
