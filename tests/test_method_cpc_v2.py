"""CPC v2 (Hénaff et al. 2019): the patch grid, the row-causal context network, the layer-normed patch
encoder and the evaluated representation."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from conftest import tiny

from ssl_zoo.cli import compose
from ssl_zoo.config import validate_config
from ssl_zoo.errors import ConfigError
from ssl_zoo.heads.masked_context import MaskedContextNetwork
from ssl_zoo.losses.mutual_information import cpc_info_nce
from ssl_zoo.methods import METHODS
from ssl_zoo.methods.cpc_v2 import patch_grid


def build(*extra: str):
    cfg = compose(tiny("cpc_v2", *extra))
    typed = validate_config(cfg)
    return METHODS["cpc_v2"](cfg, num_train=typed["data"].num_samples)


def test_patch_grid_cuts_overlapping_patches_at_an_equal_stride():
    x = torch.randn(2, 3, 16, 16)
    p = patch_grid(x, 3, 8)  # 50% overlap: stride 4
    assert p.shape == (2, 3, 3, 3, 8, 8)
    for i in range(3):
        for j in range(3):
            assert torch.equal(p[:, i, j], x[:, :, 4 * i: 4 * i + 8, 4 * j: 4 * j + 8])


def test_context_at_a_row_never_sees_the_rows_below():
    torch.manual_seed(0)
    net = MaskedContextNetwork(6, 8, num_blocks=3)
    z = torch.randn(2, 6, 5, 5, requires_grad=True)
    c = net(z)
    for row in range(5):
        (grad,) = torch.autograd.grad(c[:, :, row].sum(), z, retain_graph=True)
        assert grad[:, :, row + 1:].abs().sum() == 0          # rows below: no influence
        assert grad[:, :, : row + 1].abs().sum() > 0          # rows above and its own: some


def test_patch_encoder_has_no_batch_statistics_and_forward_is_the_grid_mean():
    torch.manual_seed(0)
    model = build()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    model.eval()
    x = torch.randn(4, 3, 16, 16)
    latents = model.latents(x)
    assert latents.shape == (4, 3, 3, model.feature_dim)
    torch.testing.assert_close(model(x), latents.mean(dim=(1, 2)))
    # Without batch norm a patch's latent does not depend on the rest of the batch, even in training mode.
    model.train()
    torch.testing.assert_close(model.latents(x)[:1], model.latents(x[:1]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("overrides,key", [
    (["method.grid_size=4"], "method.grid_size"),                 # 16 px: 4 + 1 does not divide 16
    (["method.patch_size=7"], "method.patch_size"),               # (16 - 7) is not a multiple of 2
    (["method.prediction_steps=3"], "method.prediction_steps"),   # a 3-row grid has 2 rows ahead at most
    (["method.directions=2"], "method.directions"),
])
def test_grid_settings_that_cannot_work_name_their_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        build(*overrides)


def test_four_directions_each_have_a_loss_and_all_learn():
    torch.manual_seed(0)
    model = build()
    out = model.step([torch.randn(4, 3, 16, 16)], torch.arange(4))
    assert set(out.logs) == {f"loss_dir{d}" for d in range(4)}
    out.loss.backward()
    for d in range(4):
        assert model.predictors[d].weight.grad.abs().sum() > 0
        assert model.context[d].inp.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("extra,target_dim,scale", [
    ([], 16, 0.1),                                              # the tiny settings' 16-d targets
    (["method.target_dim=0", "method.emb_scale=1"], None, 1.0),  # CPC v1: the latents themselves
])
def test_each_direction_scores_scaled_predictions_against_its_targets(extra, target_dim, scale):
    torch.manual_seed(0)
    model = build("method.directions=1", *extra)
    x = torch.randn(4, 3, 16, 16)
    out = model.step([x], torch.arange(4))
    with torch.no_grad():
        z = model.latents(x)
        dim = target_dim or model.feature_dim
        # the paper's appendix: targets = 1x1 conv of the latents (or the latents themselves, CPC v1)
        t = model.targets[0](z.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        assert t.shape == (4, 3, 3, dim)
        if target_dim is None:
            torch.testing.assert_close(t, z)
        preds = model.predictors[0](model.context[0](z.permute(0, 3, 1, 2))).reshape(4, 2, dim, 3, 3)
        preds = preds.permute(1, 0, 3, 4, 2) * scale
        expected = cpc_info_nce(list(preds), t, 1)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_papers_recipe_predicts_three_rows_ahead_only():
    cfg = compose(["method=cpc_v2"])
    hp = validate_config(cfg)["method"]
    assert (hp.first_step, hp.prediction_steps, hp.target_dim, hp.emb_scale) == (3, 3, 64, 0.1)
    with pytest.raises(ConfigError, match="method.prediction_steps"):
        build("method.first_step=3", "method.prediction_steps=3")  # a 3-row grid has no row 3 ahead
