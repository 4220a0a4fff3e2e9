"""Contrastive, triplet, lifted structured and N-pair losses against float64 loop references."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_zoo.losses.contrastive import supcon
from ssl_zoo.losses.metric import contrastive, lifted_structured, n_pair, triplet

N, D = 8, 5
LABELS = [0, 1, 0, 2, 1, 0, 2, 3]  # classes of 3, 2, 2 and 1 samples


def _randn(seed: int, *shape: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _dist(a: list[float], b: list[float]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _check_zero_with_graph(loss_fn, x: torch.Tensor, labels: torch.Tensor) -> None:
    x = x.detach().clone().requires_grad_(True)
    loss = loss_fn(x, labels)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(x.grad, torch.zeros_like(x))


def _check_finite_grads(loss_fn, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    x = x.detach().float().requires_grad_(True)
    loss = loss_fn(x, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all()
    return loss


def _duplicated() -> tuple[torch.Tensor, torch.Tensor]:
    """Samples 0, 1 (same label) and 2 (another label) coincide; 3..5 are distinct."""
    x = _randn(90, 6, D)
    x[1] = x[0]
    x[2] = x[0]
    return x, torch.tensor([0, 0, 1, 1, 2, 0])


# ---------------------------------------------------------------- contrastive


def _contrastive_loop(x: torch.Tensor, labels: list[int], margin: float) -> float:
    rows = x.tolist()
    terms = []
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            d = _dist(rows[i], rows[j])
            terms.append(0.5 * d * d if labels[i] == labels[j] else 0.5 * max(0.0, margin - d) ** 2)
    return sum(terms) / len(terms)


@pytest.mark.parametrize("margin", [1e-6, 0.5, 1.0, 3.0, 1e3])
def test_contrastive_matches_loop_reference(margin):
    x = _randn(0, N, D)
    expected = _contrastive_loop(x, LABELS, margin)
    assert contrastive(x, torch.tensor(LABELS), margin).item() == pytest.approx(expected, rel=1e-10)


def test_contrastive_with_duplicates_matches_loop_reference_and_has_finite_gradients():
    x, labels = _duplicated()
    expected = _contrastive_loop(x, labels.tolist(), 2.0)
    assert contrastive(x, labels, 2.0).item() == pytest.approx(expected, rel=1e-10)
    _check_finite_grads(lambda e, y: contrastive(e, y, 2.0), x, labels)


def test_contrastive_of_one_class_pulls_together_and_of_distinct_classes_only_pushes_apart():
    x = _randn(1, N, D)
    one_class = contrastive(x, torch.zeros(N, dtype=torch.long))
    assert one_class.item() == pytest.approx(_contrastive_loop(x, [0] * N, 1.0), rel=1e-10)
    all_distinct = contrastive(x, torch.arange(N), margin=1e-3)  # every pair farther than the margin
    assert all_distinct.item() == 0.0
    _check_zero_with_graph(contrastive, x[:1], torch.tensor([0]))  # a single sample: no pair


def test_contrastive_gradients_match_finite_differences():
    x = _randn(2, 6, 3).requires_grad_(True)
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    assert torch.autograd.gradcheck(lambda e: contrastive(e, labels, 2.5), (x,))


# ---------------------------------------------------------------- triplet


def _triplet_loop(x: torch.Tensor, labels: list[int], margin: float, mining: str, squared: bool) -> float:
    rows = x.tolist()
    n = len(rows)

    def d(i: int, j: int) -> float:
        return _dist(rows[i], rows[j]) ** 2 if squared else _dist(rows[i], rows[j])

    if mining == "batch_all":
        costs = [d(a, p) - d(a, q) + margin
                 for a in range(n) for p in range(n) for q in range(n)
                 if p != a and labels[p] == labels[a] and labels[q] != labels[a]]
        active = [c for c in costs if c > 0]
        return sum(active) / len(active) if active else 0.0
    per_anchor = []
    for a in range(n):
        pos = [d(a, p) for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [d(a, q) for q in range(n) if labels[q] != labels[a]]
        if pos and neg:
            per_anchor.append(max(0.0, max(pos) - min(neg) + margin))
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


@pytest.mark.parametrize("mining", ["batch_all", "batch_hard"])
@pytest.mark.parametrize("margin", [1e-6, 0.2, 1.0, 5.0])
@pytest.mark.parametrize("squared", [False, True])
def test_triplet_matches_loop_reference(mining, margin, squared):
    x = _randn(10, N, D)
    expected = _triplet_loop(x, LABELS, margin, mining, squared)
    got = triplet(x, torch.tensor(LABELS), margin, mining, squared=squared)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_triplet_batch_all_averages_only_the_triplets_that_violate_the_margin():
    # 1-D points 0 and 1 (label 0), 0.5 (label 1, inside the margin), 10 (label 2, far outside):
    # of the four triplets only the two with the near negative cost > 0, and the mean is over those two.
    x = torch.tensor([[0.0], [1.0], [0.5], [10.0]], dtype=torch.float64)
    labels = [0, 0, 1, 2]
    got = triplet(x, torch.tensor(labels), 0.2, "batch_all").item()
    assert got == pytest.approx(_triplet_loop(x, labels, 0.2, "batch_all", False), rel=1e-12)
    assert got == pytest.approx(((1.0 - 0.5 + 0.2) + (1.0 - 0.5 + 0.2)) / 2, rel=1e-12)


@pytest.mark.parametrize("mining", ["batch_all", "batch_hard"])
def test_triplet_is_zero_with_graph_without_a_negative_or_a_positive_pair(mining):
    x = _randn(11, N, D)
    _check_zero_with_graph(lambda e, y: triplet(e, y, mining=mining), x, torch.zeros(N, dtype=torch.long))
    _check_zero_with_graph(lambda e, y: triplet(e, y, mining=mining), x, torch.arange(N))


@pytest.mark.parametrize("mining", ["batch_all", "batch_hard"])
def test_triplet_with_duplicates_matches_loop_reference_and_has_finite_gradients(mining):
    x, labels = _duplicated()
    expected = _triplet_loop(x, labels.tolist(), 0.5, mining, False)
    assert triplet(x, labels, 0.5, mining).item() == pytest.approx(expected, rel=1e-10)
    loss = _check_finite_grads(lambda e, y: triplet(e, y, 0.5, mining), x, labels)
    assert loss.item() > 0  # the coincident negative violates the margin


@pytest.mark.parametrize("mining", ["batch_all", "batch_hard"])
def test_triplet_stays_finite_for_huge_margins(mining):
    _check_finite_grads(lambda e, y: triplet(e, y, 1e6, mining), _randn(12, N, D), torch.tensor(LABELS))


def test_triplet_rejects_unknown_mining_naming_the_allowed_values():
    with pytest.raises(ValueError, match="batch_all, batch_hard"):
        triplet(_randn(13, N, D), torch.tensor(LABELS), mining="semi_hard")


# ---------------------------------------------------------------- lifted structured


def _lifted_loop(x: torch.Tensor, labels: list[int], margin: float) -> float:
    rows = x.tolist()
    n = len(rows)
    total, num_pos = 0.0, 0
    for i in range(n):
        for j in range(i + 1, n):
            if labels[i] != labels[j]:
                continue
            num_pos += 1
            exponents = [margin - _dist(rows[i], rows[k]) for k in range(n) if labels[k] != labels[i]]
            exponents += [margin - _dist(rows[j], rows[k]) for k in range(n) if labels[k] != labels[j]]
            top = max(exponents)  # shift so a huge margin does not overflow the reference either
            j_ij = top + math.log(sum(math.exp(e - top) for e in exponents)) + _dist(rows[i], rows[j])
            total += max(0.0, j_ij) ** 2
    return total / (2 * num_pos)


@pytest.mark.parametrize("margin", [1e-6, 0.1, 1.0, 5.0, 1e3])
def test_lifted_structured_matches_loop_reference(margin):
    x = _randn(20, N, D)
    expected = _lifted_loop(x, LABELS, margin)
    assert lifted_structured(x, torch.tensor(LABELS), margin).item() == pytest.approx(expected, rel=1e-10)


def test_lifted_structured_is_zero_when_every_positive_pair_beats_its_negatives_by_far():
    # Two tight clusters 100 apart: J_ij ≈ log(4·exp(1 - 100)) + small < 0 for each pair.
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [100.0, 0.0], [100.1, 0.0]], dtype=torch.float64)
    assert lifted_structured(x, torch.tensor([0, 0, 1, 1])).item() == 0.0


def test_lifted_structured_is_zero_with_graph_for_one_class_or_no_positive_pair():
    x = _randn(21, N, D)
    _check_zero_with_graph(lifted_structured, x, torch.zeros(N, dtype=torch.long))
    _check_zero_with_graph(lifted_structured, x, torch.arange(N))


def test_lifted_structured_with_duplicates_matches_loop_reference_and_has_finite_gradients():
    x, labels = _duplicated()
    expected = _lifted_loop(x, labels.tolist(), 1.0)
    assert lifted_structured(x, labels).item() == pytest.approx(expected, rel=1e-10)
    _check_finite_grads(lifted_structured, x, labels)
    _check_finite_grads(lambda e, y: lifted_structured(e, y, 1e4), x, labels)


def test_lifted_structured_gradients_match_finite_differences():
    x = _randn(22, 6, 3).requires_grad_(True)
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    assert torch.autograd.gradcheck(lambda e: lifted_structured(e, labels, 2.0), (x,))


# ---------------------------------------------------------------- N-pair


def _n_pair_loop(x: torch.Tensor, labels: list[int], l2_reg: float) -> float:
    rows = x.tolist()
    members: dict[int, list[int]] = {}
    for idx, lab in enumerate(labels):
        members.setdefault(lab, []).append(idx)
    pairs = [(m[0], m[1]) for m in members.values() if len(m) >= 2]  # dicts keep first-seen order
    if not pairs:
        return 0.0
    loss = 0.0
    for i, (a, p) in enumerate(pairs):
        anchor = rows[a]
        others = sum(math.exp(_dot(anchor, rows[pj]) - _dot(anchor, rows[p]))
                     for j, (_, pj) in enumerate(pairs) if j != i)
        loss += math.log(1.0 + others)
    loss /= len(pairs)
    chosen = [rows[k] for pair in pairs for k in pair]
    return loss + l2_reg * sum(_dot(f, f) for f in chosen) / len(chosen)


@pytest.mark.parametrize("l2_reg", [0.0, 0.002, 0.25])
@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0])
def test_n_pair_matches_loop_reference(l2_reg, scale):
    x = _randn(30, N, D) * scale
    expected = _n_pair_loop(x, LABELS, l2_reg)
    assert n_pair(x, torch.tensor(LABELS), l2_reg).item() == pytest.approx(expected, rel=1e-10)


def test_n_pair_takes_the_first_two_samples_of_each_class_and_ignores_the_rest():
    x = _randn(31, N, D)
    labels = torch.tensor(LABELS)
    moved = x.clone()
    moved[5] = 50.0 * _randn(32, D)  # the third sample of class 0 and the lone class-3 sample
    moved[7] = -50.0 * _randn(33, D)
    assert n_pair(moved, labels).item() == pytest.approx(n_pair(x, labels).item(), rel=1e-12)


def test_n_pair_is_zero_with_graph_without_positive_pairs_and_log_one_with_a_single_pair():
    x = _randn(34, N, D)
    _check_zero_with_graph(lambda e, y: n_pair(e, y, 0.1), x, torch.arange(N))
    single = torch.zeros(N, dtype=torch.long)  # one class: one pair, no negatives
    assert n_pair(x, single).item() == 0.0
    assert n_pair(x, single, 0.1).item() == pytest.approx(_n_pair_loop(x, [0] * N, 0.1), rel=1e-12)


def test_n_pair_stays_finite_for_large_embeddings_and_duplicates():
    x, labels = _duplicated()
    _check_finite_grads(n_pair, x * 1e3, labels)
    _check_finite_grads(n_pair, _randn(35, N, D) * 1e3, torch.tensor(LABELS))


def test_n_pair_gradients_match_finite_differences():
    x = _randn(36, 6, 3).requires_grad_(True)
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    assert torch.autograd.gradcheck(lambda e: n_pair(e, labels, 0.05), (x,))


@pytest.mark.parametrize("loss_fn", [contrastive, triplet, lifted_structured, n_pair])
def test_metric_losses_reject_labels_that_do_not_match_the_batch(loss_fn):
    with pytest.raises(ValueError, match="labels"):
        loss_fn(_randn(37, N, D), torch.arange(N - 1))


# ---------------------------------------------------------------- one class, identical embeddings


def _supcon_one_view(x: torch.Tensor, labels: torch.Tensor, t: float = 0.1) -> torch.Tensor:
    return supcon(x[:, None], labels, t, t)


@pytest.mark.parametrize("loss_fn", [contrastive, triplet, lifted_structured, n_pair, _supcon_one_view],
                         ids=["contrastive", "triplet", "lifted_structured", "n_pair", "supcon"])
def test_a_batch_of_one_class_and_identical_embeddings_gives_finite_loss_and_gradients(loss_fn):
    x = _randn(60, 1, D).repeat(N, 1)
    _check_finite_grads(loss_fn, x, torch.zeros(N, dtype=torch.long))


@pytest.mark.parametrize("t", [1e-3, 0.1, 1e3])
def test_supcon_of_one_class_of_identical_views_is_log_of_the_other_views(t):
    # All 2N views coincide: each of the 2N - 1 others is a positive as likely as any, -log(1 / (2N - 1)).
    x = _randn(61, 1, 1, D).repeat(N, 2, 1)
    loss = supcon(x, torch.zeros(N, dtype=torch.long), t, t)
    assert loss.item() == pytest.approx(math.log(2 * N - 1), rel=1e-9)
