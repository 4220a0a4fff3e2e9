"""Representation health on matrices whose answer is known: RankMe, alignment, uniformity, normalised std."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_zoo.eval.health import alignment, is_collapsed, normalised_std, rankme, second_view, uniformity


def test_rankme_of_the_identity_is_its_dimension():
    assert rankme(torch.eye(16)) == pytest.approx(16, rel=1e-4)


def test_rankme_of_a_rank_one_matrix_is_one():
    z = torch.randn(200, 1) @ torch.randn(1, 32)
    assert rankme(z) == pytest.approx(1.0, abs=1e-3)


def test_rankme_of_two_equal_directions_is_two():
    z = torch.zeros(100, 8)
    z[:50, 0], z[50:, 1] = 1.0, 1.0
    assert rankme(z) == pytest.approx(2.0, rel=1e-4)


def test_alignment_is_zero_for_identical_views_and_four_for_opposite_ones():
    z = torch.randn(50, 8)
    assert alignment(z, z) == pytest.approx(0.0, abs=1e-12)
    assert alignment(z, -z) == pytest.approx(4.0)
    assert alignment(z, 3 * z) == pytest.approx(0.0, abs=1e-12)  # normalised first


def test_uniformity_of_two_antipodal_points_and_of_a_collapsed_set():
    assert uniformity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-8.0)  # log exp(-2 * 4)
    assert uniformity(torch.ones(10, 4)) == pytest.approx(0.0, abs=1e-12)


def test_normalised_std_is_zero_at_collapse_and_about_one_over_sqrt_d_when_spread():
    assert normalised_std(torch.ones(100, 64) * 5) == pytest.approx(0.0, abs=1e-12)
    spread = normalised_std(torch.randn(20000, 64, generator=torch.Generator().manual_seed(0)))
    assert spread == pytest.approx(1 / math.sqrt(64), rel=0.05)


def test_collapse_flag_uses_std_or_rank():
    assert is_collapsed(std=0.001, rank=50, dim=100, std_ratio=0.1, min_rank=2)
    assert is_collapsed(std=0.1, rank=1.2, dim=100, std_ratio=0.1, min_rank=2)
    assert not is_collapsed(std=0.1, rank=50, dim=100, std_ratio=0.1, min_rank=2)


def test_second_view_is_deterministic_and_draws_no_random_numbers():
    images = torch.randn(4, 3, 16, 16)
    state = torch.get_rng_state()
    a, b = second_view(images), second_view(images)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and a.shape == images.shape and not torch.equal(a, images)


class FakeModule(torch.nn.Module):
    """Maps images to features with ``encode`` and records what the callback logs."""

    def __init__(self, encode):
        super().__init__()
        self.encode, self.logged = encode, {}

    def forward(self, images):
        return self.encode(images)

    def log(self, key, value, **kwargs):
        self.logged[key] = value


def validate_once(module, images, caplog, callback=None):
    from types import SimpleNamespace

    from ssl_zoo.callbacks.health import RepresentationHealth

    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, global_step=7)
    callback = callback or RepresentationHealth(max_samples=48)
    callback.on_validation_epoch_start(trainer, module)
    labels = torch.zeros(len(images), dtype=torch.long)
    for start in range(0, len(images), 16):
        batch = (images[start:start + 16], labels[start:start + 16])
        for loader in (0, 1):  # the kNN bank (ignored) and the validation split
            callback.on_validation_batch_end(trainer, module, {"features": module(batch[0]), "labels": batch[1]},
                                             batch, start // 16, dataloader_idx=loader)
    with caplog.at_level("WARNING"):
        callback.on_validation_epoch_end(trainer, module)
    return module.logged


def test_health_callback_flags_a_collapsed_encoder_and_warns(caplog):
    logged = validate_once(FakeModule(lambda x: torch.ones(len(x), 32)), torch.randn(64, 3, 8, 8), caplog)
    assert logged["val/collapsed"] == 1.0 and logged["val/feature_std"] == pytest.approx(0.0, abs=1e-9)
    assert logged["val/rankme"] == pytest.approx(1.0, abs=1e-3) and logged["val/alignment"] == pytest.approx(0.0)
    assert "representation collapse at step 7" in caplog.text


def test_health_callback_passes_a_spread_encoder(caplog):
    logged = validate_once(FakeModule(lambda x: x.flatten(1)[:, :32]), torch.randn(64, 3, 8, 8), caplog)
    assert logged["val/collapsed"] == 0.0 and logged["val/rankme"] > 20 and logged["val/alignment"] > 0
    assert set(logged) == {"val/rankme", "val/alignment", "val/uniformity", "val/feature_std", "val/collapsed"}
    assert "collapse" not in caplog.text


def low_rank(rank):
    """Features spanning ``rank`` of 32 directions (a fixed random basis), from the images' own pixels."""
    basis = torch.randn(rank, 32, generator=torch.Generator().manual_seed(1))
    return lambda x: x.flatten(1)[:, :rank] @ basis


def test_health_callback_warns_of_a_partial_collapse_against_the_first_rank(caplog):
    from ssl_zoo.callbacks.health import RepresentationHealth

    callback, images = RepresentationHealth(max_samples=48, rank_fraction=0.4), torch.randn(64, 3, 8, 8)
    first = validate_once(FakeModule(low_rank(32)), images, caplog, callback)
    assert "val/rank_kept" not in first and callback.first_rank == pytest.approx(first["val/rankme"])
    kept = validate_once(FakeModule(low_rank(20)), images, caplog, callback)["val/rank_kept"]
    assert 0.4 < kept < 1 and "partial collapse" not in caplog.text
    caplog.clear()
    lost = validate_once(FakeModule(low_rank(4)), images, caplog, callback)
    assert lost["val/rank_kept"] < 0.4 and lost["val/collapsed"] == 0.0
    assert "partial collapse at step 7" in caplog.text and "monitor.collapse_rank_fraction" in caplog.text


def test_health_callback_keeps_the_first_rank_across_a_resume():
    from ssl_zoo.callbacks.health import RepresentationHealth

    before, after = RepresentationHealth(), RepresentationHealth()
    before.first_rank = 87.5
    after.load_state_dict(before.state_dict())
    assert after.first_rank == 87.5
