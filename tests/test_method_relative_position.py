"""Relative patch position (Doersch et al. 2015): the neighbour sits where its label says, and the
chromatic-aberration counter-measures do what the paper describes."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny

from ssl_zoo.cli import compose
from ssl_zoo.config import validate_config
from ssl_zoo.methods import METHODS
from ssl_zoo.methods.relative_position import NEIGHBOURS, drop_colours, layout, project_green_magenta


def build(*extra: str):
    cfg = compose(tiny("relative_position", *extra))
    validate_config(cfg)
    return METHODS["relative_position"](cfg)


def test_layout_scales_the_papers_patch_gap_and_jitter_to_the_view():
    assert layout(32, 0.5, 7 / 96) == (7, 4, 1)
    assert layout(384, 0.5, 7 / 96) == (92, 46, 7)
    for size in (16, 32, 64, 96):
        p, g, j = layout(size, 0.5, 7 / 96)
        assert 3 * p + 2 * g + 2 * j <= size


@pytest.mark.parametrize("all_neighbours", [False, True])
def test_the_neighbour_patch_sits_at_the_labelled_offset_within_the_jitter(all_neighbours):
    model = build("method.gap=0.5", "method.jitter=0.34", f"method.all_neighbours={str(all_neighbours).lower()}")
    p, g, j = model.patch, model.gap, model.jitter
    assert j >= 1
    rows = torch.arange(16.0).view(1, 1, 16, 1).expand(4, 1, 16, 16)
    cols = torch.arange(16.0).view(1, 1, 1, 16).expand(4, 1, 16, 16)
    torch.manual_seed(0)
    for _ in range(10):
        patches, labels = model.patches(torch.cat([rows, cols], dim=1))
        corner = patches[:, :, :, 0, 0]                     # [B, K, 2]: (row, col) of each patch's corner
        if labels is None:
            labels = torch.arange(8).expand(4, 8)
            offsets = corner[:, 1:] - corner[:, :1]
        else:
            labels = labels[:, None]
            offsets = corner[:, 1:] - corner[:, :1]
        expected = (torch.tensor(NEIGHBOURS)[labels] - 1) * (p + g)
        assert ((offsets - expected).abs() <= 2 * j).all()


def test_colour_dropping_keeps_exactly_one_channel_and_fills_the_others_with_faint_noise():
    x = torch.randn(64, 3, 5, 5) * 3
    torch.manual_seed(0)
    y = drop_colours(x)
    kept = (y == x).flatten(2).all(dim=2)                   # [N, 3]
    assert kept.sum(dim=1).eq(1).all()
    assert y[~kept].std() < 0.05
    assert set(kept.float().argmax(dim=1).tolist()) == {0, 1, 2}


def test_projection_removes_green_magenta_and_leaves_grey_alone():
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    pixels = torch.rand(4, 3, 6, 6)
    x = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = project_green_magenta(x, mean, std) * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    axis = torch.tensor([-1.0, 2.0, -1.0]) / math.sqrt(6)
    assert torch.einsum("nchw,c->nhw", out, axis).abs().max() < 1e-5
    grey = pixels[:, :1].expand(-1, 3, -1, -1)
    grey_x = (grey - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(project_green_magenta(grey_x, mean, std), grey_x, atol=1e-5, rtol=0)


def test_step_classifies_pairs_and_the_probe_reads_the_whole_view():
    model = build("method.all_neighbours=false", "method.chromatic=drop")
    out = model.step([torch.randn(4, 3, 16, 16)], torch.arange(4))
    assert out.loss.ndim == 0 and out.features.shape == (4, model.feature_dim) and "position_acc" in out.logs


def test_patch_resize_feeds_the_encoder_patches_of_the_given_side():
    model = build("method.patch_resize=16")
    sides = []
    model.backbone.register_forward_pre_hook(lambda module, args: sides.append(tuple(args[0].shape[-2:])))
    model.step([torch.randn(4, 3, 16, 16)], torch.arange(4))
    assert sides[0] == (16, 16) and model.patch < 16       # the patches, resized from their own side
    with pytest.raises(Exception, match="patch_resize"):
        build("method.patch_resize=-1")


@pytest.mark.parametrize("standardize", [True, False])
def test_each_patch_reaches_the_encoder_standardised_as_the_reference_code_does(standardize):
    model = build("method.chromatic=none", f"method.standardize_patches={str(standardize).lower()}")
    seen = []
    model.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    x = torch.rand(4, 3, 16, 16) * 5 + 2
    model.step([x], torch.arange(4))
    patches = seen[0].float()                               # the first pass: the patches, not the whole view
    n = patches.shape[0]
    assert n in (4 * 2, 4 * 9) and patches.shape[-1] < 16
    if standardize:  # each channel centred, then the patch at unit RMS (prep_image)
        torch.testing.assert_close(patches.mean(dim=(2, 3)), torch.zeros(n, 3), atol=1e-4, rtol=0)
        torch.testing.assert_close(patches.square().mean(dim=(1, 2, 3)).sqrt(), torch.ones(n), atol=1e-3, rtol=0)
    else:
        assert (patches.mean(dim=(1, 2, 3)) > 1).all()
