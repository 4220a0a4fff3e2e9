"""MemoryBank (Wu et al. 2018): rows per training image, momentum update, a fixed or running NCE normaliser,
state in the checkpoint, and the same bank on every rank when the caller gathers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from dist_utils import run_on_ranks

from ssl_zoo.distributed import gather_no_grad
from ssl_zoo.losses.contrastive import estimate_nce_normaliser
from ssl_zoo.memory import MemoryBank


def test_rows_start_as_unit_vectors_and_are_read_detached_by_index():
    bank = MemoryBank(10, 4)
    torch.testing.assert_close(bank.all().norm(dim=1), torch.ones(10))
    index = torch.tensor([[3, 1], [0, 3]])
    rows = bank(index)
    assert rows.shape == (2, 2, 4) and not rows.requires_grad
    torch.testing.assert_close(rows[1, 1], bank.bank[3])


def test_update_moves_rows_towards_the_new_features_with_momentum_and_renormalises():
    torch.manual_seed(0)
    bank = MemoryBank(6, 3, momentum=0.5)
    before = bank.all().clone()
    index, features = torch.tensor([4, 1]), torch.randn(2, 3) * 5
    bank.update(index, features)
    for row, f in zip(index.tolist(), features):
        expected = 0.5 * before[row] + 0.5 * f / f.norm()
        torch.testing.assert_close(bank.bank[row], expected / expected.norm())
    untouched = [0, 2, 3, 5]
    torch.testing.assert_close(bank.bank[untouched], before[untouched])


def test_momentum_zero_replaces_the_rows():
    bank = MemoryBank(5, 3, momentum=0.0)
    features = torch.randn(2, 3)
    bank.update(torch.tensor([0, 2]), features)
    torch.testing.assert_close(bank.bank[[0, 2]], F.normalize(features, dim=1))


def test_noise_indices_are_uniform_over_the_rows():
    torch.manual_seed(0)
    noise = MemoryBank(7, 2).sample(500, 20)
    assert noise.shape == (500, 20) and noise.min() == 0 and noise.max() == 6
    counts = torch.bincount(noise.flatten(), minlength=7).double()
    assert (counts / counts.sum() - 1 / 7).abs().max() < 0.01


def test_normaliser_is_estimated_at_the_first_call_and_then_fixed():
    bank = MemoryBank(100, 4, num_normalisers=2)
    assert torch.isnan(bank.log_z).all()
    first = torch.randn(8, 16)
    log_z = bank.normaliser(1, first).clone()
    torch.testing.assert_close(log_z, estimate_nce_normaliser(first, 100))
    assert torch.isnan(bank.log_z[0])
    assert bank.normaliser(1, torch.randn(8, 16) + 5) == log_z


def _monte_carlo_z(logits: torch.Tensor, n: int) -> float:
    """Z = n · mean(exp(logits)), in float64 (the estimate written out, not in log space)."""
    return n * logits.double().exp().mean().item()


def test_running_normaliser_is_a_linear_space_mean_of_each_steps_estimate():
    import math

    bank = MemoryBank(100, 4, normaliser_momentum=0.75)
    steps = [torch.randn(8, 16), torch.randn(8, 16) + 2, torch.randn(8, 16) - 1]
    z = _monte_carlo_z(steps[0], 100)  # the first call takes the estimate as it is
    for i, logits in enumerate(steps):
        if i:
            z = 0.75 * z + 0.25 * _monte_carlo_z(logits, 100)
        assert bank.normaliser(0, logits).item() == pytest.approx(math.log(z), rel=1e-5)


def test_normaliser_momentum_zero_takes_each_steps_estimate():
    bank = MemoryBank(50, 4, normaliser_momentum=0.0)
    for shift in (0.0, 3.0):
        logits = torch.randn(6, 10) + shift
        torch.testing.assert_close(bank.normaliser(0, logits), estimate_nce_normaliser(logits, 50))


def test_bank_and_normalisers_round_trip_through_the_state_dict():
    bank = MemoryBank(9, 4)
    bank.update(torch.tensor([2]), torch.randn(1, 4))
    bank.normaliser(0, torch.randn(3, 5))
    restored = MemoryBank(9, 4)
    restored.load_state_dict(bank.state_dict())
    assert torch.equal(restored.bank, bank.bank) and torch.equal(restored.log_z, bank.log_z)
    assert set(bank.state_dict()) == {"bank", "log_z", "filled"}


def test_fill_sets_every_row_normalised_and_marks_the_bank_filled():
    bank, features = MemoryBank(5, 3), torch.randn(5, 3) * 4
    assert not bool(bank.filled)
    bank.fill(features)
    torch.testing.assert_close(bank.bank, F.normalize(features, dim=1))
    assert bool(bank.filled)
    with pytest.raises(ValueError, match="fill expects features"):
        bank.fill(torch.randn(4, 3))


@pytest.mark.parametrize("shared", [False, True])
def test_nce_loss_against_a_loop_over_anchors_with_per_anchor_or_shared_noise(shared):
    from ssl_zoo.losses.contrastive import nce

    bank, t, m = MemoryBank(40, 6), 0.1, 7
    z, index = F.normalize(torch.randn(5, 6), dim=1), torch.tensor([3, 9, 0, 39, 12])
    torch.manual_seed(3)
    loss = bank.nce_loss(z, index, m, t, shared_noise=shared)
    torch.manual_seed(3)
    noise = torch.randint(40, (1, m) if shared else (5, m))
    rows = [noise[0] if shared else noise[i] for i in range(5)]
    negative = torch.stack([torch.stack([z[i] @ bank.bank[j] / t for j in rows[i]]) for i in range(5)])
    positive = torch.stack([z[i] @ bank.bank[index[i]] / t for i in range(5)])
    torch.testing.assert_close(loss, nce(positive, negative, bank.log_z[0], 40))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="momentum"):
        MemoryBank(4, 2, momentum=1.0)
    with pytest.raises(ValueError, match="size"):
        MemoryBank(0, 2)
    with pytest.raises(ValueError, match="normaliser_momentum"):
        MemoryBank(4, 2, normaliser_momentum=1.5)
    with pytest.raises(ValueError, match="update expects"):
        MemoryBank(4, 2).update(torch.tensor([0]), torch.randn(1, 3))


def _gathered_update(rank: int, world: int) -> dict:
    torch.manual_seed(0)  # the same initial bank on every rank, as from one seed
    bank = MemoryBank(8, 3)
    initial = bank.all().clone()
    index = torch.tensor([rank, 4 + rank])
    features = torch.randn(2, 3, generator=torch.Generator().manual_seed(10 + rank))
    bank.update(gather_no_grad(index), gather_no_grad(features))
    negatives = torch.randn(2, 5, generator=torch.Generator().manual_seed(20 + rank))
    log_z = bank.normaliser(0, negatives)
    return {"bank": bank.all(), "initial": initial, "index": index, "features": features,
            "negatives": negatives, "log_z": log_z}


def test_two_ranks_updating_with_gathered_rows_hold_the_same_bank_as_one_process():
    per_rank = run_on_ranks(_gathered_update, 2)
    assert torch.equal(per_rank[0]["bank"], per_rank[1]["bank"])
    one = MemoryBank(8, 3)
    one.bank.copy_(per_rank[0]["initial"])
    one.update(torch.cat([r["index"] for r in per_rank]), torch.cat([r["features"] for r in per_rank]))
    torch.testing.assert_close(per_rank[0]["bank"], one.all())
    # log Z is the estimate from the noise of both ranks together (one device's), the same everywhere.
    global_estimate = estimate_nce_normaliser(torch.cat([r["negatives"] for r in per_rank]), 8)
    for r in per_rank:
        torch.testing.assert_close(r["log_z"], global_estimate)


def _running_normaliser(rank: int, world: int) -> dict:
    bank = MemoryBank(8, 3, normaliser_momentum=0.5)
    steps = [torch.randn(2, 5, generator=torch.Generator().manual_seed(30 + 10 * step + rank)) + step
             for step in range(3)]
    return {"steps": steps, "log_z": [bank.normaliser(0, logits) for logits in steps]}


def test_a_running_normaliser_under_two_ranks_follows_the_global_batchs_estimates():
    per_rank = run_on_ranks(_running_normaliser, 2)
    one = MemoryBank(8, 3, normaliser_momentum=0.5)
    for step in range(3):
        expected = one.normaliser(0, torch.cat([r["steps"][step] for r in per_rank]))
        for r in per_rank:
            torch.testing.assert_close(r["log_z"][step], expected)
