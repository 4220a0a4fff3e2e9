"""Self-distillation losses: DINO's cross-view cross-entropy and its teacher centre (Caron et al. 2021)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def dino_loss(student_outputs: Sequence[Tensor], teacher_outputs: Sequence[Tensor], center: Tensor,
              student_temp: float = 0.1, teacher_temp: float = 0.04) -> Tensor:
    """DINO loss (Caron et al. 2021, eq. 1 and Algorithm 1).

    ``student_outputs``: one [B, K] tensor of raw head outputs per view (global views first, then local
    crops). ``teacher_outputs``: one [B, K] tensor per global view; teacher view i is the same image
    crop as student view i. ``center``: [K] or [1, K].

    Teacher targets are softmax((t - center) / teacher_temp), without gradient; student predictions are
    log_softmax(s / student_temp). The loss is the cross-entropy -Σ_k P_t log P_s, mean over the batch,
    summed over every pair (teacher view i, student view v) with v ≠ i and divided by the number of
    such pairs. ``teacher_temp`` is a plain value: its warm-up schedule belongs to the caller.
    """
    n_student, n_teacher = len(student_outputs), len(teacher_outputs)
    if n_teacher < 1 or n_student < 2 or n_teacher > n_student:
        raise ValueError(f"dino_loss needs 1 <= teacher views <= student views and >= 2 student views, "
                         f"got {n_teacher} teacher and {n_student} student views")
    if student_temp <= 0 or teacher_temp <= 0:
        raise ValueError(f"temperatures must be > 0, got student_temp={student_temp}, "
                         f"teacher_temp={teacher_temp}")
    with torch.no_grad():
        targets = [F.softmax((t.detach() - center) / teacher_temp, dim=-1) for t in teacher_outputs]
    log_preds = [F.log_softmax(s / student_temp, dim=-1) for s in student_outputs]
    terms = [-(q * log_preds[v]).sum(dim=-1).mean()
             for i, q in enumerate(targets) for v in range(n_student) if v != i]
    return torch.stack(terms).mean()


@torch.no_grad()
def dino_center_update(center: Tensor, teacher_outputs: Sequence[Tensor] | Tensor, momentum: float = 0.9,
                       all_reduce: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """DINO's teacher centre after one step (Caron et al. 2021, eq. 4): m·center + (1 - m)·batch_centre.

    ``center``: [K] or [1, K]; ``teacher_outputs``: [N, K] or a list of [B, K] (one per global view).
    batch_centre = Σ over every teacher output row of every rank / (number of such rows over all ranks).
    ``all_reduce`` (sum over ranks, identity when None) is called once, on the row sum and the row count
    together: the reference divides by (local rows × world size) instead, which equals this when every
    rank has the same batch size and stays right when they differ. Returns a new tensor shaped and typed
    like ``center``; the caller stores it.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    if isinstance(teacher_outputs, Tensor):
        outputs = teacher_outputs.detach()
    else:
        outputs = torch.cat([t.detach() for t in teacher_outputs], dim=0)
    k = outputs.shape[-1]
    if center.numel() != k:
        raise ValueError(f"center has {center.numel()} entries but teacher outputs have K={k}")
    dtype = torch.promote_types(outputs.dtype, torch.float32)
    rows = outputs.reshape(-1, k).to(dtype)
    # One collective for both: sum of rows then the count in the last slot.
    partial = torch.cat([rows.sum(dim=0), rows.new_tensor([rows.shape[0]])])
    total = partial if all_reduce is None else all_reduce(partial)
    batch_center = total[:k] / total[k]
    new = momentum * center.reshape(-1).to(dtype) + (1 - momentum) * batch_center
    return new.reshape(center.shape).to(center.dtype)
