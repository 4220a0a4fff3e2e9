"""SwAV's Sinkhorn-Knopp and swapped prediction against float64 loop references, on one and two ranks."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from ssl_zoo.losses.clustering import local_aggregation_loss, sinkhorn, swav_loss

B, K = 8, 5


def _scores(seed: int, b: int = B, k: int = K, scale: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(b, k, generator=g, dtype=torch.float64)


def _sinkhorn_reference(scores: torch.Tensor, epsilon: float, iterations: int) -> list[list[float]]:
    """SwAV's algorithm literally, entry by entry: Q = exp(s/ε)ᵀ, rows to 1/K, columns to 1/B, then ·B."""
    s = scores.tolist()
    b, k = len(s), len(s[0])
    q = [[math.exp(s[j][p] / epsilon) for j in range(b)] for p in range(k)]  # [K][B]
    total = sum(sum(row) for row in q)
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        for p in range(k):
            row_sum = sum(q[p])
            q[p] = [v / row_sum / k for v in q[p]]
        for j in range(b):
            col_sum = sum(q[p][j] for p in range(k))
            for p in range(k):
                q[p][j] = q[p][j] / col_sum / b
    return [[q[p][j] * b for p in range(k)] for j in range(b)]  # [B][K]


class FakeProcessGroup:
    """Ranks simulated by threads: a collective waits for every rank, then each gets the reduction."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.slots: list[torch.Tensor | None] = [None] * world_size
        self.barrier = threading.Barrier(world_size, timeout=10)

    def collective(self, rank: int, combine):
        def reduce(t: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = t.clone()
            self.barrier.wait()
            out = combine(torch.stack(self.slots))
            # Nobody overwrites a slot until everybody has read them all.
            self.barrier.wait()
            return out
        return reduce

    def run(self, fn, inputs: list) -> list:
        with ThreadPoolExecutor(self.world_size) as pool:
            futures = [pool.submit(fn, rank, x) for rank, x in enumerate(inputs)]
            return [f.result() for f in futures]


@pytest.mark.parametrize("iterations", [1, 3])
def test_sinkhorn_matches_loop_reference(iterations):
    scores = _scores(0)
    expected = torch.tensor(_sinkhorn_reference(scores, 0.05, iterations), dtype=torch.float64)
    torch.testing.assert_close(sinkhorn(scores, epsilon=0.05, iterations=iterations), expected,
                               rtol=1e-10, atol=1e-12)


def test_sinkhorn_matches_loop_reference_in_float32():
    scores = _scores(1)
    expected = torch.tensor(_sinkhorn_reference(scores, 0.05, 3), dtype=torch.float32)
    codes = sinkhorn(scores.float())
    assert codes.dtype == torch.float32
    torch.testing.assert_close(codes, expected, rtol=1e-4, atol=1e-6)


def test_sinkhorn_sample_codes_sum_to_one_after_three_iterations():
    codes = sinkhorn(_scores(2, b=16, k=6, scale=1.0), iterations=3)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(16, dtype=torch.float64))
    assert (codes >= 0).all()


def test_sinkhorn_marginals_are_uniform_after_many_iterations():
    b, k = 12, 4
    codes = sinkhorn(_scores(3, b=b, k=k, scale=0.5), epsilon=0.1, iterations=500)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(b, dtype=torch.float64))
    torch.testing.assert_close(codes.sum(dim=0), torch.full((k,), b / k, dtype=torch.float64),
                               rtol=1e-8, atol=1e-8)


def test_sinkhorn_three_iterations_leave_prototype_marginals_not_yet_uniform():
    # Guards the marginal test above against passing for a trivial reason: the prototype marginal is
    # only reached in the limit, not by construction.
    codes = sinkhorn(_scores(3, b=12, k=4, scale=0.5), epsilon=0.1, iterations=3)
    assert (codes.sum(dim=0) - 3.0).abs().max() > 1e-6


def test_sinkhorn_is_finite_for_large_scores_and_small_epsilon():
    scores = _scores(4, scale=50.0).float()
    codes = sinkhorn(scores, epsilon=0.01, iterations=3)
    assert torch.isfinite(codes).all()
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(B))


def test_sinkhorn_ignores_a_constant_added_to_every_score():
    scores = _scores(5)
    torch.testing.assert_close(sinkhorn(scores + 1000.0), sinkhorn(scores), rtol=1e-9, atol=1e-12)


def test_sinkhorn_returns_codes_without_gradient():
    scores = _scores(6).requires_grad_(True)
    assert not sinkhorn(scores).requires_grad


@pytest.mark.parametrize("with_all_max", [True, False])
def test_sinkhorn_on_two_ranks_equals_the_full_batch(with_all_max):
    scores = _scores(7, b=10, scale=0.5)
    full = sinkhorn(scores, epsilon=0.05, iterations=3)
    group = FakeProcessGroup(2)

    def on_rank(rank: int, local: torch.Tensor) -> torch.Tensor:
        all_reduce = group.collective(rank, lambda s: s.sum(dim=0))
        all_max = group.collective(rank, lambda s: s.max(dim=0).values) if with_all_max else None
        return sinkhorn(local, epsilon=0.05, iterations=3, all_reduce=all_reduce, all_max=all_max)

    # Unequal halves: the global batch size must come from the reduction, not from the local one.
    parts = group.run(on_rank, [scores[:4], scores[4:]])
    torch.testing.assert_close(torch.cat(parts), full, rtol=1e-10, atol=1e-12)


def _one_far_sample(seed: int) -> torch.Tensor:
    """Scores where sample 0 lies 10 below every prototype's best: 200 at ε = 0.05, past float32's exp
    range (the fast path would leave its column at zero) but inside float64's."""
    scores = _scores(seed, b=10, scale=0.5)
    scores[0] -= 10.0
    return scores


def test_sinkhorn_falls_back_to_the_log_domain_where_a_column_underflows():
    scores = _one_far_sample(8)
    exact = sinkhorn(scores, epsilon=0.05, iterations=3)  # float64: no underflow, the fast path
    codes = sinkhorn(scores.float(), epsilon=0.05, iterations=3)
    assert torch.isfinite(codes).all()
    torch.testing.assert_close(codes.double(), exact, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(10))


def test_sinkhorn_ranks_agree_on_the_log_domain_when_one_rank_underflows():
    # Only rank 0 holds the far sample: both ranks must take the same path, or their collectives
    # would not pair up (a hang, here a barrier timeout).
    scores = _one_far_sample(9).float()
    full = sinkhorn(scores, epsilon=0.05, iterations=3)
    group = FakeProcessGroup(2)

    def on_rank(rank: int, local: torch.Tensor) -> torch.Tensor:
        return sinkhorn(local, epsilon=0.05, iterations=3,
                        all_reduce=group.collective(rank, lambda s: s.sum(dim=0)),
                        all_max=group.collective(rank, lambda s: s.max(dim=0).values))

    parts = group.run(on_rank, [scores[:4], scores[4:]])
    torch.testing.assert_close(torch.cat(parts), full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sinkhorn_log_domain_loop_gives_the_same_codes(dtype):
    scores = _scores(10, scale=0.5).to(dtype)
    torch.testing.assert_close(sinkhorn(scores, 0.05, 3, log_domain=True), sinkhorn(scores, 0.05, 3))


def test_sinkhorn_rejects_bad_arguments():
    with pytest.raises(ValueError):
        sinkhorn(torch.zeros(B))
    with pytest.raises(ValueError):
        sinkhorn(_scores(8), epsilon=0.0)
    with pytest.raises(ValueError):
        sinkhorn(_scores(8), iterations=0)


def _swav_reference(logits: list[torch.Tensor], codes: list[torch.Tensor], temperature: float) -> float:
    n_views = len(logits)
    total = 0.0
    for i, q_view in enumerate(codes):
        q = q_view.tolist()
        sub = 0.0
        for v in range(n_views):
            if v == i:
                continue
            p = logits[v].tolist()
            ce = 0.0
            for s in range(len(p)):
                z = [x / temperature for x in p[s]]
                log_norm = math.log(sum(math.exp(x) for x in z))
                ce += -sum(q[s][k] * (z[k] - log_norm) for k in range(len(z)))
            sub += ce / len(p)
        total += sub / (n_views - 1)
    return total / len(codes)


def test_swav_loss_matches_loop_reference():
    logits = [_scores(10 + v) for v in range(4)]  # 2 global views and 2 local crops
    codes = [sinkhorn(logits[0]), sinkhorn(logits[1])]
    expected = _swav_reference(logits, codes, 0.1)
    assert swav_loss(logits, codes, temperature=0.1).item() == pytest.approx(expected, rel=1e-10)


def test_swav_loss_skips_predicting_a_view_from_its_own_code():
    logits = [_scores(20 + v) for v in range(3)]
    codes = [sinkhorn(logits[0])]
    before = swav_loss(logits, codes)
    # The code view's own logits take no part in its term.
    changed = [logits[0] + torch.randn_like(logits[0]), logits[1], logits[2]]
    assert swav_loss(changed, codes).item() == pytest.approx(before.item(), rel=1e-12)
    changed_other = [logits[0], logits[1] + torch.randn_like(logits[1]), logits[2]]
    assert swav_loss(changed_other, codes).item() != pytest.approx(before.item(), rel=1e-6)


def test_swav_loss_gradient_reaches_logits_but_not_codes():
    logits = [_scores(30 + v).requires_grad_(True) for v in range(2)]
    codes = [_scores(40).softmax(dim=1).requires_grad_(True), _scores(41).softmax(dim=1).requires_grad_(True)]
    swav_loss(logits, codes).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in logits)
    assert all(q.grad is None for q in codes)


def test_swav_loss_is_finite_for_extreme_scores():
    logits = [(_scores(50 + v, scale=1e4)).float().requires_grad_(True) for v in range(2)]
    codes = [sinkhorn(x.detach(), epsilon=0.01) for x in logits]
    value = swav_loss(logits, codes, temperature=0.01)
    value.backward()
    assert torch.isfinite(value)
    assert all(torch.isfinite(p.grad).all() for p in logits)


def test_swav_loss_rejects_more_codes_than_views():
    logits = [_scores(60), _scores(61)]
    with pytest.raises(ValueError):
        swav_loss(logits, [sinkhorn(x) for x in logits + logits[:1]])


def _local_aggregation_reference(similarities: torch.Tensor, close: torch.Tensor, temperature: float) -> float:
    """-log P(C ∩ B) / P(B) literally: unnormalised probabilities summed over each set, rows without a
    close background neighbour left out of the mean."""
    total, rows = 0.0, 0
    for s_row, c_row in zip(similarities.tolist(), close.tolist()):
        p_background = sum(math.exp(s / temperature) for s in s_row)
        p_close = sum(math.exp(s / temperature) for s, c in zip(s_row, c_row) if c)
        if p_close > 0:
            total += -math.log(p_close / p_background)
            rows += 1
    return total / rows


def test_local_aggregation_loss_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    sims = torch.rand(6, 10, generator=g, dtype=torch.float64) * 2 - 1
    close = torch.rand(6, 10, generator=g) < 0.3
    close[:, 0] = True
    close[5] = False  # a row with no close neighbour among its background: left out
    for t in (0.07, 0.5):
        expected = _local_aggregation_reference(sims, close, t)
        assert math.isclose(local_aggregation_loss(sims, close, t).item(), expected, rel_tol=1e-12)


def test_local_aggregation_loss_is_zero_when_every_background_neighbour_is_close_and_pulls_close_ones_in():
    sims = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    assert local_aggregation_loss(sims, torch.ones(4, 8, dtype=torch.bool)).abs().item() < 1e-12
    close = torch.zeros(4, 8, dtype=torch.bool)
    close[:, :2] = True
    local_aggregation_loss(sims, close).backward()
    assert (sims.grad[:, :2] < 0).all() and (sims.grad[:, 2:] > 0).all()  # descent raises close, lowers others


def test_local_aggregation_loss_is_finite_at_low_temperature():
    sims = torch.tensor([[1.0, -1.0, 0.99]], dtype=torch.float32)
    loss = local_aggregation_loss(sims, torch.tensor([[False, True, False]]), temperature=0.01)
    assert torch.isfinite(loss) and loss.item() > 100
