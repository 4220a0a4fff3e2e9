"""Jigsaw (Noroozi & Favaro 2016): the greedy maximal-Hamming permutation set, tiles cut from their cells,
and the shuffle the classifier must undo."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import tiny

from ssl_zoo.cli import compose
from ssl_zoo.config import validate_config
from ssl_zoo.errors import ConfigError
from ssl_zoo.methods import METHODS
from ssl_zoo.transforms.patches import crop_patches, hamming_permutations, standardize_patches


def reference_permutations(count: int, tiles: int, first: int) -> list[tuple[int, ...]]:
    """Algorithm 1 with explicit loops: add the permutation with the largest summed Hamming distance to the
    chosen ones, the first such in lexicographic order."""
    candidates = list(itertools.permutations(range(tiles)))
    chosen = [candidates[first]]
    while len(chosen) < count:
        best, best_score = None, -1
        for cand in candidates:
            if cand in chosen:
                continue
            score = sum(sum(a != b for a, b in zip(cand, c)) for c in chosen)
            if score > best_score:
                best, best_score = cand, score
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("seed", [0, 3])
def test_permutation_set_is_the_greedy_maximal_hamming_set(seed):
    got = hamming_permutations(7, tiles=5, seed=seed)
    first = [tuple(p) for p in itertools.permutations(range(5))].index(tuple(got[0].tolist()))
    assert [tuple(p) for p in got.tolist()] == reference_permutations(7, 5, first)
    assert torch.equal(got, hamming_permutations(7, tiles=5, seed=seed))


def test_nine_tile_set_is_distinct_and_far_apart():
    perms = hamming_permutations(30)
    assert perms.shape == (30, 9) and len({tuple(p) for p in perms.tolist()}) == 30
    distances = (perms[:, None] != perms[None]).sum(-1)
    off_diagonal = distances[~torch.eye(30, dtype=torch.bool)]
    assert off_diagonal.float().mean() > 7.5 and off_diagonal.min() >= 2


def test_crop_patches_matches_slicing_and_standardize_gives_zero_mean_unit_std():
    x = torch.randn(2, 3, 10, 10)
    top, left = torch.tensor([[0, 5], [3, 6]]), torch.tensor([[1, 2], [6, 0]])
    patches = crop_patches(x, top, left, 4)
    for b in range(2):
        for k in range(2):
            t, l_ = int(top[b, k]), int(left[b, k])
            assert torch.equal(patches[b, k], x[b, :, t:t + 4, l_:l_ + 4])
    z = standardize_patches(patches)
    torch.testing.assert_close(z.mean(dim=(-3, -2, -1)), torch.zeros(2, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(dim=(-3, -2, -1), unbiased=False), torch.ones(2, 2), atol=1e-3, rtol=0)
    shifted = patches + torch.tensor([5.0, -2.0, 0.5]).view(1, 1, 3, 1, 1)
    z = standardize_patches(shifted, per_channel_mean=True)       # relative position's prep_image
    torch.testing.assert_close(z.mean(dim=(-2, -1)), torch.zeros(2, 2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.square().mean(dim=(-3, -2, -1)), torch.ones(2, 2), atol=1e-3, rtol=0)
    torch.testing.assert_close(z, standardize_patches(patches, per_channel_mean=True), atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        crop_patches(x, top + 5, left, 4)


def build(*extra: str):
    cfg = compose(tiny("jigsaw", *extra))
    validate_config(cfg)
    return METHODS["jigsaw"](cfg)


def test_tiles_lie_inside_their_own_cells_and_the_set_is_a_checkpointed_buffer():
    model = build()
    assert model.cell == 5 and model.tile == 4  # 16 px views: cells of 5 px, tiles of round(5 * 64/75)
    # each pixel holds its own (row, column): a tile's corner tells where it was cut
    rows = torch.arange(16.0).view(1, 1, 16, 1).expand(2, 1, 16, 16)
    cols = torch.arange(16.0).view(1, 1, 1, 16).expand(2, 1, 16, 16)
    torch.manual_seed(0)
    for _ in range(20):
        tiles = model.tiles(torch.cat([rows, cols], dim=1))
        top, left = tiles[:, :, 0, 0, 0], tiles[:, :, 1, 0, 0]
        cell_r = torch.arange(9) // 3
        cell_c = torch.arange(9) % 3
        # the 15 px grid sits at offset 0 or 1 of the 16 px view; the tile anywhere inside its 5 px cell
        assert ((top - cell_r * 5 >= 0) & (top + 4 - cell_r * 5 <= 6)).all()
        assert ((left - cell_c * 5 >= 0) & (left + 4 - cell_c * 5 <= 6)).all()
    assert torch.equal(model.state_dict()["permutations"], hamming_permutations(2, 9, 0))


def test_step_shows_the_tiles_in_the_drawn_permutation_order():
    model = build("method.standardize_tiles=false")
    seen = {}

    def record(module, inputs, output):
        seen.setdefault("input", inputs[0])

    model.backbone.register_forward_hook(record)
    x = torch.randn(3, 3, 16, 16)
    torch.manual_seed(1)
    tiles = model.tiles(x)
    labels = torch.randint(0, 2, (3,))
    torch.manual_seed(1)
    out = model.step([x], torch.arange(3))
    shown = seen["input"].view(3, 9, 3, 4, 4)
    for b in range(3):
        order = model.permutations[labels[b]]
        for j in range(9):
            assert torch.equal(shown[b, j], tiles[b, order[j]])
    assert out.features.shape == (3, model.feature_dim)


def test_a_vit_backbone_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="backbone.name"):
        build("backbone=vit_tiny", "backbone.patch_size=4")
