import math

import pytest
import torch
import torch.nn as nn

from ssl_zoo.memory import FeatureQueue, MomentumEncoder, momentum_at


def test_momentum_update_matches_formula():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    ema = MomentumEncoder(online, base_momentum=0.9, final_momentum=0.9, schedule="constant")
    before = [p.detach().clone() for p in ema.encoder.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
        online[1].running_mean.fill_(3.0)
    tau = ema.update(step=0, total_steps=10)
    assert tau == pytest.approx(0.9)
    for t, b, o in zip(ema.encoder.parameters(), before, online.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o, rtol=0, atol=1e-6)
    assert torch.equal(ema.encoder[0][1].running_mean, online[1].running_mean)  # buffers are copied


def test_momentum_encoder_is_frozen_and_holds_only_the_copy():
    online = nn.Linear(4, 3)
    ema = MomentumEncoder(online, nn.ReLU())
    assert all(not p.requires_grad for p in ema.parameters())
    assert set(ema.state_dict()) == {"encoder.0.weight", "encoder.0.bias", "momentum"}


def test_cosine_momentum_schedule_goes_from_base_to_final():
    assert momentum_at(0.996, 1.0, 0, 100) == pytest.approx(0.996)
    assert momentum_at(0.996, 1.0, 100, 100) == pytest.approx(1.0)
    expected_mid = 1 - (1 - 0.996) * (math.cos(math.pi * 0.5) + 1) / 2
    assert momentum_at(0.996, 1.0, 50, 100) == pytest.approx(expected_mid)
    assert momentum_at(0.999, 1.0, 50, 100, schedule="constant") == 0.999


def test_queue_replaces_oldest_keys_and_wraps():
    q = FeatureQueue(size=6, dim=2)
    for step in range(4):
        q.enqueue(torch.full((2, 2), float(step)))
    # 8 keys into 6 slots: step 3 overwrote step 0's slots
    assert sorted(q().unique().tolist()) == [1.0, 2.0, 3.0]
    assert int(q.ptr) == 2 and int(q.filled) == 6


def test_queue_rejects_a_batch_that_does_not_divide_it():
    q = FeatureQueue(size=6, dim=2)
    with pytest.raises(ValueError, match="multiple"):
        q.enqueue(torch.zeros(4, 2))


def test_queue_is_in_the_state_dict():
    q = FeatureQueue(size=4, dim=3)
    q.enqueue(torch.ones(2, 3))
    r = FeatureQueue(size=4, dim=3)
    r.load_state_dict(q.state_dict())
    assert torch.equal(r(), q()) and int(r.ptr) == 2
