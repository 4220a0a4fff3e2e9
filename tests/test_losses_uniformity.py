"""Wang & Isola's alignment and uniformity against float64 loop references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_zoo.losses.uniformity import align_loss, uniform_loss

N, D = 9, 4


def _sphere(seed: int, n: int = N, d: int = D) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def _sq_dist(a: list[float], b: list[float]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b))


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.5])
def test_align_loss_matches_loop_reference(alpha):
    x, y = _sphere(0), _sphere(1)
    expected = sum(math.sqrt(_sq_dist(x[i].tolist(), y[i].tolist())) ** alpha for i in range(N)) / N
    assert align_loss(x, y, alpha=alpha).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("t", [0.5, 2.0, 7.0])
def test_uniform_loss_matches_loop_reference(t):
    x = _sphere(2)
    rows = x.tolist()
    terms = [math.exp(-t * _sq_dist(rows[i], rows[j])) for i in range(N) for j in range(i + 1, N)]
    expected = math.log(sum(terms) / len(terms))
    assert uniform_loss(x, t=t).item() == pytest.approx(expected, rel=1e-10)


def test_uniform_loss_is_zero_when_every_point_coincides_and_lower_when_spread():
    x = _sphere(3, n=1).expand(N, D).contiguous()
    assert uniform_loss(x).item() == pytest.approx(0.0, abs=1e-12)
    assert uniform_loss(_sphere(4)).item() < -0.5


def test_uniform_loss_of_antipodal_pair_is_minus_four_t():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    assert uniform_loss(x, t=3.0).item() == pytest.approx(-12.0, rel=1e-12)


def test_align_and_uniform_losses_have_finite_gradients_at_coincident_points():
    x = _sphere(5, n=1).expand(N, D).contiguous().float().requires_grad_(True)
    y = x.detach().clone().requires_grad_(True)
    (align_loss(x, y) + align_loss(x, y, alpha=1.0) + uniform_loss(x)).backward()
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(y.grad).all()


def test_uniform_loss_is_finite_for_a_very_large_t():
    x = _sphere(6).float().requires_grad_(True)
    value = uniform_loss(x, t=1e6)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(x.grad).all()


def test_uniformity_losses_reject_bad_arguments():
    with pytest.raises(ValueError):
        uniform_loss(_sphere(7, n=1))
    with pytest.raises(ValueError):
        align_loss(_sphere(7), _sphere(8, n=N - 1))
    with pytest.raises(ValueError):
        align_loss(_sphere(7), _sphere(8), alpha=0.0)
