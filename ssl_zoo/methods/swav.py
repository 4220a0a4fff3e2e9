"""SwAV: Unsupervised Learning of Visual Features by Contrasting Cluster Assignments (Caron et al. 2020).

    for x in loader:                                   # multi-crop: 2 global + V-2 local crops
        z = normalize(g(f(crops)))                     # one backbone pass per crop size, head on all
        scores = z @ C.T                               # C: K prototypes, rows L2-normalised each step
        for i in global crops:                         # codes only from the global crops
            q_i = sinkhorn([queue_i @ C.T; scores_i])[-B:]   # ε=0.05, 3 iterations, sums over all ranks
        loss = mean_i mean_{v≠i} CE(q_i, softmax(scores_v / T))   # swapped prediction
        queue_i ← z_i                                  # from queue_start_epoch; used once full
        prototypes get no gradient for the first freeze_prototypes_steps steps

Recipe (ImageNet, ResNet-50, 75.3% linear top-1 after 800 epochs): 2x224 + 6x96 crops, batch 4096,
LARS (on every parameter) lr 4.8 (0.3 x B/256) with 10 warm-up epochs from 0.3 and cosine to 0.0048,
wd 1e-6, T=0.1, K=3000 prototypes, head 2048-128, ε=0.05, 3 Sinkhorn iterations, prototypes frozen for
313 iterations (one ImageNet epoch at batch 4096; its batch-256 script freezes for 5005, again one epoch:
about one epoch of the data at hand is the intent). Small batches (256) add a queue of 3840 embeddings
from epoch 15.

Deviations: the queue holds the embeddings of every rank (gathered, identical on all ranks, so rank 0's
checkpoint restores it whole); each rank feeds an interleaved slice of it to the distributed Sinkhorn,
whose all-reduced sums then cover each queued embedding once, as the reference's per-rank queues do.
One prototype head (the reference allows several). ``prototypes_lr_scale`` (1, the paper's, by default)
multiplies the prototypes' learning rate, so that on short schedules they can follow the embeddings as a
predictor follows BYOL's (not part of the paper's recipe).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_zoo.distributed import all_reduce_sum, gather_no_grad, is_distributed, rank, world_size
from ssl_zoo.errors import ConfigError, check
from ssl_zoo.heads import MLP
from ssl_zoo.heads.prototypes import Prototypes
from ssl_zoo.losses.clustering import sinkhorn, swav_loss
from ssl_zoo.memory import FeatureQueue
from ssl_zoo.methods._multicrop import check_backbone_takes_every_crop_size, encode_by_resolution, num_global_views
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput


@torch.no_grad()
def swav_codes(scores: Tensor, queued: Tensor | None, prototypes: Tensor, epsilon: float,
               iterations: int) -> Tensor:
    """Codes [B, K] of this rank's ``scores`` [B, K], with Sinkhorn-Knopp over the global batch.

    ``queued``: None or the queue [Q, D] of past embeddings, the same on every rank; this rank scores
    its interleaved share (rows rank, rank + W, ...) against ``prototypes`` [K, D], so that over all
    ranks every queued row takes part once. The codes of the queued rows are dropped.
    """
    batch = scores.shape[0]
    if queued is not None:
        share = queued[rank()::world_size()].to(scores.dtype)
        scores = torch.cat([share @ prototypes.t().to(scores.dtype), scores])
    reduce = all_reduce_sum if is_distributed() else None
    return sinkhorn(scores, epsilon, iterations, all_reduce=reduce)[-batch:]


@dataclass
class SwAVConfig(MethodConfig):
    name: str = "swav"
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 128
    num_prototypes: int = 3000
    temperature: float = 0.1
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    queue_size: int = 0  # embeddings per global crop over all ranks; 0: no queue (large batches)
    queue_start_epoch: int = 15
    freeze_prototypes_steps: int = 313
    prototypes_lr_scale: float = 1.0  # the prototypes' lr relative to the rest (1: the paper's)

    def validate(self, prefix: str = "method") -> None:
        for key in ("proj_hidden_dim", "proj_output_dim", "num_prototypes", "sinkhorn_iterations"):
            check(getattr(self, key) >= 1, f"{prefix}.{key}", getattr(self, key), "an integer >= 1")
        check(self.temperature > 0, f"{prefix}.temperature", self.temperature, "a number > 0")
        check(self.sinkhorn_epsilon > 0, f"{prefix}.sinkhorn_epsilon", self.sinkhorn_epsilon, "a number > 0")
        check(self.queue_size >= 0, f"{prefix}.queue_size", self.queue_size, "0 (no queue) or an integer >= 1")
        check(self.queue_start_epoch >= 0, f"{prefix}.queue_start_epoch", self.queue_start_epoch, "an integer >= 0")
        check(self.freeze_prototypes_steps >= 0, f"{prefix}.freeze_prototypes_steps", self.freeze_prototypes_steps,
              "an integer >= 0")
        check(self.prototypes_lr_scale > 0, f"{prefix}.prototypes_lr_scale", self.prototypes_lr_scale, "a number > 0")


class SwAV(Method):
    name = "swav"
    Config = SwAVConfig

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        hp = self.hp
        check_backbone_takes_every_crop_size(self.backbone, cfg.augmentation)
        self.num_code_views = num_global_views(cfg.augmentation)
        self.projector = MLP(self.feature_dim, hp.proj_hidden_dim, hp.proj_output_dim)
        self.prototypes = Prototypes(hp.proj_output_dim, hp.num_prototypes)
        self.queues = torch.nn.ModuleList(
            [FeatureQueue(hp.queue_size, hp.proj_output_dim) for _ in range(self.num_code_views)]
            if hp.queue_size else [])

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hp.queue_size:
            trainer = self.trainer
            global_batch = self.cfg.data.batch_size * trainer.num_devices * trainer.num_nodes
            if self.hp.queue_size % global_batch:
                raise ConfigError("method.queue_size", self.hp.queue_size,
                                  f"0 or a multiple of the global batch {global_batch}",
                                  "so a batch never wraps the queue")

    def param_groups(self) -> list[dict]:
        return self.param_groups_apart("prototypes", lr_scale=self.hp.prototypes_lr_scale)

    def on_before_optimizer_step(self, optimizer) -> None:
        # The reference drops the prototypes' gradient early in training: a fresh assignment is too
        # noisy to move them.
        if self.global_step < self.hp.freeze_prototypes_steps:
            self.prototypes.weight.grad = None

    def _queue_in_use(self, i: int) -> bool:
        return bool(self.queues) and int(self.queues[i].filled) == self.queues[i].size

    def step(self, views, index) -> StepOutput:
        hp = self.hp
        self.prototypes.normalize_()
        batch = views[0].shape[0]
        h = encode_by_resolution(self.backbone, views)
        z = F.normalize(self.projector(torch.cat(h)), dim=1)
        scores = self.prototypes(z).split(batch)
        embeddings = z.detach().split(batch)
        codes, queue_used = [], self._queue_in_use(0)
        for i in range(self.num_code_views):
            queued = self.queues[i]() if self._queue_in_use(i) else None
            codes.append(swav_codes(scores[i].detach(), queued, self.prototypes.weight.detach(),
                                    hp.sinkhorn_epsilon, hp.sinkhorn_iterations))
        if self.queues and self.current_epoch >= hp.queue_start_epoch:
            for i in range(self.num_code_views):  # after every code used the queue as it was
                self.queues[i].enqueue(gather_no_grad(embeddings[i]))
        loss = swav_loss(list(scores), codes, hp.temperature)
        logs = {"queue_in_use": float(queue_used)} if self.queues else {}
        return StepOutput(loss, features=h[0], logs=logs)
