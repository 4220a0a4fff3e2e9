"""Supervised metric learning on labelled images: one method, the loss chosen by ``method.loss``.

    for x, y in loader:                                   # labelled batch
        views = [aug(x) for _ in range(V)]                # V views of each image (SupCon: 2)
        z = head(f(views))                                # MLP head -> [N, V, D]
        loss = L(z, y)                                    # y: the class labels, shared by an image's views

``loss``:
  * ``supcon``: supervised contrastive L_out (Khosla et al. 2020), T = 0.1; positives are the other
    views of the anchor's class.
  * ``contrastive`` (Hadsell, Chopra & LeCun 2006), margin 1.0; ``triplet`` (Schroff et al. 2015) with
    in-batch mining (Hermans et al. 2017), margin 0.2; ``lifted_structured`` (Song et al. 2016),
    margin 1.0; ``n_pair`` (Sohn 2016), L2 penalty 0.002 on unnormalised embeddings. For these the
    N·V view embeddings are one labelled batch (an image's views are positives of each other and of
    its class), L2-normalised unless ``normalize=false``.

Labels come from the training loop (``Method.batch_labels``); an unlabelled image (label -1) stops the
run. When ``step`` is called outside the loop, without labels, every image is its own class (instance
discrimination: its views are its only positives). With data parallelism the embeddings and labels
of every rank form the batch.

Recipe (SupCon, CIFAR-10, the authors' code): ResNet-50, 2 SimCLR views, head 2048-128, T = 0.1, SGD
lr 0.5 at batch 1024 (0.125 per 256), momentum 0.9, wd 1e-4, cosine, 1000 epochs; 96.0% top-1 with
a linear classifier on the frozen encoder. The metric losses are those papers' losses on the same views
and head (they were proposed for retrieval with a pretrained encoder and P x K sampled batches;
here batches are drawn at random).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssl_zoo.distributed import gather_no_grad, gather_with_grad
from ssl_zoo.errors import DataError, check
from ssl_zoo.heads import MLP
from ssl_zoo.losses.contrastive import supcon
from ssl_zoo.losses.metric import TRIPLET_MINING, contrastive, lifted_structured, n_pair, triplet
from ssl_zoo.methods.base import Method, MethodConfig, StepOutput

LOSSES = ("supcon", "contrastive", "triplet", "lifted_structured", "n_pair")


@dataclass
class SupervisedMetricConfig(MethodConfig):
    name: str = "supervised_metric"
    loss: str = "supcon"
    proj_hidden_dim: int = 2048
    proj_output_dim: int = 128
    normalize: bool = True             # L2-normalise embeddings for the metric losses (supcon always does)
    temperature: float = 0.1           # supcon
    base_temperature: float = 0.1      # supcon: loss scaled by T / base_T (the authors' code: 0.07)
    contrastive_margin: float = 1.0
    triplet_margin: float = 0.2
    triplet_mining: str = "batch_hard"
    lifted_margin: float = 1.0
    n_pair_l2_reg: float = 0.002

    def validate(self, prefix: str = "method") -> None:
        check(self.loss in LOSSES, f"{prefix}.loss", self.loss, "one of: " + ", ".join(LOSSES))
        check(self.proj_hidden_dim >= 1, f"{prefix}.proj_hidden_dim", self.proj_hidden_dim, "an integer >= 1")
        check(self.proj_output_dim >= 1, f"{prefix}.proj_output_dim", self.proj_output_dim, "an integer >= 1")
        check(self.temperature > 0, f"{prefix}.temperature", self.temperature, "a number > 0")
        check(self.base_temperature > 0, f"{prefix}.base_temperature", self.base_temperature, "a number > 0")
        for key in ("contrastive_margin", "triplet_margin", "lifted_margin", "n_pair_l2_reg"):
            check(getattr(self, key) >= 0, f"{prefix}.{key}", getattr(self, key), "a number >= 0")
        check(self.triplet_mining in TRIPLET_MINING, f"{prefix}.triplet_mining", self.triplet_mining,
              "one of: " + ", ".join(TRIPLET_MINING))


class SupervisedMetric(Method):
    name = "supervised_metric"
    Config = SupervisedMetricConfig

    def __init__(self, cfg, num_train: int | None = None):
        super().__init__(cfg, num_train)
        hp = self.hp
        self.projector = MLP(self.feature_dim, hp.proj_hidden_dim, hp.proj_output_dim, num_layers=2)

    def labels_of(self, index: torch.Tensor) -> torch.Tensor:
        labels = self.batch_labels
        if labels is None:  # called outside the training loop: every image its own class
            return index
        if bool((labels < 0).any()):
            raise DataError("method=supervised_metric needs a label for every training image, but this batch "
                            "has unlabelled ones (-1): choose a labelled data set")
        return labels.to(index.device)

    def metric_loss(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The configured loss of embeddings z [N, V, D] with class labels [N]."""
        hp = self.hp
        if hp.loss == "supcon":
            return supcon(z, labels, hp.temperature, hp.base_temperature)
        n, v, d = z.shape
        flat = z.transpose(0, 1).reshape(n * v, d)  # view-major: row k·N + i is view k of image i
        flat_labels = labels.repeat(v)
        if hp.normalize:
            flat = F.normalize(flat, dim=1)
        if hp.loss == "contrastive":
            return contrastive(flat, flat_labels, hp.contrastive_margin)
        if hp.loss == "triplet":
            return triplet(flat, flat_labels, hp.triplet_margin, hp.triplet_mining)
        if hp.loss == "lifted_structured":
            return lifted_structured(flat, flat_labels, hp.lifted_margin)
        return n_pair(flat, flat_labels, hp.n_pair_l2_reg)

    def step(self, views, index) -> StepOutput:
        labels = self.labels_of(index)
        n = views[0].shape[0]
        h = self.backbone(torch.cat(views))
        z = self.projector(h).reshape(len(views), n, -1).transpose(0, 1)    # [N, V, D]
        loss = self.metric_loss(gather_with_grad(z), gather_no_grad(labels))
        return StepOutput(loss, features=h[:n])
