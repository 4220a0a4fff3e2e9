"""MAE (He et al. 2021): random masking, the encoder on visible patches only, and a ViT-only config."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY, tiny

from ssl_zoo.cli import compose, main
from ssl_zoo.config import validate_config
from ssl_zoo.methods import METHODS
from ssl_zoo.methods.mae import random_masking, sincos_pos_embed


def build(*extra: str):
    cfg = compose(tiny("mae", *extra))
    validate_config(cfg)
    return METHODS["mae"](cfg)


def test_random_masking_keeps_a_quarter_and_restore_inverts_the_shuffle():
    torch.manual_seed(0)
    keep, mask, restore = random_masking(3, 16, 0.75)
    assert keep.shape == (3, 4) and mask.sum(dim=1).tolist() == [12, 12, 12]
    for b in range(3):
        assert set(keep[b].tolist()) == {i for i in range(16) if mask[b, i] == 0}
    shuffle = restore.argsort(dim=1)
    assert torch.equal(torch.gather(shuffle, 1, restore), torch.arange(16).expand(3, 16))


def test_sincos_embedding_matches_its_formula():
    emb = sincos_pos_embed(8, 3)
    assert emb.shape == (9, 8)
    for r in range(3):
        for c in range(3):
            for k in range(2):
                w = 1.0 / 10000 ** (k / 2)
                want = [math.sin(r * w), math.cos(r * w), math.sin(c * w), math.cos(c * w)]
                got = [emb[r * 3 + c, k], emb[r * 3 + c, 2 + k], emb[r * 3 + c, 4 + k], emb[r * 3 + c, 6 + k]]
                assert all(abs(float(g) - v) < 1e-6 for g, v in zip(got, want))


def test_encoder_with_nothing_masked_is_the_plain_vit_whatever_the_patch_order():
    model = build("method.mask_ratio=0.0")
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    keep, _, _ = random_masking(2, model.num_patches, 0.0)
    tokens = model.encode_visible(x, keep)
    pooled = model.backbone.forward_head(tokens, pre_logits=True)
    torch.testing.assert_close(pooled, model(x), atol=1e-5, rtol=1e-4)


def test_encoder_sees_only_visible_patches_and_position_embedding_is_frozen():
    model = build()
    x = torch.randn(2, 3, 16, 16)
    keep, mask, restore = random_masking(2, model.num_patches, 0.75)
    assert model.encode_visible(x, keep).shape[1] == model.backbone.num_prefix_tokens + 4
    assert not model.backbone.pos_embed.requires_grad
    assert model.decode(model.encode_visible(x, keep), restore).shape == (2, 16, 4 * 4 * 3)
    out = model.step([x], torch.arange(2))
    assert out.loss.ndim == 0 and out.features.shape == (2, model.feature_dim)


def test_a_resnet_backbone_is_a_one_line_error(in_tmp, capsys):
    assert main(["train", "method=mae", *TINY, "backbone=resnet18"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "backbone.name" in err[0] and "ViT" in err[0], err


@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_mask_ratio_sets_the_number_of_visible_tokens(ratio):
    model = build(f"method.mask_ratio={ratio}")
    keep, _, _ = random_masking(1, model.num_patches, ratio)
    assert keep.shape[1] == round(16 * (1 - ratio))
