"""DeepCluster: every epoch starts from k-means pseudo-labels of the current features and a fresh classifier."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from conftest import tiny

from ssl_zoo.cli import compose
from ssl_zoo.memory.kmeans import kmeans, pca_whiten
from ssl_zoo.methods._clustering import eval_mode, training_set_features
from ssl_zoo.train import train

N = 48  # 6 steps an epoch at batch 8: 10 steps see two clusterings


class EpochStart(pl.Callback):
    """What the method holds at the first batch of each epoch, with an independent re-clustering."""

    def __init__(self):
        self.seen: list[dict] = []

    def on_train_batch_start(self, trainer, model, batch, batch_idx):
        if batch_idx != 0:
            return
        hp = model.hp
        with eval_mode(model):
            features = training_set_features(model.backbone, trainer.datamodule, model.device)
        expected = kmeans(pca_whiten(features, hp.pca_dim), hp.num_clusters, hp.kmeans_iterations,
                          seed=model.cfg.seed + trainer.current_epoch, backend=hp.kmeans_backend)
        optimizer = trainer.optimizers[0]
        self.seen.append({
            "epoch": trainer.current_epoch, "clustered_epoch": int(model.clustered_epoch),
            "labels": model.pseudo_labels.clone(), "expected": expected.assignments,
            "weights": model.cluster_weights.clone(), "bias": model.classifier.bias.detach().clone(),
            "weight_std": float(model.classifier.weight.detach().std()),
            "classifier_state": [optimizer.state.get(p) for p in model.classifier.parameters()],
        })


def test_each_epoch_reclusters_and_restarts_the_classifier(in_tmp):
    probe = EpochStart()
    cfg = compose(tiny("deepcluster", "trainer.max_steps=10", f"data.num_samples={N}", "monitor.knn=false",
                       "monitor.probe=false"))
    train(cfg, in_tmp / "run", extra_callbacks=[probe])
    assert [s["epoch"] for s in probe.seen] == [0, 1]
    for s in probe.seen:
        k = len(s["weights"])
        assert s["clustered_epoch"] == s["epoch"]
        assert s["labels"].shape == (N,)
        assert torch.equal(s["labels"], s["expected"])  # k-means of this epoch's PCA-whitened features
        sizes = torch.bincount(s["labels"], minlength=k)
        assert (sizes > 0).all()
        # Inverse-size weights: every cluster carries the same total weight N / k over the data set.
        per_cluster = torch.bincount(s["labels"], weights=s["weights"][s["labels"]], minlength=k)
        torch.testing.assert_close(per_cluster, torch.full((k,), N / k, dtype=per_cluster.dtype))
        # A fresh top layer, N(0, 0.01^2) weights and zero biases, with no optimizer state of its own.
        assert torch.equal(s["bias"], torch.zeros_like(s["bias"]))
        assert 0.003 < s["weight_std"] < 0.03
        assert all(not state for state in s["classifier_state"])
