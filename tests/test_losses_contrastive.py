"""NT-Xent, InfoNCE, InstDisc's NCE and SupCon against float64 loop references written term by term."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_zoo.losses.contrastive import estimate_nce_normaliser, info_nce, invaspread_loss, nce, nt_xent, supcon

N, D = 6, 5
LABELS = [0, 1, 0, 2, 1, 0]


def _randn(seed: int, *shape: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _log_sum_exp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _rows(t: torch.Tensor) -> list[list[float]]:
    return [_unit(r) for r in t.tolist()]


def _nt_xent_loop(z1, z2, t, bank=None) -> float:
    views = _rows(z1) + _rows(z2)
    extra = _rows(bank) if bank is not None else []
    n = len(views) // 2
    total = 0.0
    for a, anchor in enumerate(views):
        pos = a + n if a < n else a - n
        candidates = [_dot(anchor, views[k]) / t for k in range(2 * n) if k != a]
        candidates += [_dot(anchor, e) / t for e in extra]
        total += -(_dot(anchor, views[pos]) / t - _log_sum_exp(candidates))
    return total / (2 * n)


def _finite_loss_and_grads(loss_fn, *inputs: torch.Tensor) -> torch.Tensor:
    leaves = [x.detach().float().requires_grad_(True) for x in inputs]
    loss = loss_fn(*leaves)
    loss.backward()
    assert torch.isfinite(loss)
    for leaf in leaves:
        assert torch.isfinite(leaf.grad).all()
    return loss


# ---------------------------------------------------------------- NT-Xent


@pytest.mark.parametrize("t", [1e-3, 0.1, 0.5, 2.0, 1e3])
def test_nt_xent_matches_loop_reference(t):
    z1, z2 = _randn(0, N, D), _randn(1, N, D)
    assert nt_xent(z1, z2, t).item() == pytest.approx(_nt_xent_loop(z1, z2, t), rel=1e-10)


@pytest.mark.parametrize("t", [0.2, 1.0])
def test_nt_xent_with_extra_negatives_matches_loop_reference_with_bank_appended(t):
    z1, z2, bank = _randn(2, N, D), _randn(3, N, D), _randn(4, 7, D)
    got = nt_xent(z1, z2, t, extra_negatives=bank).item()
    assert got == pytest.approx(_nt_xent_loop(z1, z2, t, bank), rel=1e-10)
    assert got > nt_xent(z1, z2, t).item()  # more negatives can only raise each anchor's partition


def test_nt_xent_is_invariant_to_the_scale_of_its_inputs():
    z1, z2, bank = _randn(5, N, D), _randn(6, N, D), _randn(7, 3, D)
    base = nt_xent(z1, z2, 0.3, bank)
    assert nt_xent(4.0 * z1, 0.1 * z2, 0.3, 9.0 * bank).item() == pytest.approx(base.item(), rel=1e-12)


def test_nt_xent_of_a_single_pair_without_negatives_is_zero():
    z = _randn(8, 1, D)
    assert nt_xent(z, _randn(9, 1, D)).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("t", [1e-3, 1e3])
def test_nt_xent_stays_finite_with_finite_gradients_at_extreme_temperatures(t):
    z1 = _randn(10, N, D)
    z2 = z1.clone()  # identical views: cosine 1 everywhere on the positive diagonal
    _finite_loss_and_grads(lambda a, b, m: nt_xent(a, b, t, m), z1, z2, _randn(11, 4, D))


def test_nt_xent_gradients_match_finite_differences():
    z1, z2 = _randn(12, 4, 3).requires_grad_(True), _randn(13, 4, 3).requires_grad_(True)
    bank = _randn(14, 2, 3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b, m: nt_xent(a, b, 0.4, m), (z1, z2, bank))


def test_nt_xent_rejects_mismatched_views_and_non_positive_temperature():
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(_randn(0, N, D), _randn(1, N + 1, D))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(_randn(0, N, D), _randn(1, N, D), 0.0)
    with pytest.raises(ValueError, match="feature dimension"):
        nt_xent(_randn(0, N, D), _randn(1, N, D), extra_negatives=_randn(2, 3, D + 1))


# ---------------------------------------------------------------- InfoNCE


def _info_nce_loop(q, k, queue, t) -> float:
    qs, ks = _rows(q), _rows(k)
    total = 0.0
    for i, qi in enumerate(qs):
        if queue is None:
            logits = [_dot(qi, kj) / t for kj in ks]
            positive = logits[i]
        else:
            positive = _dot(qi, ks[i]) / t
            logits = [positive] + [_dot(qi, e) / t for e in _rows(queue)]
        total += _log_sum_exp(logits) - positive
    return total / len(qs)


@pytest.mark.parametrize("t", [1e-3, 0.07, 0.2, 1.0, 1e3])
def test_info_nce_with_queue_matches_loop_reference(t):
    q, k, queue = _randn(20, N, D), _randn(21, N, D), _randn(22, 9, D)
    assert info_nce(q, k, queue, t).item() == pytest.approx(_info_nce_loop(q, k, queue, t), rel=1e-10)


@pytest.mark.parametrize("t", [1e-3, 0.07, 0.5, 1e3])
def test_info_nce_without_queue_uses_the_batch_keys_as_negatives(t):
    q, k = _randn(23, N, D), _randn(24, N, D)
    assert info_nce(q, k, None, t).item() == pytest.approx(_info_nce_loop(q, k, None, t), rel=1e-10)


def test_info_nce_with_a_queue_does_not_use_the_other_batch_keys_as_negatives():
    q, k, queue = _randn(25, N, D), _randn(26, N, D), _randn(27, 5, D)
    per_row = [info_nce(q[i:i + 1], k[i:i + 1], queue, 0.2).item() for i in range(N)]
    assert info_nce(q, k, queue, 0.2).item() == pytest.approx(sum(per_row) / N, rel=1e-12)
    # Without a queue the other rows' keys are negatives, so the same decomposition fails.
    assert info_nce(q, k, None, 0.2).item() > 0.1
    assert all(info_nce(q[i:i + 1], k[i:i + 1], None, 0.2).item() == 0.0 for i in range(N))
    # The positive at index 0: a key equal to its query and an orthogonal queue give a loss near 0.
    e = torch.eye(D, dtype=torch.float64)
    assert info_nce(e[:1], e[:1], e[1:], 0.01).item() == pytest.approx(math.log1p(4 * math.exp(-100)))


@pytest.mark.parametrize("t", [1e-3, 1e3])
@pytest.mark.parametrize("with_queue", [True, False])
def test_info_nce_stays_finite_with_finite_gradients_at_extreme_temperatures(t, with_queue):
    q = _randn(29, N, D)
    queue = _randn(30, 8, D)
    if with_queue:
        _finite_loss_and_grads(lambda a, b, m: info_nce(a, b, m, t), q, q.clone(), queue)
    else:
        _finite_loss_and_grads(lambda a, b: info_nce(a, b, None, t), q, q.clone())


def test_info_nce_gradients_match_finite_differences():
    q, k, queue = (_randn(s, *shape).requires_grad_(True) for s, shape in
                   [(31, (4, 3)), (32, (4, 3)), (33, (5, 3))])
    assert torch.autograd.gradcheck(lambda a, b, m: info_nce(a, b, m, 0.3), (q, k, queue))
    assert torch.autograd.gradcheck(lambda a, b: info_nce(a, b, None, 0.3), (q, k))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_info_nce_with_a_queue_in_low_precision_matches_float64(precision):
    """The queue form keeps its [N, K] products in the autocast dtype; the loss and every gradient stay
    as close to float64 as the plain concatenate-and-cross-entropy form gets: here the plain form's
    bf16 gradients are off by up to 1.6% of their largest entry (the queue's), ours by up to 1.3%."""
    q64, k64, queue64 = _randn(34, 64, 16), _randn(35, 64, 16), _randn(36, 512, 16)
    grads64 = [t.clone().requires_grad_(True) for t in (q64, k64, queue64)]
    loss64 = info_nce(*grads64, 0.07)
    loss64.backward()
    leaves = [t.float().requires_grad_(True) for t in (q64, k64, queue64)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = info_nce(*leaves, 0.07)
    loss.backward()
    tol = 2e-5 if precision == "fp32" else 2e-2
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(loss64.item(), rel=tol / 10)
    for got, want in zip(leaves, grads64):
        assert got.grad.dtype == torch.float32
        assert (got.grad.double() - want.grad).abs().max() <= tol * want.grad.abs().max()


def test_info_nce_rejects_an_empty_queue():
    with pytest.raises(ValueError, match="at least one key"):
        info_nce(_randn(37, N, D), _randn(38, N, D), _randn(39, 0, D))


# ---------------------------------------------------------------- InstDisc NCE


def _nce_loop(pos, neg, log_z, n_data) -> float:
    m = len(neg[0])
    noise = m / n_data
    total = 0.0
    for p_logit, row in zip(pos, neg):
        p = math.exp(p_logit) / math.exp(log_z)
        total -= math.log(p / (p + noise))
        for logit in row:
            h = math.exp(logit) / math.exp(log_z)
            h = h / (h + noise)
            total -= math.log(1.0 - h)
    return total / len(pos)


@pytest.mark.parametrize("t", [0.07, 0.5, 1.0])
@pytest.mark.parametrize("n_data", [50, 1000])
def test_nce_matches_loop_reference(t, n_data):
    f, bank = _randn(40, N, D), _randn(41, 1 + N * 4, D)
    f = f / f.norm(dim=1, keepdim=True)
    bank = bank / bank.norm(dim=1, keepdim=True)
    pos = (f * bank[:N]).sum(dim=1) / t
    neg = torch.einsum("nd,nmd->nm", f, bank[1:].view(N, 4, D)) / t
    log_z = math.log(n_data) + math.log(torch.exp(neg).mean().item())
    expected = _nce_loop(pos.tolist(), neg.tolist(), log_z, n_data)
    assert nce(pos, neg, log_z, n_data).item() == pytest.approx(expected, rel=1e-10)
    assert nce(pos, neg, torch.tensor(log_z, dtype=torch.float64), n_data).item() == \
        pytest.approx(expected, rel=1e-10)


def test_estimate_nce_normaliser_matches_monte_carlo_loop_and_carries_no_gradient():
    neg = (_randn(42, N, 4) * 3.0).requires_grad_(True)
    values = [v for row in neg.tolist() for v in row]
    expected = math.log(1000 * sum(math.exp(v) for v in values) / len(values))
    log_z = estimate_nce_normaliser(neg, 1000)
    assert log_z.dim() == 0 and not log_z.requires_grad
    assert log_z.item() == pytest.approx(expected, rel=1e-12)


def test_nce_loss_falls_as_the_positive_logit_rises_and_the_negatives_fall():
    pos, neg = _randn(43, N), _randn(44, N, 4)
    base = nce(pos, neg, 2.0, 100).item()
    assert nce(pos + 1.0, neg, 2.0, 100).item() < base
    assert nce(pos, neg - 1.0, 2.0, 100).item() < base


def test_nce_and_its_normaliser_stay_finite_for_logits_of_a_tiny_temperature():
    pos = _randn(45, N) * 1e3  # cosines / 1e-3
    neg = _randn(46, N, 4) * 1e3
    log_z = estimate_nce_normaliser(neg.float(), 10_000)
    assert torch.isfinite(log_z)
    _finite_loss_and_grads(lambda p, q: nce(p, q, log_z, 10_000), pos, neg)


def test_nce_rejects_inconsistent_shapes_and_no_noise_samples():
    with pytest.raises(ValueError, match=r"\[N\]"):
        nce(_randn(0, N), _randn(1, N + 1, 3), 0.0, 10)
    with pytest.raises(ValueError, match="m >= 1"):
        nce(_randn(0, N), _randn(1, N, 0), 0.0, 10)
    with pytest.raises(ValueError, match="num_data"):
        estimate_nce_normaliser(_randn(1, N, 3), 0)


# ---------------------------------------------------------------- SupCon


def _supcon_loop(features, labels, t, base_t) -> float:
    n, v, _ = features.shape
    views = [(i, _unit(features[i, k].tolist())) for k in range(v) for i in range(n)]
    group = [labels[i] if labels is not None else i for i, _ in views]
    per_anchor = []
    for a, (_, za) in enumerate(views):
        others = [b for b in range(len(views)) if b != a]
        positives = [p for p in others if group[p] == group[a]]
        if not positives:
            continue
        log_denominator = _log_sum_exp([_dot(za, views[b][1]) / t for b in others])
        mean_log_prob = sum(_dot(za, views[p][1]) / t - log_denominator for p in positives) / len(positives)
        per_anchor.append(-(t / base_t) * mean_log_prob)
    return sum(per_anchor) / len(per_anchor)


@pytest.mark.parametrize("t,base_t", [(0.07, 0.07), (0.1, 0.07), (0.5, 1.0), (1e-3, 1e-3), (1e3, 0.07)])
@pytest.mark.parametrize("v", [1, 2, 3])
def test_supcon_with_labels_matches_loop_reference(t, base_t, v):
    features = _randn(50, N, v, D)
    labels = torch.tensor(LABELS)
    expected = _supcon_loop(features, LABELS, t, base_t)  # with V = 1, the lone label-2 sample is left out
    assert supcon(features, labels, t, base_t).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("t", [0.1, 0.7])
def test_supcon_without_labels_matches_loop_reference_and_equals_nt_xent_for_two_views(t):
    features = _randn(51, N, 2, D)
    got = supcon(features, None, t, t).item()
    assert got == pytest.approx(_supcon_loop(features, None, t, t), rel=1e-10)
    assert got == pytest.approx(nt_xent(features[:, 0], features[:, 1], t).item(), rel=1e-10)


def test_supcon_leaves_anchors_without_positives_out_of_the_mean():
    features = _randn(52, N, 1, D)
    labels = [0, 1, 0, 2, 3, 0]  # one view each: samples 1, 3 and 4 have no positive
    got = supcon(features, torch.tensor(labels), 0.2, 0.2)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(_supcon_loop(features, labels, 0.2, 0.2), rel=1e-10)


def test_supcon_without_any_positive_is_zero_and_backpropagates():
    features = _randn(53, N, 1, D).requires_grad_(True)
    loss = supcon(features, torch.arange(N))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(features.grad, torch.zeros_like(features))
    assert supcon(features, None).item() == 0.0  # one view and no labels: no positives either


@pytest.mark.parametrize("t", [1e-3, 1e3])
def test_supcon_stays_finite_with_finite_gradients_at_extreme_temperatures(t):
    base = _randn(54, N, 1, D)
    features = torch.cat([base, base, _randn(55, N, 1, D)], dim=1)  # duplicated views
    _finite_loss_and_grads(lambda f: supcon(f, torch.tensor(LABELS), t, 0.07), features)


def test_supcon_gradients_match_finite_differences():
    features = _randn(56, 4, 2, 3).requires_grad_(True)
    labels = torch.tensor([0, 1, 0, 1])
    assert torch.autograd.gradcheck(lambda f: supcon(f, labels, 0.3, 0.5), (features,))


def test_supcon_rejects_features_without_a_view_axis_and_mislabelled_batches():
    with pytest.raises(ValueError, match=r"\[N, V, D\]"):
        supcon(_randn(0, N, D))
    with pytest.raises(ValueError, match="labels"):
        supcon(_randn(0, N, 2, D), torch.arange(N + 1))


# ---------------------------------------------------------------- InvaSpread


def _invaspread_loop(z1, z2, t) -> float:
    """Ye et al. 2019 term by term: every feature x is classified among the 2N - 1 others."""
    feats = _rows(z1) + _rows(z2)
    n = len(feats) // 2
    total = 0.0
    for a, x in enumerate(feats):
        others = [k for k in range(2 * n) if k != a]
        denominator = sum(math.exp(_dot(feats[k], x) / t) for k in others)
        pos = a + n if a < n else a - n
        total += math.log(math.exp(_dot(feats[pos], x) / t) / denominator)
        for k in others:
            if k != pos:
                total += math.log(1.0 - math.exp(_dot(feats[k], x) / t) / denominator)
    return -total / (2 * n)


def _invaspread_torch_loop(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """The same with autograd, weights as constants (the authors' ``.data``), one anchor at a time."""
    x = torch.cat([z1, z2]) / torch.cat([z1, z2]).norm(dim=1, keepdim=True)
    n = z1.shape[0]
    total = x.new_zeros(())
    for a in range(2 * n):
        scores = {k: torch.exp(torch.dot(x[a], x[k].detach()) / t) for k in range(2 * n) if k != a}
        denominator = sum(scores.values())
        pos = a + n if a < n else a - n
        total = total + torch.log(scores[pos] / denominator)
        for k, s in scores.items():
            if k != pos:
                total = total + torch.log(1 - s / denominator)
    return -total / (2 * n)


@pytest.mark.parametrize("t", [0.05, 0.1, 0.5, 2.0])
def test_invaspread_loss_matches_loop_reference(t):
    z1, z2 = _randn(30, N, D), _randn(31, N, D)
    assert invaspread_loss(z1, z2, t).item() == pytest.approx(_invaspread_loop(z1, z2, t), rel=1e-10)
    assert invaspread_loss(z1, z2, t, detach_weights=False).item() == pytest.approx(
        _invaspread_loop(z1, z2, t), rel=1e-10)


def test_invaspread_gradient_with_detached_weights_matches_the_loop_with_constant_weights():
    z1, z2 = _randn(32, N, D).requires_grad_(True), _randn(33, N, D).requires_grad_(True)
    grads = torch.autograd.grad(invaspread_loss(z1, z2, 0.2), (z1, z2))
    expected = torch.autograd.grad(_invaspread_torch_loop(z1, z2, 0.2), (z1, z2))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)


def test_invaspread_full_gradient_matches_finite_differences():
    z1, z2 = _randn(34, 3, 4).requires_grad_(True), _randn(35, 3, 4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: invaspread_loss(a, b, 0.3, detach_weights=False), (z1, z2))


def test_invaspread_adds_a_spreading_term_to_nt_xent():
    z1, z2 = _randn(36, N, D), _randn(37, N, D)
    assert invaspread_loss(z1, z2, 0.1) > nt_xent(z1, z2, 0.1)
    # With one image there are no negatives and the two losses agree (both 0: the positive is the only other).
    assert invaspread_loss(z1[:1], z2[:1], 0.1).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("t", [1e-3, 1e3])
def test_invaspread_stays_finite_with_finite_gradients_at_extreme_temperatures(t):
    _finite_loss_and_grads(lambda a, b: invaspread_loss(a, b, t, detach_weights=False), _randn(38, N, D),
                           _randn(39, N, D))


def test_invaspread_log_of_not_being_a_dominant_negative_is_exact_in_float32():
    # Anchor 0's nearest other is a negative 50 nats above everything else: P -> 1 in float32, yet
    # log(1 - P) = -50 - log(1 + e^-40) is representable and must come out, not -inf.
    from ssl_zoo.losses.contrastive import _log_one_minus_softmax

    logits = torch.tensor([[float("-inf"), 0.0, -50.0, -90.0]])
    out = _log_one_minus_softmax(logits)
    expected = [0.0, -50.0, _log_sum_exp([0.0, -90.0]) - _log_sum_exp([0.0, -50.0, -90.0]),
                _log_sum_exp([0.0, -50.0]) - _log_sum_exp([0.0, -50.0, -90.0])]
    torch.testing.assert_close(out[0], torch.tensor(expected), rtol=1e-6, atol=1e-6)


def test_invaspread_rejects_mismatched_views_and_non_positive_temperature():
    with pytest.raises(ValueError, match="same shape"):
        invaspread_loss(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        invaspread_loss(torch.randn(3, 4), torch.randn(3, 4), 0.0)
