"""MoCo v1 (He et al. 2019): a linear head, the queue of keys, shuffle BN with split BN on one device;
MoCo v2 shares it all with an MLP head."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import tiny

from ssl_zoo.cli import compose
from ssl_zoo.config import validate_config
from ssl_zoo.distributed import SplitBatchNorm2d
from ssl_zoo.losses.contrastive import info_nce
from ssl_zoo.methods import METHODS


def build(method: str = "moco_v1", *extra: str):
    cfg = compose(tiny(method, *extra))
    return METHODS[method](cfg, num_train=validate_config(cfg)["data"].num_samples)


def test_moco_v1_has_a_linear_head_and_split_bn_in_both_encoders():
    model = build()
    assert isinstance(model.projector, nn.Linear) and model.projector.out_features == 16
    for encoder in (model.backbone, model.key_encoder):
        splits = {m.num_splits for m in encoder.modules() if isinstance(m, SplitBatchNorm2d)}
        assert splits == {2}
    assert model.hp.temperature == 0.07 and model.key_encoder.schedule == "constant"


def test_step_contrasts_queries_with_split_bn_keys_of_a_permuted_batch_then_enqueues_them():
    torch.manual_seed(0)
    model = build().train()
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(8, 3, 16, 16, generator=g), torch.randn(8, 3, 16, 16, generator=g)
    queue = model.queue().clone()
    torch.manual_seed(7)
    out = model.step([x1, x2], torch.arange(8))
    torch.manual_seed(7)
    perm = torch.randperm(8)  # the key batch's permutation, from the same draw
    with torch.no_grad():
        q = model.projector(model.backbone(x1))
        keys = model.key_encoder(x2[perm])[torch.argsort(perm)]
        unshuffled = model.key_encoder(x2)
    torch.testing.assert_close(out.loss, info_nce(q, keys, queue, 0.07), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(keys, unshuffled)  # 2-way split BN: the permutation changes the statistics
    torch.testing.assert_close(model.queue()[:8], F.normalize(keys, dim=1), rtol=1e-5, atol=1e-6)


def test_moco_v2_is_moco_v1_with_an_mlp_head():
    model = build("moco_v2")
    assert isinstance(model, METHODS["moco_v1"])
    linears = [m for m in model.projector.modules() if isinstance(m, nn.Linear)]
    assert [lin.out_features for lin in linears] == [32, 16]
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.projector.modules())
    assert not any(isinstance(m, SplitBatchNorm2d) for m in model.backbone.modules())  # bn_splits=1
