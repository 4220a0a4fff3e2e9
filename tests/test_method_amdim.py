"""AMDIM (Bachman et al. 2019): global vector of one view against the feature-map locations of the other."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny

from ssl_zoo.cli import compose
from ssl_zoo.config import validate_config
from ssl_zoo.errors import ConfigError
from ssl_zoo.heads.conv_decoder import feature_map
from ssl_zoo.losses.mutual_information import local_global_jsd, local_global_nce
from ssl_zoo.methods import METHODS


def build(*extra: str):
    cfg = compose(tiny("amdim", *extra))
    typed = validate_config(cfg)
    return METHODS["amdim"](cfg, num_train=typed["data"].num_samples)


@pytest.mark.parametrize("scaled,scale", [("true", 16 ** -0.5), ("false", 1.0)])  # tiny: 16-d embeddings
@pytest.mark.parametrize("estimator,loss_fn", [("nce", local_global_nce), ("jsd", local_global_jsd)])
def test_loss_averages_both_directions_over_every_location_of_the_last_map(estimator, loss_fn, scaled, scale):
    torch.manual_seed(0)
    model = build(f"method.estimator={estimator}", f"method.scale_scores={scaled}")
    x1, x2 = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    out = model.step([x1, x2], torch.arange(8))
    with torch.no_grad():  # training mode, same batches: the same BN batch statistics
        fmap, _ = feature_map(model.backbone, x1)
        g1, l1, _ = model.embed(x1)
        g2, l2, _ = model.embed(x2)
    assert l1.shape == (8, fmap.shape[2] * fmap.shape[3], 16) and g1.shape == (8, 16)
    kw = dict(clip=20.0, penalty=0.04, scale=scale)  # AMDIM's code: scores / sqrt(D); unscaled: plain dot products
    expected = (loss_fn(g1, l2, **kw) + loss_fn(g2, l1, **kw)) / 2
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_an_unknown_estimator_names_the_choices():
    with pytest.raises(ConfigError, match="method.estimator.*nce, jsd"):
        build("method.estimator=dv")


def test_local_stage_takes_the_locals_from_an_earlier_stage_and_keeps_the_pooled_last_map_global():
    torch.manual_seed(0)
    model = build("method.local_stage=2").eval()
    b, x = model.backbone, torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        stage2 = b.layer2(b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x))))))
        fmap, pooled = feature_map(b, x, stage=2)
        _, local, h = model.embed(x)
        torch.testing.assert_close(fmap, stage2)
        torch.testing.assert_close(pooled, b(x))
        torch.testing.assert_close(h, b(x))
    assert local.shape == (4, stage2.shape[2] * stage2.shape[3], 16)
    assert model.local_head.shortcut.in_channels == stage2.shape[1]


def test_local_stage_other_than_the_last_is_refused_for_a_vit():
    with pytest.raises(ConfigError, match="method.local_stage"):
        build("backbone=vit_tiny", "backbone.patch_size=4", "method.local_stage=2")
