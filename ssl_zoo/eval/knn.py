"""Weighted k-nearest-neighbour classification on embeddings (Wu et al. 2018, InstDisc, sec. 3.4).

Each test sample's k nearest training samples by cosine similarity s vote for their class with
weight exp(s / T); the class with the largest summed weight wins. Defaults k=200, T=0.1 as the
InstDisc paper; the evaluation CLI reports k in {10, 20, 100, 200}.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_zoo.errors import check


@torch.no_grad()
def knn_scores(train_features: Tensor, train_labels: Tensor, test_features: Tensor, num_classes: int,
               k: int = 200, temperature: float = 0.1, chunk_size: int = 1024) -> Tensor:
    """Class scores [N_test, num_classes] of the weighted kNN vote.

    ``train_features`` [N_train, D], ``train_labels`` [N_train] (int, >= 0), ``test_features`` [N_test, D].
    Features are L2-normalised here; similarities are computed in chunks of ``chunk_size`` test rows so
    memory stays O(chunk x N_train).
    """
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    k = min(k, train.shape[0])
    scores = []
    for start in range(0, test.shape[0], chunk_size):
        sim = test[start:start + chunk_size] @ train.T                     # [c, N_train]
        top_sim, top_idx = sim.topk(k, dim=1)                               # [c, k]
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[top_idx].long(), weights)
        scores.append(votes)
    return torch.cat(scores) if scores else torch.zeros(0, num_classes)


def knn_accuracy(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                 num_classes: int, k: int = 200, temperature: float = 0.1, topk: tuple[int, ...] = (1, 5)
                 ) -> dict[int, float]:
    """Top-k accuracies in percent of the weighted kNN classifier, e.g. ``{1: 91.2, 5: 99.6}``."""
    scores = knn_scores(train_features, train_labels, test_features, num_classes, k, temperature)
    ranked = scores.argsort(dim=1, descending=True)
    correct = ranked == test_labels.to(ranked.device).view(-1, 1)
    return {t: 100.0 * correct[:, : min(t, num_classes)].any(dim=1).float().mean().item() for t in topk}


@dataclass
class KNNConfig:
    """``ssl-zoo eval knn``: weighted kNN at every ``k`` with temperature ``temperature``.

    ``match_monitor=true`` replaces ``k`` and ``temperature`` by the training run's ``monitor.knn_k`` and
    ``monitor.knn_temperature``; with the default ``subsets=monitor`` it then recomputes the figure the
    kNN monitor logged for that checkpoint.
    """

    k: list[int] = field(default_factory=lambda: [10, 20, 100, 200])
    temperature: float = 0.07
    match_monitor: bool = False
    subsets: str = "monitor"

    def validate(self, prefix: str = "eval") -> None:
        from ssl_zoo.eval.linear import check_subsets

        check(len(self.k) >= 1 and all(k >= 1 for k in self.k), f"{prefix}.k", list(self.k),
              "a list of integers >= 1, e.g. [10, 20, 100, 200]")
        check(self.temperature > 0, f"{prefix}.temperature", self.temperature, "a number > 0")
        check_subsets(self.subsets, prefix)
