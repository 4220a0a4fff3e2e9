"""DeepCluster: Deep Clustering for Unsupervised Learning of Visual Features (Caron et al. 2018).

    for epoch in range(E):
        f = [f_θ(x_i) for every training image]          # eval view, no augmentation
        y = kmeans(l2(whiten(pca(f, 256))), k)            # pseudo-labels, empty clusters split off big ones
        g = new linear classifier (k outputs)              # re-initialised after every clustering
        for x, i in loader (uniform over clusters):
            loss = cross_entropy(g(f_θ(aug(x))), y[i])

Recipe (ImageNet, AlexNet with Sobel filtering and BN): k = 10000, PCA to 256 dimensions with
whitening and L2 normalisation, k-means by faiss every epoch, SGD lr 0.05, momentum 0.9, wd 1e-5,
batch 256, 500 epochs, random resized crop and flip; best linear probe ~40% top-1 (conv4).

Deviations: images are sampled in the data module's order (uniform over images) and the loss is
re-weighted by the inverse size of each target's cluster instead (``reweight``), which gives every
cluster the same expected weight, as the paper's uniform-over-clusters sampling does. No Sobel filter
(grey inputs already carry one channel); features for the clustering are the backbone's (the paper's
fc7 of AlexNet); a multi-rank run clusters on rank 0 and shares the pseudo-labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_zoo.distributed import rank
from ssl_zoo.errors import ConfigError, check
from ssl_zoo.memory.kmeans import BACKENDS, kmeans, pca_whiten
from ssl_zoo.methods._clustering import (
    eval_mode,
    forget_optimizer_state,
    from_rank0,
    reset_parameters,
    training_set_features,
)
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput


@dataclass
class DeepClusterConfig(MethodConfig):
    min_views: ClassVar[int] = 1
    name: str = "deepcluster"
    num_clusters: int = 10000
    pca_dim: int = 256  # 0: no PCA nor whitening, only the L2 normalisation
    kmeans_iterations: int = 20
    kmeans_backend: str = "auto"
    reweight: bool = True  # weigh each image by 1 / |its cluster| (stands in for uniform-over-clusters sampling)

    def validate(self, prefix: str = "method") -> None:
        check(self.num_clusters >= 2, f"{prefix}.num_clusters", self.num_clusters, "an integer >= 2")
        check(self.pca_dim >= 0, f"{prefix}.pca_dim", self.pca_dim, "an integer >= 0 (0: no PCA)")
        check(self.kmeans_iterations >= 1, f"{prefix}.kmeans_iterations", self.kmeans_iterations, "an integer >= 1")
        check(self.kmeans_backend in BACKENDS, f"{prefix}.kmeans_backend", self.kmeans_backend,
              f"one of: {', '.join(BACKENDS)}")


class DeepCluster(Method):
    name = "deepcluster"
    Config = DeepClusterConfig

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        self.require_num_train("DeepCluster keeps one pseudo-label per training image")
        k = self.hp.num_clusters
        self.classifier = nn.Linear(self.feature_dim, k)
        # Until the first clustering (before the first training step), image i is in cluster i mod k.
        self.register_buffer("pseudo_labels", torch.arange(num_train) % k)
        self.register_buffer("cluster_weights", torch.ones(k))
        self.register_buffer("clustered_epoch", torch.tensor(-1))

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hp.num_clusters > self.num_train:
            raise ConfigError("method.num_clusters", self.hp.num_clusters,
                              f"at most the {self.num_train} training images")

    def on_train_epoch_start(self) -> None:
        # A resumed epoch keeps the pseudo-labels it started with (they are in the checkpoint).
        if int(self.clustered_epoch) != self.current_epoch:
            self.recluster(self.current_epoch)

    @torch.no_grad()
    def recluster(self, epoch: int) -> None:
        """New pseudo-labels from k-means on the current features, and a fresh classifier."""
        hp = self.hp
        with eval_mode(self):
            features = training_set_features(lambda x: self.backbone(self._format(x)), self.trainer.datamodule,
                                             self.device)
        labels = torch.zeros_like(self.pseudo_labels)
        if rank() == 0:
            x = pca_whiten(features, hp.pca_dim) if hp.pca_dim else F.normalize(features, dim=1)
            labels = kmeans(x, hp.num_clusters, hp.kmeans_iterations, seed=self.cfg.seed + epoch,
                            backend=hp.kmeans_backend).assignments.to(labels.device)
        labels = from_rank0(labels)
        if int(self.clustered_epoch) >= 0:  # the paper's Fig. 2b: NMI between consecutive clusterings
            from sklearn.metrics import normalized_mutual_info_score  # imported here: every CLI start imports methods

            nmi = normalized_mutual_info_score(self.pseudo_labels.cpu().numpy(), labels.cpu().numpy())
            self.log("train/nmi_to_previous_clustering", float(nmi))
        sizes = torch.bincount(labels, minlength=hp.num_clusters).clamp(min=1).float()
        self.pseudo_labels.copy_(labels)
        self.cluster_weights.copy_(len(labels) / (hp.num_clusters * sizes))
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        reset_parameters(self.classifier, generator)
        forget_optimizer_state(self.trainer.optimizers[0], self.classifier)
        self.clustered_epoch.fill_(epoch)

    def step(self, views, index) -> StepOutput:
        h = self.backbone(views[0])
        logits = self.classifier(h)
        weight = self.cluster_weights if self.hp.reweight else None
        loss = F.cross_entropy(logits, self.pseudo_labels[index], weight=weight)
        return StepOutput(loss, features=h)
