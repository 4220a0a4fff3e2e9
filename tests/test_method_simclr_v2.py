"""SimCLR v2 (Chen et al. 2020b): the 3-layer head, evaluation features from its first layer, and the
optional memory of negatives from a momentum copy."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import tiny

from ssl_zoo.cli import compose
from ssl_zoo.config import validate_config
from ssl_zoo.losses.contrastive import nt_xent
from ssl_zoo.methods import METHODS


def build(*extra: str):
    cfg = compose(tiny("simclr_v2", *extra))
    return METHODS["simclr_v2"](cfg, num_train=validate_config(cfg)["data"].num_samples)


def views(n: int = 8):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(n, 3, 16, 16, generator=g), torch.randn(n, 3, 16, 16, generator=g)]


def test_projector_has_three_layers_with_bn_on_each_including_the_output():
    model = build()
    linears = [m for m in model.projector.modules() if isinstance(m, nn.Linear)]
    bns = [m for m in model.projector.modules() if isinstance(m, nn.BatchNorm1d)]
    assert [lin.out_features for lin in linears] == [32, 32, 16]
    assert len(bns) == 3 and not bns[-1].affine


def test_proj1_features_are_the_heads_first_layer_for_probe_and_evaluation():
    torch.manual_seed(0)
    model = build("method.eval_features=proj1", "method.queue_size=0")
    assert model.feature_dim == 32 and model.backbone_dim == 512
    model.train()
    out = model.step(views(), torch.arange(8))
    assert out.features.shape == (8, 32) and (out.features >= 0).all()  # after the ReLU
    model.eval()
    x = views()[0]
    with torch.no_grad():
        expected = torch.relu(model.projector.net[1](model.projector.net[0](model.backbone(x))))
        torch.testing.assert_close(model(x), expected)


def test_memory_adds_momentum_keys_as_negatives_and_enqueues_both_views_after_the_loss():
    torch.manual_seed(0)
    model = build().train()  # tiny: queue of 64
    queue_before = model.queue().clone()
    v = views()
    out = model.step(v, torch.arange(8))
    with torch.no_grad():
        z1, z2 = model.projector(model.backbone(torch.cat(v))).chunk(2)
        keys = F.normalize(model.key_encoder(torch.cat(v)), dim=1)
    torch.testing.assert_close(out.loss, nt_xent(z1, z2, 0.1, extra_negatives=queue_before), rtol=1e-5, atol=1e-6)
    assert out.loss > nt_xent(z1, z2, 0.1)
    torch.testing.assert_close(model.queue()[:16], keys, rtol=1e-5, atol=1e-6)
    assert torch.equal(model.queue()[16:], queue_before[16:])


def test_without_memory_there_is_no_queue_or_momentum_copy():
    model = build("method.queue_size=0")
    assert not hasattr(model, "queue") and not hasattr(model, "key_encoder")
