"""Offline protocols on features with a known answer: the linear probe and the few-shot label subsets."""

from __future__ import annotations

import pytest
import torch

from ssl_zoo.errors import ConfigError
from ssl_zoo.eval.fewshot import FewshotConfig, stratified_subset
from ssl_zoo.eval.knn import KNNConfig
from ssl_zoo.eval.linear import LinearConfig, linear_on_features, topk_accuracy

CPU = torch.device("cpu")


def clusters(n_per_class: int, num_classes: int, dim: int, seed: int, spread: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=g), labels


def test_linear_probe_on_separable_clusters_reaches_100_percent():
    train_x, train_y = clusters(40, 5, 16, seed=0)
    test_x, test_y = clusters(10, 5, 16, seed=1)
    cfg = LinearConfig(lr=0.1, epochs=20, batch_size=32)
    acc = linear_on_features(train_x, train_y, test_x, test_y, 5, cfg, seed=0, device=CPU)
    assert acc["top1"] == 100.0 and acc["top5"] == 100.0


def test_linear_probe_on_random_labels_is_at_chance():
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(2000, 32, generator=g), torch.randn(1000, 32, generator=g)
    train_y, test_y = torch.randint(0, 10, (2000,), generator=g), torch.randint(0, 10, (1000,), generator=g)
    acc = linear_on_features(train_x, train_y, test_x, test_y, 10, LinearConfig(epochs=5), seed=0, device=CPU)
    assert 5.0 < acc["top1"] < 15.0 and 40.0 < acc["top5"] < 60.0


def test_linear_probe_is_reproducible_with_its_seed():
    train_x, train_y = clusters(20, 4, 8, seed=0, spread=3.0)
    test_x, test_y = clusters(20, 4, 8, seed=1, spread=3.0)
    runs = [linear_on_features(train_x, train_y, test_x, test_y, 4, LinearConfig(epochs=3, batch_size=16), 7, CPU)
            for _ in range(2)]
    assert runs[0] == runs[1]


def test_topk_accuracy_counts_hits_in_the_top_k():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 1, 0])
    acc = topk_accuracy(logits, labels, topk=(1, 2, 5))
    assert acc["top1"] == pytest.approx(100 / 3) and acc["top2"] == pytest.approx(200 / 3) and acc["top5"] == 100.0


def test_fewshot_subsets_are_stratified():
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0] * 500 + [1] * 300 + [2] * 200)[order]
    for fraction, expected in ((0.01, {0: 5, 1: 3, 2: 2}), (0.1, {0: 50, 1: 30, 2: 20})):
        chosen = stratified_subset(labels, fraction, seed=0)
        counts = {c: int((labels[chosen] == c).sum()) for c in range(3)}
        assert counts == expected
        assert len(set(chosen.tolist())) == len(chosen)  # no image twice


def test_fewshot_subsets_are_reproducible_and_seeded():
    labels = torch.arange(10).repeat(100)
    a, b = stratified_subset(labels, 0.1, seed=3), stratified_subset(labels, 0.1, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, stratified_subset(labels, 0.1, seed=4))


def test_fewshot_keeps_one_image_of_a_rare_class():
    labels = torch.tensor([0] * 99 + [1])
    chosen = stratified_subset(labels, 0.01, seed=0)
    assert sorted(labels[chosen].tolist()) == [0, 1]


@pytest.mark.parametrize("cfg,key", [(KNNConfig(k=[0]), "eval.k"), (KNNConfig(subsets="all"), "eval.subsets"),
                                     (LinearConfig(lr=0), "eval.lr"), (FewshotConfig(fractions=[0.0]),
                                                                        "eval.fractions")])
def test_bad_protocol_settings_name_the_key(cfg, key):
    with pytest.raises(ConfigError, match=key):
        cfg.validate("eval")
