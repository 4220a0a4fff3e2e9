"""CPC's grid InfoNCE and DIM/AMDIM's local-global estimators against float64 loop references."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_zoo.losses.mutual_information import cpc_info_nce, local_global_jsd, local_global_nce

torch.manual_seed(0)


def _softplus(x: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def cpc_reference(predictions, latents, first_step, candidates, offset):
    n, g, _, _ = latents.shape
    per_step = []
    for s, pred in enumerate(predictions):
        k = first_step + s
        terms = []
        for b in range(n):
            for i in range(g - k):
                for j in range(g):
                    scores = [float(pred[b, i, j] @ candidates[m]) for m in range(candidates.shape[0])]
                    target = offset + (b * g + (i + k)) * g + j
                    top = max(scores)
                    lse = top + math.log(sum(math.exp(v - top) for v in scores))
                    terms.append(lse - scores[target])
        per_step.append(sum(terms) / len(terms))
    return sum(per_step) / len(per_step)


def scores_reference(g, local, clip, penalty, scale=1.0):
    n, (m, length, _) = g.shape[0], local.shape
    raw = [[[scale * float(g[a] @ local[b, loc]) for loc in range(length)] for b in range(m)] for a in range(n)]
    reg = penalty * sum(v * v for a in raw for b in a for v in b) / (n * m * length)
    clipped = [[[clip * math.tanh(v / clip) if clip else v for v in row] for row in a] for a in raw]
    return clipped, reg


def nce_reference(g, local, positive, clip, penalty, scale=1.0):
    s, reg = scores_reference(g, local, clip, penalty, scale)
    n, m, length = g.shape[0], local.shape[0], local.shape[1]
    terms = []
    for a in range(n):
        negatives = [s[a][b][loc] for b in range(m) if b != positive[a] for loc in range(length)]
        for loc in range(length):
            pos = s[a][positive[a]][loc]
            denom = math.exp(pos) + sum(math.exp(v) for v in negatives)
            terms.append(-(pos - math.log(denom)))
    return sum(terms) / len(terms) + reg


def jsd_reference(g, local, positive, clip, penalty, scale=1.0):
    s, reg = scores_reference(g, local, clip, penalty, scale)
    pos_terms, neg_terms = [], []
    for a in range(g.shape[0]):
        for b in range(local.shape[0]):
            for loc in range(local.shape[1]):
                if b == positive[a]:
                    pos_terms.append(_softplus(-s[a][b][loc]))
                else:
                    neg_terms.append(_softplus(s[a][b][loc]))
    neg = sum(neg_terms) / len(neg_terms) if neg_terms else 0.0
    return sum(pos_terms) / len(pos_terms) + neg + reg


@pytest.mark.parametrize("first_step,steps", [(1, 2), (2, 1), (1, 3)])
def test_cpc_info_nce_matches_a_loop_over_every_prediction(first_step, steps):
    latents = torch.randn(3, 4, 4, 5, dtype=torch.float64)
    preds = [torch.randn(3, 4, 4, 5, dtype=torch.float64) for _ in range(steps)]
    expected = cpc_reference(preds, latents, first_step, latents.reshape(-1, 5), 0)
    got = cpc_info_nce(preds, latents, first_step)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_cpc_info_nce_with_gathered_candidates_and_an_offset():
    latents = torch.randn(2, 3, 3, 4, dtype=torch.float64)
    other_rank = torch.randn(18, 4, dtype=torch.float64)
    candidates = torch.cat([other_rank, latents.reshape(-1, 4)])  # this rank is the second
    preds = [torch.randn(2, 3, 3, 4, dtype=torch.float64)]
    expected = cpc_reference(preds, latents, 1, candidates, 18)
    got = cpc_info_nce(preds, latents, 1, candidates, offset=18)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_cpc_info_nce_rejects_steps_beyond_the_grid():
    latents = torch.randn(2, 3, 3, 4)
    with pytest.raises(ValueError, match="do not fit"):
        cpc_info_nce([latents, latents, latents], latents, 1)


def test_cpc_info_nce_is_near_zero_when_predictions_single_out_their_targets():
    latents = torch.eye(18, dtype=torch.float64).reshape(2, 3, 3, 18) * 50
    target = torch.roll(latents, shifts=-1, dims=1)  # the latent one row below (last row ignored)
    assert cpc_info_nce([target], latents, 1).item() < 1e-6


@pytest.mark.parametrize("clip,penalty,scale", [(20.0, 4e-2, 1.0), (None, 0.0, 1.0), (2.0, 0.5, 1.0),
                                                (20.0, 4e-2, 6 ** -0.5), (1.0, 0.1, 3.0)])
@pytest.mark.parametrize("estimator,reference", [(local_global_nce, nce_reference), (local_global_jsd, jsd_reference)])
def test_local_global_estimators_match_loops(estimator, reference, clip, penalty, scale):
    g = torch.randn(3, 6, dtype=torch.float64) * 2
    local = torch.randn(3, 4, 6, dtype=torch.float64) * 2
    positive = [0, 1, 2]
    got = estimator(g, local, clip=clip, penalty=penalty, scale=scale)
    assert got.item() == pytest.approx(reference(g, local, positive, clip, penalty, scale), rel=1e-10)


@pytest.mark.parametrize("estimator,reference", [(local_global_nce, nce_reference), (local_global_jsd, jsd_reference)])
def test_local_global_estimators_with_gathered_locals(estimator, reference):
    g = torch.randn(2, 5, dtype=torch.float64)
    local = torch.randn(5, 3, 5, dtype=torch.float64)
    positive = torch.tensor([2, 3])  # this rank's images sit after two images of another rank
    got = estimator(g, local, positive, clip=20.0, penalty=4e-2)
    assert got.item() == pytest.approx(reference(g, local, positive.tolist(), 20.0, 4e-2), rel=1e-10)


@pytest.mark.parametrize("estimator", [local_global_nce, local_global_jsd])
def test_local_global_estimators_stay_finite_for_huge_scores(estimator):
    g = (torch.randn(4, 8, dtype=torch.float64) * 1e4).requires_grad_()
    local = torch.randn(4, 5, 8, dtype=torch.float64) * 1e4
    for clip in (20.0, None):
        loss = estimator(g, local, clip=clip, penalty=4e-2)
        (grad,) = torch.autograd.grad(loss, g)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_clipping_bounds_the_scores_the_nce_sees():
    g = torch.randn(3, 4, dtype=torch.float64) * 100
    local = torch.randn(3, 2, 4, dtype=torch.float64) * 100
    # Every clipped score lies in (-c, c): the loss is at most log(1 + negatives·e^{2c}).
    loss = local_global_nce(g, local, clip=1.0)
    assert loss.item() <= math.log(1 + 4 * math.exp(2.0)) + 1e-12


def test_a_single_candidate_image_gives_zero_nce_with_a_gradient():
    g = torch.randn(1, 4, requires_grad=True)
    loss = local_global_nce(g, torch.randn(1, 3, 4), clip=20.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(g.grad).all()


def test_the_penalty_is_the_mean_squared_raw_score():
    g, local = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, 3, dtype=torch.float64)
    raw = torch.einsum("nd,mld->nml", g, local)
    for est in (local_global_nce, local_global_jsd):
        diff = est(g, local, clip=20.0, penalty=0.3) - est(g, local, clip=20.0, penalty=0.0)
        assert diff.item() == pytest.approx(0.3 * raw.pow(2).mean().item(), rel=1e-12)
