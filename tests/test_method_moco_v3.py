"""MoCo v3 (Chen, Xie & He 2021): the symmetric 2T-scaled contrastive loss against momentum keys, the
0.99 -> 1 momentum schedule and the frozen random patch projection of ViTs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny

from ssl_zoo.cli import compose, main
from ssl_zoo.config import validate_config
from ssl_zoo.memory import momentum_at
from ssl_zoo.methods import METHODS

VIT = ("backbone=vit_tiny", "backbone.patch_size=4")


def build(*extra: str):
    cfg = compose(tiny("moco_v3", *extra))
    return METHODS["moco_v3"](cfg, num_train=validate_config(cfg)["data"].num_samples)


def ctr(q, k, t: float) -> torch.Tensor:
    """2T times the cross-entropy of each query's own key among all keys, one query at a time."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    losses = [-(torch.log_softmax(k @ q[i] / t, dim=0)[i]) for i in range(len(q))]
    return 2 * t * torch.stack(losses).mean()


def test_step_loss_is_the_symmetric_2t_scaled_contrast_with_momentum_keys():
    torch.manual_seed(0)
    model = build("method.temperature=0.5").train()
    views = [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)]
    out = model.step(views, torch.arange(8))
    with torch.no_grad():
        q1, q2 = (model.predictor(model.projector(model.backbone(v))) for v in views)
        k1, k2 = (model.momentum_encoder(v) for v in views)
    expected = ctr(q1, k2, 0.5) + ctr(q2, k1, 0.5)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)


def test_momentum_goes_from_0_99_to_1_on_a_cosine():
    model = build()
    encoder = model.momentum_encoder
    assert (encoder.base_momentum, encoder.final_momentum, encoder.schedule) == (0.99, 1.0, "cosine")
    assert momentum_at(0.99, 1.0, 50, 100) == pytest.approx(0.995)


def test_vit_patch_projection_stays_frozen_and_out_of_the_optimizer():
    torch.manual_seed(0)
    model = build(*VIT).train()
    patch = model.backbone.patch_embed
    assert not any(p.requires_grad for p in patch.parameters())
    before = [p.clone() for p in patch.parameters()]
    out = model.step([torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)], torch.arange(4))
    out.loss.backward()
    assert all(p.grad is None for p in patch.parameters())
    assert model.backbone.blocks[0].attn.qkv.weight.grad is not None
    grouped = {id(p) for group in model.param_groups() for p in group["params"]}
    assert not any(id(p) in grouped for p in patch.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, patch.parameters()))


def test_patch_projection_trains_when_the_trick_is_off():
    model = build(*VIT, "method.freeze_patch_embed=false")
    assert all(p.requires_grad for p in model.backbone.patch_embed.parameters())


@pytest.mark.slow
def test_moco_v3_with_vit_tiny_runs_from_the_cli(in_tmp):
    assert main(["train", *tiny("moco_v3", *VIT)]) == 0
