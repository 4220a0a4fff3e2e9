"""Local Aggregation: background neighbours from the bank, close neighbours from repeated k-means."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from conftest import tiny

from ssl_zoo.cli import compose
from ssl_zoo.config import validate_config
from ssl_zoo.memory.kmeans import kmeans
from ssl_zoo.methods import METHODS

N = 32


def build(*extra: str):
    cfg = compose(tiny("local_aggregation", *extra))
    validate_config(cfg)
    model = METHODS["local_aggregation"](cfg, num_train=N)
    g = torch.Generator().manual_seed(0)
    model.bank.bank.copy_(F.normalize(torch.randn(N, model.hp.embed_dim, generator=g), dim=1))
    return model


def test_reclustering_runs_each_kmeans_of_the_bank_with_its_own_seed():
    model = build()
    model.bank.filled.fill_(True)  # the bank is already filled: no pass over the data set
    model.recluster(1)
    hp, heads = model.hp, len(model.hp.num_clusters)
    assert int(model.clustered_epoch) == 1
    for h, k in enumerate(hp.num_clusters):
        expected = kmeans(model.bank.bank, k, hp.kmeans_iterations, seed=model.cfg.seed + heads + h,
                          backend=hp.kmeans_backend)
        assert torch.equal(model.cluster_labels[h], expected.assignments)


def test_background_holds_the_nearest_bank_entries_and_close_ones_share_a_cluster_in_some_clustering():
    model = build("method.background_neighbours=6")
    g = torch.Generator().manual_seed(1)
    model.cluster_labels.copy_(torch.stack([torch.randint(0, 4, (N,), generator=g),
                                            torch.randint(0, 6, (N,), generator=g)]))
    index = torch.tensor([3, 17, 30])
    v = F.normalize(torch.randn(3, model.hp.embed_dim, generator=g), dim=1)
    background, close = model.neighbours(v, index)
    bank = model.bank.bank
    for row, i in enumerate(index.tolist()):
        chosen = background[row].tolist()
        assert chosen[0] == i  # the sample's own entry, always a background neighbour
        sims = [(float(v[row] @ bank[j]), j) for j in range(N) if j != i]
        assert sorted(chosen[1:]) == sorted(j for _, j in sorted(sims, reverse=True)[:5])
        for col, j in enumerate(chosen):
            same = any(int(model.cluster_labels[h, j]) == int(model.cluster_labels[h, i]) for h in range(2))
            assert bool(close[row, col]) == same


def test_warmup_is_instance_recognition_and_the_bank_moves_towards_the_batch():
    model = build("method.warmup_epochs=1")
    index = torch.tensor([0, 5, 9, 12, 20, 21, 22, 31])
    v = F.normalize(torch.randn(8, model.hp.embed_dim), dim=1)
    _, close = model.neighbours(v, index)
    assert close[:, 0].all() and not close[:, 1:].any()  # C = {i} while warming up
    before = model.bank.bank.clone()
    views = [torch.randn(8, 3, 16, 16)]
    out = model.step(views, index)
    assert torch.isfinite(out.loss)
    changed = (model.bank.bank != before).any(dim=1)
    assert changed[index].all() and changed.sum() == len(index)
