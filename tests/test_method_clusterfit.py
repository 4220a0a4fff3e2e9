"""ClusterFit: the cluster ids are k-means of a trained checkpoint's features, computed once."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from conftest import tiny

from ssl_zoo.checkpoint_io import safe_torch_load
from ssl_zoo.cli import compose, main
from ssl_zoo.memory.kmeans import kmeans
from ssl_zoo.methods import METHODS
from ssl_zoo.methods._clustering import training_set_features
from ssl_zoo.train import train

N = 48


def test_no_teacher_checkpoint_is_a_one_line_config_error(in_tmp, capsys):
    for value in ("", "missing.ckpt"):
        assert main(["train", *tiny("clusterfit", f"method.teacher_ckpt={value}")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: method.teacher_ckpt="), err
    assert not (in_tmp / "outputs").exists()


class FirstBatches(pl.Callback):
    def __init__(self):
        self.ids: list[torch.Tensor] = []
        self.expected: torch.Tensor | None = None
        self.teacher_ckpt: str | None = None

    def on_train_batch_start(self, trainer, model, batch, batch_idx):
        if batch_idx:
            return
        self.ids.append(model.cluster_ids.clone())
        if self.expected is None:  # the teacher rebuilt independently: the whole method, strictly loaded
            ckpt = safe_torch_load(self.teacher_ckpt)
            from omegaconf import OmegaConf

            teacher = METHODS["simclr"](OmegaConf.create(ckpt["hyper_parameters"]["cfg"]), num_train=N)
            teacher.load_state_dict(ckpt["state_dict"], strict=True)
            features = training_set_features(teacher.eval(), trainer.datamodule, model.device)
            hp = model.hp
            self.expected = kmeans(F.normalize(features, dim=1), hp.num_clusters, hp.kmeans_iterations,
                                   seed=model.cfg.seed, backend=hp.kmeans_backend).assignments
            assert not torch.equal(teacher.backbone.state_dict()["conv1.weight"],
                                   model.backbone.state_dict()["conv1.weight"])  # the student is a fresh network


def test_cluster_ids_are_kmeans_of_a_simclr_checkpoints_features_and_stay_fixed(in_tmp):
    common = (f"data.num_samples={N}", "monitor.knn=false", "monitor.probe=false")
    train(compose(tiny("simclr", "trainer.max_steps=3", *common)), in_tmp / "teacher")
    probe = FirstBatches()
    probe.teacher_ckpt = str(in_tmp / "teacher" / "checkpoints" / "last.ckpt")
    cfg = compose(tiny("clusterfit", f"method.teacher_ckpt={probe.teacher_ckpt}", "trainer.max_steps=8", *common))
    train(cfg, in_tmp / "student", extra_callbacks=[probe])
    assert len(probe.ids) == 2  # two epochs, clustered once
    assert torch.equal(probe.ids[0], probe.expected) and torch.equal(probe.ids[1], probe.expected)
    assert (torch.bincount(probe.ids[0], minlength=cfg.method.num_clusters) > 0).all()
