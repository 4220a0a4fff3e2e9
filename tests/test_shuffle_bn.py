"""Shuffle BN for momentum key encoders (He et al. 2019): keys come back in their rows' order, BN
statistics come from other samples than the queries', and the one-device split-BN stand-in normalises
each sub-batch with its own statistics."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from dist_utils import run_on_ranks

from ssl_zoo.distributed import ShuffleBN, SplitBatchNorm2d
from ssl_zoo.errors import ConfigError

WORLD = 2


def _bn_encoder() -> nn.Module:
    """A key encoder whose output of a sample depends on the batch only through BN statistics."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.Flatten())


def _keys_on_ranks(r: int, world: int, seed: int) -> dict:
    x = torch.randn(4, 2, 1, 2, generator=torch.Generator().manual_seed(100 + r))
    encoder = _bn_encoder().train()
    shuffle_bn = ShuffleBN("auto", num_splits=2)
    shuffle_bn.convert(encoder)
    active = shuffle_bn.setup(encoder, world, batch_size=4)
    linear = nn.Linear(4, 3)
    torch.manual_seed(seed)  # the permutation is drawn from the default generator; rank 0's is used
    keys = shuffle_bn(encoder, x)
    per_sample = shuffle_bn(lambda t: linear(t.flatten(1)), x)
    return {"x": x, "keys": keys, "per_sample": per_sample, "expected_per_sample": linear(x.flatten(1)).detach(),
            "active": active, "splits": [m.num_splits for m in encoder.modules() if isinstance(m, SplitBatchNorm2d)]}


@pytest.fixture(scope="module")
def two_ranks() -> list[dict]:
    return run_on_ranks(_keys_on_ranks, WORLD, 3)


def test_keys_come_back_to_their_rank_in_the_original_order(two_ranks):
    for res in two_ranks:
        torch.testing.assert_close(res["per_sample"], res["expected_per_sample"])


def test_auto_is_ddp_shuffle_on_two_ranks_and_split_layers_fall_back_to_plain_bn(two_ranks):
    for res in two_ranks:
        assert res["active"] == "ddp"
        assert res["splits"] and all(s == 1 for s in res["splits"])


def test_keys_are_normalised_with_the_statistics_of_the_shuffled_sub_batch(two_ranks):
    x_all = torch.cat([res["x"] for res in two_ranks])
    torch.manual_seed(3)
    perm = torch.randperm(x_all.shape[0])  # what rank 0 drew and broadcast
    encoder = _bn_encoder().train()
    with torch.no_grad():
        # Rank r's key encoder sees rows perm[4r : 4r + 4] of the global batch, as one BN batch.
        out = torch.cat([encoder(x_all[perm[4 * r: 4 * r + 4]]) for r in range(WORLD)])
        expected = out[torch.argsort(perm)]
        unshuffled = torch.cat([encoder(res["x"]) for res in two_ranks])
    torch.testing.assert_close(torch.cat([res["keys"] for res in two_ranks]), expected)
    assert not torch.allclose(expected, unshuffled), "the shuffle left every rank's BN batch unchanged"


def test_split_mode_normalises_each_sub_batch_with_its_own_statistics():
    x = torch.randn(8, 2, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    encoder = _bn_encoder().double().train()
    reference = _bn_encoder().double().train()
    shuffle_bn = ShuffleBN("split", num_splits=4)
    shuffle_bn.convert(encoder)
    assert shuffle_bn.setup(encoder, world=1, batch_size=8) == "split"
    assert sum(isinstance(m, SplitBatchNorm2d) and m.num_splits == 4 for m in encoder.modules()) == 1
    torch.manual_seed(5)
    keys = shuffle_bn(encoder, x)
    torch.manual_seed(5)
    perm = torch.randperm(8)
    with torch.no_grad():
        shuffled = x[perm]
        per_sub_batch = torch.cat([reference(shuffled[2 * s: 2 * s + 2]) for s in range(4)])
        whole_batch = reference(x)
    torch.testing.assert_close(keys, per_sub_batch[torch.argsort(perm)])
    assert not torch.allclose(keys, whole_batch)


def test_split_layers_are_shared_with_the_momentum_copy_and_query_encoder_uses_them_too():
    from ssl_zoo.memory import MomentumEncoder

    encoder = _bn_encoder()
    ShuffleBN("auto", num_splits=2).convert(encoder)
    target = MomentumEncoder(encoder)
    for module in (encoder, target):
        assert any(isinstance(m, SplitBatchNorm2d) and m.num_splits == 2 for m in module.modules())
    # State-dict keys do not change with the mode, so a checkpoint resumes on any number of devices.
    assert set(encoder.state_dict()) == set(_bn_encoder().state_dict())


def test_off_mode_is_the_plain_encoder_and_ddp_on_one_device_is_a_config_error():
    x = torch.randn(4, 2, 1, 1)
    encoder = _bn_encoder().train()
    off = ShuffleBN("off")
    off.setup(encoder, world=1, batch_size=4)
    with torch.no_grad():
        torch.testing.assert_close(off(encoder, x), encoder(x))
    with pytest.raises(ConfigError, match="method.shuffle_bn"):
        ShuffleBN("ddp").setup(encoder, world=1, batch_size=4)
    with pytest.raises(ConfigError, match="method.bn_splits"):
        ShuffleBN("split", num_splits=3).setup(encoder, world=1, batch_size=4)
    with pytest.raises(ConfigError, match="method.shuffle_bn"):
        ShuffleBN("sometimes")
