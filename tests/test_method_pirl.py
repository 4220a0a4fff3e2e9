"""PIRL (Misra & van der Maaten 2019): the jigsaw view, the loss mixture and the memory bank."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny

from ssl_zoo.cli import compose
from ssl_zoo.config import validate_config
from ssl_zoo.methods import METHODS
from ssl_zoo.methods.pirl import jigsaw_patches, shuffle_patches


def build(*extra: str):
    cfg = compose(tiny("pirl", *extra))
    typed = validate_config(cfg)
    return METHODS["pirl"](cfg, num_train=typed["data"].num_samples)


def test_each_jigsaw_patch_lies_inside_its_own_cell():
    torch.manual_seed(0)
    x = torch.arange(18 * 18, dtype=torch.float32).reshape(1, 1, 18, 18).repeat(4, 2, 1, 1)
    patches = jigsaw_patches(x, 3, 4)  # cells of 6 px
    assert patches.shape == (4, 9, 2, 4, 4)
    for n in range(4):
        for k in range(9):
            top_left = int(patches[n, k, 0, 0, 0])
            row, col = divmod(top_left, 18)
            assert 6 * (k // 3) <= row <= 6 * (k // 3) + 2 and 6 * (k % 3) <= col <= 6 * (k % 3) + 2
            assert torch.equal(patches[n, k, 1], x[n, 1, row:row + 4, col:col + 4])


def test_shuffling_permutes_each_images_patches():
    torch.manual_seed(0)
    patches = torch.arange(8 * 9, dtype=torch.float32).reshape(8, 9, 1)
    shuffled = shuffle_patches(patches)
    assert torch.equal(shuffled.sort(dim=1).values, patches)
    assert not torch.equal(shuffled, patches)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_loss_is_the_lambda_mixture_of_the_jigsaw_and_image_terms(lam):
    torch.manual_seed(0)
    model = build(f"method.loss_weight={lam}")
    out = model.step([torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)], torch.arange(8))
    expected = lam * out.logs["loss_jigsaw"] + (1 - lam) * out.logs["loss_image"]
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_bank_takes_the_images_features_with_momentum_and_keeps_two_normalisers():
    torch.manual_seed(0)
    model = build()
    before = model.bank.bank.clone()
    index = torch.tensor([3, 5, 7, 11, 13, 17, 19, 23])
    images = torch.randn(8, 3, 16, 16)
    model.step([images, torch.randn(8, 3, 16, 16)], index)
    changed = (model.bank.bank != before).any(dim=1)
    assert changed[index].all() and changed.sum() == 8
    torch.testing.assert_close(model.bank.bank[index].norm(dim=1), torch.ones(8))
    assert torch.isfinite(model.bank.log_z).all() and model.bank.log_z.shape == (2,)
    # momentum 0.5: the new row is the normalised mean of the old row and the image's embedding (recomputed
    # in training mode on the same batch: the same BN batch statistics)
    with torch.no_grad():
        v = torch.nn.functional.normalize(model.image_head(model.backbone(images)), dim=1)
    expected = torch.nn.functional.normalize(0.5 * before[index] + 0.5 * v, dim=1)
    torch.testing.assert_close(model.bank.bank[index], expected, rtol=1e-4, atol=1e-5)
