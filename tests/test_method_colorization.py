"""Colorization (Zhang et al. 2016) and split-brain autoencoders (Zhang et al. 2017): in-gamut ab bins,
soft-encoding, the running colour prior in the checkpoint, the L input, grey data sets refused."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny

from ssl_zoo.cli import compose
from ssl_zoo.config import validate_config
from ssl_zoo.errors import ConfigError
from ssl_zoo.methods import METHODS
from ssl_zoo.transforms.color import ab_bins, quantize, rgb_to_lab, soft_encode

GREY = ("data.channels=1", "data.mean=[0.41]", "data.std=[0.25]")


def build(method: str, *extra: str):
    cfg = compose(tiny(method, *extra))
    validate_config(cfg)
    return METHODS[method](cfg)


def test_ab_bins_are_grid_centres_that_hold_srgb_colours():
    bins = ab_bins(10.0)
    assert 250 <= bins.shape[0] <= 313 and torch.equal(bins, torch.round(bins / 10) * 10)
    # every colour of a random sample of sRGB rounds to a kept bin; the grey bin is in
    lab = rgb_to_lab(torch.rand(1, 3, 100, 100, generator=torch.Generator().manual_seed(0)))
    cells = torch.round(lab[0, 1:].reshape(2, -1).t() / 10) * 10
    kept = {tuple(b) for b in bins.tolist()}
    assert sum(tuple(c) in kept for c in cells.tolist()) >= 0.999 * cells.shape[0]
    assert (0.0, 0.0) in kept


def test_soft_encode_weights_the_five_nearest_bins_by_a_gaussian():
    centres = ab_bins(10.0)
    values = torch.tensor([[3.3, -6.1], [41.7, 12.4]])  # no ties among the 6 nearest
    targets, nearest = soft_encode(values, centres, k=5, sigma=5.0)
    for n in range(2):
        d = [math.dist(values[n].tolist(), c) for c in centres.tolist()]
        order = sorted(range(len(d)), key=d.__getitem__)[:5]
        w = [math.exp(-d[i] ** 2 / 50.0) for i in order]
        for i, wi in zip(order, w):
            assert abs(targets[n, i].item() - wi / sum(w)) < 1e-5
        assert targets[n].count_nonzero() == 5 and nearest[n] == order[0]


def test_quantize_cuts_l_into_equal_bins():
    assert quantize(torch.tensor([0.0, 1.99, 2.0, 99.9, 100.0, 120.0, -3.0]), 0.0, 100.0, 50).tolist() == \
        [0, 0, 1, 49, 49, 49, 0]


def test_colour_prior_counts_every_training_pixel_and_is_in_the_checkpoint():
    model = build("colorization")
    model.train()
    x = torch.randn(2, 3, 16, 16)
    model.step([x], torch.arange(2))
    pixels = 2 * model.out_size ** 2
    assert int(model.targets.counts.sum()) == pixels
    state = model.state_dict()["targets.counts"].clone()
    model.step([x], torch.arange(2))
    assert int(model.targets.counts.sum()) == 2 * pixels and int(state.sum()) == pixels
    model.eval()
    model.step([x], torch.arange(2))
    assert int(model.targets.counts.sum()) == 2 * pixels  # evaluation does not count


def test_encoder_reads_one_channel_and_forward_takes_the_data_sets_images():
    model = build("colorization")
    assert model.backbone.conv1.in_channels == 1
    model.eval()
    assert model(torch.randn(3, 3, 16, 16)).shape == (3, model.feature_dim)


def test_split_brain_representation_is_both_halves():
    model = build("split_brain")
    model.eval()
    assert model.backbone.conv1.in_channels == 1 and model.encoder_ab.conv1.in_channels == 2
    x = torch.randn(3, 3, 16, 16)
    feats = model(x)
    assert feats.shape == (3, model.feature_dim) and model.feature_dim == 2 * 512
    out = model.step([x], torch.arange(3))
    assert set(out.logs) == {"loss_ab", "loss_l"}
    torch.testing.assert_close(out.loss, out.logs["loss_ab"] + out.logs["loss_l"])


@pytest.mark.parametrize("method", ["colorization", "split_brain", "cmc"])
def test_grey_data_is_refused_by_the_config_check(method):
    with pytest.raises(ConfigError, match=r"data.channels.*3 \(RGB\)"):
        build(method, *GREY)
