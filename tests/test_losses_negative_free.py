"""BYOL, SimSiam, Barlow Twins and VICReg against float64 loop references of the papers' formulas."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_zoo.losses.negative_free import (
    barlow_twins_loss,
    barlow_twins_terms,
    byol_loss,
    simsiam_loss,
    vicreg_loss,
    vicreg_terms,
)

N, D = 7, 5


def _pair(seed: int, n: int = N, d: int = D) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64),
            torch.randn(n, d, generator=g, dtype=torch.float64))


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _var(values: list[float], ddof: int) -> float:
    m = _mean(values)
    return sum((v - m) ** 2 for v in values) / (len(values) - ddof)


def _column(z: list[list[float]], k: int) -> list[float]:
    return [row[k] for row in z]


def test_byol_loss_matches_loop_reference():
    p, z = _pair(0)
    expected = _mean([2 - 2 * _cos(p[i].tolist(), z[i].tolist()) for i in range(N)])
    assert byol_loss(p, z).item() == pytest.approx(expected, rel=1e-12)


def test_byol_loss_is_zero_for_parallel_and_four_for_opposite_vectors():
    p, _ = _pair(1)
    assert byol_loss(p, 3 * p).item() == pytest.approx(0.0, abs=1e-12)
    assert byol_loss(p, -p).item() == pytest.approx(4.0, rel=1e-12)


def test_simsiam_loss_matches_loop_reference():
    p, z = _pair(2)
    expected = -_mean([_cos(p[i].tolist(), z[i].tolist()) for i in range(N)])
    assert simsiam_loss(p, z).item() == pytest.approx(expected, rel=1e-12)


def test_simsiam_loss_stops_the_gradient_into_z():
    p, z = _pair(3)
    p.requires_grad_(True)
    z.requires_grad_(True)
    simsiam_loss(p, z).backward()
    assert z.grad is None
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_byol_loss_lets_the_gradient_reach_z_when_the_caller_does():
    p, z = _pair(4)
    z.requires_grad_(True)
    byol_loss(p, z).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def _barlow_reference(z1: torch.Tensor, z2: torch.Tensor, lambda_: float, eps: float) -> tuple[float, float]:
    a, b = z1.tolist(), z2.tolist()
    n, d = len(a), len(a[0])

    def standardised(z: list[list[float]], k: int) -> list[float]:
        col = _column(z, k)
        m, v = _mean(col), _var(col, ddof=0)
        return [(x - m) / math.sqrt(v + eps) for x in col]

    sa = [standardised(a, k) for k in range(d)]
    sb = [standardised(b, k) for k in range(d)]
    on, off = 0.0, 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(sa[i][s] * sb[j][s] for s in range(n)) / n
            if i == j:
                on += (1 - c_ij) ** 2
            else:
                off += c_ij ** 2
    return on, off


def test_barlow_twins_matches_loop_reference():
    z1, z2 = _pair(5)
    on, off = _barlow_reference(z1, z2, 5e-3, 1e-5)
    terms = barlow_twins_terms(z1, z2, lambda_=5e-3)
    assert terms["on_diagonal"].item() == pytest.approx(on, rel=1e-10)
    assert terms["off_diagonal"].item() == pytest.approx(off, rel=1e-10)
    assert barlow_twins_loss(z1, z2, lambda_=0.3).item() == pytest.approx(on + 0.3 * off, rel=1e-10)


def test_barlow_twins_identical_inputs_have_no_on_diagonal_term():
    z, _ = _pair(6, n=32)
    terms = barlow_twins_terms(z, z.clone(), eps=0.0)
    assert terms["on_diagonal"].item() == pytest.approx(0.0, abs=1e-20)
    # The default eps of BatchNorm leaves each c_ii = var / (var + eps), a hair under 1.
    assert barlow_twins_terms(z, z.clone())["on_diagonal"].item() < 1e-8


def test_barlow_twins_is_invariant_to_per_dimension_affine_rescaling():
    z1, z2 = _pair(7)
    scale = torch.tensor([0.5, 2.0, 3.0, 10.0, 0.1], dtype=torch.float64)
    shift = torch.tensor([1.0, -4.0, 0.0, 7.0, 2.0], dtype=torch.float64)
    before = barlow_twins_loss(z1, z2, eps=0.0)
    after = barlow_twins_loss(z1 * scale + shift, z2, eps=0.0)
    assert after.item() == pytest.approx(before.item(), rel=1e-10)


def _vicreg_reference(z1: torch.Tensor, z2: torch.Tensor, eps: float) -> tuple[float, float, float]:
    a, b = z1.tolist(), z2.tolist()
    n, d = len(a), len(a[0])
    invariance = sum((a[s][k] - b[s][k]) ** 2 for s in range(n) for k in range(d)) / (n * d)

    def hinge(z: list[list[float]]) -> float:
        return _mean([max(0.0, 1 - math.sqrt(_var(_column(z, k), ddof=1) + eps)) for k in range(d)])

    def cov_penalty(z: list[list[float]]) -> float:
        means = [_mean(_column(z, k)) for k in range(d)]
        total = 0.0
        for i in range(d):
            for j in range(d):
                if i != j:
                    cov = sum((z[s][i] - means[i]) * (z[s][j] - means[j]) for s in range(n)) / (n - 1)
                    total += cov ** 2
        return total / d

    return invariance, (hinge(a) + hinge(b)) / 2, cov_penalty(a) + cov_penalty(b)


def test_vicreg_terms_match_loop_reference():
    z1, z2 = _pair(8)
    # Shrink one branch so the variance hinge is active on every dimension.
    z1 = 0.3 * z1
    inv, var, cov = _vicreg_reference(z1, z2, 1e-4)
    terms = vicreg_terms(z1, z2)
    assert terms["invariance"].item() == pytest.approx(inv, rel=1e-10)
    assert terms["variance"].item() == pytest.approx(var, rel=1e-10)
    assert terms["covariance"].item() == pytest.approx(cov, rel=1e-10)
    assert var > 0
    expected = 25.0 * inv + 25.0 * var + 1.0 * cov
    assert terms["loss"].item() == pytest.approx(expected, rel=1e-10)
    weighted = vicreg_loss(z1, z2, sim_weight=2.0, var_weight=3.0, cov_weight=5.0)
    assert weighted.item() == pytest.approx(2.0 * inv + 3.0 * var + 5.0 * cov, rel=1e-10)


def test_vicreg_variance_term_vanishes_when_every_std_exceeds_one():
    z1, z2 = _pair(9, n=64)
    assert vicreg_terms(10 * z1, 10 * z2)["variance"].item() == 0.0


def test_vicreg_collapsed_batch_has_variance_term_one():
    z = torch.ones(N, D, dtype=torch.float64)
    terms = vicreg_terms(z, z, eps=0.0)
    assert terms["variance"].item() == pytest.approx(1.0)
    assert terms["covariance"].item() == 0.0
    assert terms["invariance"].item() == 0.0


@pytest.mark.parametrize("scale", [0.0, 1e-20, 1e6])
def test_negative_free_losses_are_finite_with_finite_gradients_at_extreme_scales(scale):
    z1, z2 = _pair(10)
    z1 = (z1 * scale).float().requires_grad_(True)
    z2 = (z2 * scale).float().requires_grad_(True)
    for fn in (byol_loss, simsiam_loss, barlow_twins_loss, vicreg_loss):
        z1.grad = None
        value = fn(z1, z2)
        value.backward()
        assert torch.isfinite(value), fn.__name__
        assert torch.isfinite(z1.grad).all(), fn.__name__


def test_negative_free_losses_reject_mismatched_shapes():
    z1, z2 = _pair(11)
    for fn in (byol_loss, simsiam_loss, barlow_twins_loss, vicreg_loss):
        with pytest.raises(ValueError):
            fn(z1, z2[:, :-1])
