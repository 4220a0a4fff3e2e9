"""DINO's loss and centre update against float64 loop references, on one and two ranks."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from ssl_zoo.losses.distillation import dino_center_update, dino_loss

B, K = 6, 7


def _outputs(seed: int, views: int, b: int = B, k: int = K, scale: float = 1.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(b, k, generator=g, dtype=torch.float64) for _ in range(views)]


def _softmax(values: list[float]) -> list[float]:
    m = max(values)
    e = [math.exp(v - m) for v in values]
    return [x / sum(e) for x in e]


def _cross_entropy(t_view: torch.Tensor, s_view: torch.Tensor, center: torch.Tensor, student_temp: float,
                   teacher_temp: float) -> float:
    """Mean over the batch of -Σ_k softmax((t - c)/T_t)_k · log softmax(s/T_s)_k."""
    c = center.reshape(-1).tolist()
    t, s = t_view.tolist(), s_view.tolist()
    ce = 0.0
    for n in range(len(t)):
        q = _softmax([(t[n][k] - c[k]) / teacher_temp for k in range(len(c))])
        p = _softmax([s[n][k] / student_temp for k in range(len(c))])
        ce += -sum(q[k] * math.log(p[k]) for k in range(len(c)))
    return ce / len(t)


def _dino_reference(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor,
                    student_temp: float, teacher_temp: float) -> float:
    total, pairs = 0.0, 0
    for i, t_view in enumerate(teacher):
        for v, s_view in enumerate(student):
            if v != i:
                total += _cross_entropy(t_view, s_view, center, student_temp, teacher_temp)
                pairs += 1
    return total / pairs


def test_dino_loss_matches_loop_reference():
    student = _outputs(0, views=4)  # 2 global views and 2 local crops
    teacher = _outputs(1, views=2)
    center = _outputs(2, views=1, b=1)[0]  # [1, K]
    expected = _dino_reference(student, teacher, center, 0.1, 0.04)
    assert dino_loss(student, teacher, center).item() == pytest.approx(expected, rel=1e-10)
    expected_temps = _dino_reference(student, teacher, center, 0.2, 0.07)
    value = dino_loss(student, teacher, center.reshape(-1), student_temp=0.2, teacher_temp=0.07)
    assert value.item() == pytest.approx(expected_temps, rel=1e-10)


def test_dino_loss_skips_same_view_pairs():
    student = _outputs(3, views=2)
    teacher = _outputs(4, views=2)
    center = torch.zeros(K, dtype=torch.float64)
    ce = {(i, v): _cross_entropy(teacher[i], student[v], center, 0.1, 0.04)
          for i in range(2) for v in range(2)}
    value = dino_loss(student, teacher, center).item()
    # With two views the only pairs are (teacher 0, student 1) and (teacher 1, student 0).
    assert value == pytest.approx((ce[0, 1] + ce[1, 0]) / 2, rel=1e-10)
    assert value != pytest.approx(sum(ce.values()) / 4, rel=1e-3)


def test_dino_loss_gradient_reaches_students_only():
    student = [s.requires_grad_(True) for s in _outputs(5, views=3)]
    teacher = [t.requires_grad_(True) for t in _outputs(6, views=2)]
    center = torch.zeros(K, dtype=torch.float64, requires_grad=True)
    dino_loss(student, teacher, center).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert all(t.grad is None for t in teacher)
    assert center.grad is None


def test_dino_loss_is_finite_for_extreme_outputs():
    student = [s.float().requires_grad_(True) for s in _outputs(7, views=3, scale=1e4)]
    teacher = [t.float() for t in _outputs(8, views=2, scale=1e4)]
    value = dino_loss(student, teacher, torch.zeros(K))
    value.backward()
    assert torch.isfinite(value)
    assert all(torch.isfinite(s.grad).all() for s in student)


def test_dino_loss_rejects_more_teacher_than_student_views():
    with pytest.raises(ValueError):
        dino_loss(_outputs(9, views=2), _outputs(10, views=3), torch.zeros(K))


def _center_reference(center: torch.Tensor, rows: list[list[float]], momentum: float) -> list[float]:
    c = center.reshape(-1).tolist()
    batch = [sum(r[k] for r in rows) / len(rows) for k in range(len(c))]
    return [momentum * c[k] + (1 - momentum) * batch[k] for k in range(len(c))]


def test_dino_center_update_matches_formula():
    teacher = _outputs(11, views=2)
    center = _outputs(12, views=1, b=1)[0]
    rows = teacher[0].tolist() + teacher[1].tolist()
    expected = torch.tensor(_center_reference(center, rows, 0.9), dtype=torch.float64).reshape(1, K)
    new = dino_center_update(center, teacher, momentum=0.9)
    assert new.shape == center.shape
    torch.testing.assert_close(new, expected, rtol=1e-12, atol=1e-12)
    # A concatenated [N, K] tensor is the same input as the list of views.
    torch.testing.assert_close(dino_center_update(center, torch.cat(teacher), momentum=0.9), expected)


def test_dino_center_update_does_not_change_its_input_or_track_gradients():
    teacher = [t.requires_grad_(True) for t in _outputs(13, views=2)]
    center = torch.zeros(K, dtype=torch.float64)
    new = dino_center_update(center, teacher, momentum=0.5)
    assert torch.equal(center, torch.zeros(K, dtype=torch.float64))
    assert not new.requires_grad
    assert new.abs().sum() > 0


class FakeProcessGroup:
    """Ranks simulated by threads: a collective waits for every rank, then each gets the sum."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.slots: list[torch.Tensor | None] = [None] * world_size
        self.barrier = threading.Barrier(world_size, timeout=10)

    def all_reduce(self, rank: int):
        def reduce(t: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = t.clone()
            self.barrier.wait()
            out = torch.stack(self.slots).sum(dim=0)
            self.barrier.wait()
            return out
        return reduce


def test_dino_center_update_on_two_ranks_uses_the_global_batch():
    teacher = _outputs(14, views=2, b=5)
    center = torch.zeros(1, K, dtype=torch.float64)
    full = dino_center_update(center, teacher, momentum=0.8)
    group = FakeProcessGroup(2)
    # Unequal local batches (2 and 3 samples per view): the count must be reduced too.
    shards = [[t[:2] for t in teacher], [t[2:] for t in teacher]]
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(dino_center_update, center, shard, 0.8, group.all_reduce(rank))
                   for rank, shard in enumerate(shards)]
        results = [f.result() for f in futures]
    for r in results:
        torch.testing.assert_close(r, full, rtol=1e-12, atol=1e-12)
