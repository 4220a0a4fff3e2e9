"""RotNet (Gidaris et al. 2018): every image at its four rotations, and the loss is their 4-way CE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from conftest import tiny

from ssl_zoo.cli import compose
from ssl_zoo.config import validate_config
from ssl_zoo.methods import METHODS
from ssl_zoo.methods.rotnet import rotate_all


def test_rotate_all_turns_each_image_by_k_quarter_turns_with_label_k():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    rotated, labels = rotate_all(x)
    assert rotated.shape == (8, 1, 3, 3) and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for i in range(2):
        img = x[i, 0].tolist()
        turned = img
        for k in range(4):
            assert rotated[k * 2 + i, 0].tolist() == turned
            # one counter-clockwise quarter turn, written with explicit indices
            turned = [[turned[c][len(turned) - 1 - r] for c in range(3)] for r in range(3)]


def test_step_is_the_cross_entropy_over_all_four_rotations():
    torch.manual_seed(0)
    cfg = compose(tiny("rotnet"))
    validate_config(cfg)
    model = METHODS["rotnet"](cfg)
    model.eval()  # fixed BN statistics: the recomputation below sees the same normalisation
    x = torch.randn(4, 3, 16, 16)
    out = model.step([x], torch.arange(4))
    with torch.no_grad():
        logits = torch.cat([model.classifier(model.backbone(torch.rot90(x, k, (2, 3)))) for k in range(4)])
    want = F.cross_entropy(logits, torch.arange(4).repeat_interleave(4))
    assert abs(out.loss.item() - want.item()) < 1e-5
    assert out.features.shape == (4, model.feature_dim) and "rotation_acc" in out.logs
