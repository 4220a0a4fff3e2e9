"""ClusterFit: Improving Generalization of Visual Representations (Yan et al. 2020).

    f = [N_pre(x_i) for every training image]     # a pre-trained network (any pretext), frozen
    y = kmeans(l2(f), K)                           # once, before training
    for x, i in loader:                            # a fresh network N_cf, trained from scratch
        loss = cross_entropy(g(N_cf(aug(x))), y[i])

Recipe (ImageNet): N_pre is a self-supervised ResNet-50 (Jigsaw or RotNet), its pooled res5 features
clustered by k-means into K clusters (the paper sweeps K; 16000 RotNet clusters for ImageNet-1k); N_cf a
ResNet-50 trained on the cluster ids like a supervised classifier (supervised ImageNet crops, SGD
momentum 0.9, wd 1e-4, step schedule), which transfers better than its teacher.

Here the teacher is any ssl_zoo checkpoint (``method.teacher_ckpt``): its method is rebuilt from the
config stored in it and its backbone weights are loaded; its features are those of the evaluation view
of this run's training images. ``teacher_ckpt=random`` clusters the features of a randomly initialised
backbone of this run's architecture instead (one round of DeepCluster; Caron et al. 2018 show such
features already carry signal). Deviation: features are L2-normalised before k-means (optionally PCA-
whitened first, ``pca_dim``); a multi-rank run clusters on rank 0 and shares the cluster ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf

from ssl_zoo.backbones import build_backbone
from ssl_zoo.checkpoint_io import safe_torch_load
from ssl_zoo.distributed import rank
from ssl_zoo.errors import CheckpointError, ConfigError, check
from ssl_zoo.memory.kmeans import BACKENDS, kmeans, pca_whiten
from ssl_zoo.methods._clustering import from_rank0, training_set_features
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput

RANDOM_TEACHER = "random"


@dataclass
class ClusterFitConfig(MethodConfig):
    min_views: ClassVar[int] = 1
    name: str = "clusterfit"
    teacher_ckpt: str = ""  # an ssl_zoo checkpoint, or "random"
    num_clusters: int = 16000
    pca_dim: int = 0  # 0: cluster the L2-normalised features; > 0: PCA-whiten to this many dimensions first
    kmeans_iterations: int = 20
    kmeans_backend: str = "auto"

    def validate(self, prefix: str = "method") -> None:
        check(self.teacher_ckpt == RANDOM_TEACHER or (bool(self.teacher_ckpt) and Path(self.teacher_ckpt).is_file()),
              f"{prefix}.teacher_ckpt", self.teacher_ckpt,
              "the path of a pre-trained ssl_zoo checkpoint (.ckpt) to cluster the features of, or 'random'")
        check(self.num_clusters >= 2, f"{prefix}.num_clusters", self.num_clusters, "an integer >= 2")
        check(self.pca_dim >= 0, f"{prefix}.pca_dim", self.pca_dim, "an integer >= 0 (0: no PCA)")
        check(self.kmeans_iterations >= 1, f"{prefix}.kmeans_iterations", self.kmeans_iterations, "an integer >= 1")
        check(self.kmeans_backend in BACKENDS, f"{prefix}.kmeans_backend", self.kmeans_backend,
              f"one of: {', '.join(BACKENDS)}")


def load_teacher(path: str, cfg, num_train: int) -> nn.Module:
    """The method of checkpoint ``path``, rebuilt from its stored config, with its backbone's weights; in
    eval mode. Its images must have this run's channels and size."""
    from ssl_zoo.methods import METHODS

    ckpt = safe_torch_load(path)
    try:
        teacher_cfg = OmegaConf.create(ckpt["hyper_parameters"]["cfg"])
        name, state = teacher_cfg.method.name, ckpt["state_dict"]
    except (KeyError, TypeError, AttributeError):
        raise CheckpointError(f"method.teacher_ckpt={path!r} is not an ssl_zoo checkpoint (no run config in it): "
                              "give a .ckpt written by ssl-zoo train") from None
    if name not in METHODS:
        raise CheckpointError(f"method.teacher_ckpt={path!r} holds method={name}, unknown to this version")
    shape = (teacher_cfg.data.channels, teacher_cfg.data.image_size)
    if shape != (cfg.data.channels, cfg.data.image_size):
        raise ConfigError("method.teacher_ckpt", path, f"a checkpoint trained on {cfg.data.channels}-channel "
                          f"{cfg.data.image_size} px images like this run's (it has {shape[0]}-channel {shape[1]} px)")
    teacher = METHODS[name](teacher_cfg, num_train=num_train)
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    teacher.backbone.load_state_dict(backbone, strict=True)
    return teacher.eval()


class ClusterFit(Method):
    name = "clusterfit"
    Config = ClusterFitConfig

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        self.require_num_train("ClusterFit keeps one cluster id per training image")
        self.classifier = nn.Linear(self.feature_dim, self.hp.num_clusters)
        # Until the clustering at the start of training, image i is in cluster i mod K.
        self.register_buffer("cluster_ids", torch.arange(num_train) % self.hp.num_clusters)
        self.register_buffer("clustered", torch.tensor(False))

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hp.num_clusters > self.num_train:
            raise ConfigError("method.num_clusters", self.hp.num_clusters,
                              f"at most the {self.num_train} training images")

    def teacher(self) -> nn.Module:
        if self.hp.teacher_ckpt == RANDOM_TEACHER:
            with torch.random.fork_rng(devices=[]):  # seeded, and the training's random stream is untouched
                torch.manual_seed(self.cfg.seed + 1)
                backbone, _ = build_backbone(self.cfg.backbone, self.cfg.data.image_size, self.cfg.data.channels)
            return backbone.eval()
        return load_teacher(self.hp.teacher_ckpt, self.cfg, self.num_train)

    def on_train_epoch_start(self) -> None:
        if not bool(self.clustered):  # once per run; a resumed run has the ids in its checkpoint
            self.cluster_teacher_features()

    @torch.no_grad()
    def cluster_teacher_features(self) -> None:
        hp = self.hp
        teacher = self.teacher().to(self.device)
        features = training_set_features(teacher, self.trainer.datamodule, self.device)
        del teacher
        ids = torch.zeros_like(self.cluster_ids)
        if rank() == 0:
            x = pca_whiten(features, hp.pca_dim) if hp.pca_dim else F.normalize(features, dim=1)
            ids = kmeans(x, hp.num_clusters, hp.kmeans_iterations, seed=self.cfg.seed,
                         backend=hp.kmeans_backend).assignments.to(ids.device)
        self.cluster_ids.copy_(from_rank0(ids))
        self.clustered.fill_(True)

    def step(self, views, index) -> StepOutput:
        h = self.backbone(views[0])
        loss = F.cross_entropy(self.classifier(h), self.cluster_ids[index])
        return StepOutput(loss, features=h)
