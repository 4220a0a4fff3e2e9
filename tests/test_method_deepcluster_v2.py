"""DeepCluster-v2: prototypes are the k-means centroids of last epoch's embeddings, fixed for the epoch."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from conftest import tiny

from ssl_zoo.cli import compose
from ssl_zoo.memory.kmeans import kmeans
from ssl_zoo.train import train

N = 48  # 6 steps an epoch at batch 8, every image seen once an epoch


class Record(pl.Callback):
    """Memory, prototypes and assignments at the first and last batch of each epoch, and the expected
    clustering recomputed from the memory the method clustered."""

    def __init__(self):
        self.first: list[dict] = []
        self.last: list[dict] = []

    def state(self, model) -> dict:
        return {"memory": model.memory.clone(), "assignments": model.assignments.clone(),
                "prototypes": [p.weight.detach().clone() for p in model.prototypes]}

    def on_train_batch_start(self, trainer, model, batch, batch_idx):
        if batch_idx == 0:
            hp, epoch, s = model.hp, trainer.current_epoch, self.state(model)
            s["expected"] = [kmeans(s["memory"][h % 2], k, hp.kmeans_iterations,
                                    seed=model.cfg.seed + epoch * len(hp.num_prototypes) + h,
                                    backend=hp.kmeans_backend, spherical=True)
                             for h, k in enumerate(hp.num_prototypes)]
            self.first.append(s)

    def on_train_batch_end(self, trainer, model, outputs, batch, batch_idx):
        if batch_idx == N // 8 - 1:
            self.last.append(self.state(model))


def test_prototypes_are_last_epochs_centroids_and_stay_fixed_within_an_epoch(in_tmp):
    rec = Record()
    cfg = compose(tiny("deepcluster_v2", "trainer.max_steps=12", f"data.num_samples={N}", "monitor.knn=false",
                       "monitor.probe=false"))
    train(cfg, in_tmp / "run", extra_callbacks=[rec])
    assert len(rec.first) == len(rec.last) == 2
    for first, last in zip(rec.first, rec.last):
        for h, expected in enumerate(first["expected"]):
            torch.testing.assert_close(first["prototypes"][h], expected.centroids)
            assert torch.equal(first["assignments"][h], expected.assignments)
            assert (torch.bincount(expected.assignments, minlength=len(expected.centroids)) > 0).all()
            torch.testing.assert_close(first["prototypes"][h].norm(dim=1), torch.ones(len(expected.centroids)))
            assert torch.equal(first["prototypes"][h], last["prototypes"][h])  # not trained within the epoch
            assert torch.equal(first["assignments"][h], last["assignments"][h])
    # The memory the second epoch clusters is what the first epoch wrote: every image's global crops.
    assert torch.equal(rec.first[1]["memory"], rec.last[0]["memory"])
    assert (rec.last[0]["memory"] != rec.first[0]["memory"]).any(dim=2).all()
    torch.testing.assert_close(rec.last[0]["memory"].norm(dim=2), torch.ones(2, N))
