"""Colorization's rebalanced soft cross-entropy and class-rebalancing weights against float64 loop references."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_zoo.losses.colorization import rebalancing_weights, soft_cross_entropy


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference_soft_cross_entropy(logits, targets, weights) -> float:
    total = 0.0
    for n in range(logits.shape[0]):
        row = [float(v) for v in logits[n]]
        log_norm = math.log(sum(math.exp(v) for v in row))
        ce = -sum(float(targets[n, q]) * (row[q] - log_norm) for q in range(len(row)))
        total += (1.0 if weights is None else float(weights[n])) * ce
    return total / logits.shape[0]


@pytest.mark.parametrize("weighted", [False, True])
def test_soft_cross_entropy_matches_a_loop(weighted):
    logits = torch.randn(6, 5, generator=_gen(0), dtype=torch.float64)
    targets = torch.rand(6, 5, generator=_gen(1), dtype=torch.float64)
    targets = targets / targets.sum(dim=1, keepdim=True)
    weights = torch.rand(6, generator=_gen(2), dtype=torch.float64) if weighted else None
    got = soft_cross_entropy(logits, targets, weights)
    assert abs(got.item() - reference_soft_cross_entropy(logits, targets, weights)) < 1e-12


def reference_weights(counts, centres, lam, sigma) -> list[float]:
    q = len(counts)
    total = sum(counts)
    prior = [c / total for c in counts]
    smooth = []
    for i in range(q):
        s = 0.0
        for j in range(q):
            d2 = sum((float(centres[i, k]) - float(centres[j, k])) ** 2 for k in range(centres.shape[1]))
            s += math.exp(-d2 / (2 * sigma ** 2)) * prior[j]
        smooth.append(s)
    z = sum(smooth)
    smooth = [s / z for s in smooth]
    raw = [1.0 / ((1 - lam) * p + lam / q) for p in smooth]
    scale = sum(p * w for p, w in zip(smooth, raw))
    return [w / scale for w in raw]


def test_rebalancing_weights_match_a_loop_and_average_to_one_under_the_prior():
    centres = torch.randn(7, 2, generator=_gen(3), dtype=torch.float64) * 10
    counts = torch.tensor([50, 0, 3, 9, 0, 1, 200])
    got = rebalancing_weights(counts, centres, lam=0.5, sigma=5.0)
    want = reference_weights(counts.tolist(), centres, 0.5, 5.0)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-12, rtol=0)
    # rare colours weigh more than common ones
    assert got[1] > got[6] and got[4] > got[0]


def test_uniform_prior_and_lambda_one_give_unit_weights():
    centres = torch.randn(4, 2, generator=_gen(4), dtype=torch.float64)
    torch.testing.assert_close(rebalancing_weights(torch.zeros(4, dtype=torch.long), centres, 0.5, 0.0),
                               torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(rebalancing_weights(torch.tensor([1, 5, 0, 2]), centres, 1.0, 5.0),
                               torch.ones(4, dtype=torch.float64))


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError):
        soft_cross_entropy(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError):
        rebalancing_weights(torch.zeros(3), torch.zeros(4, 2))
