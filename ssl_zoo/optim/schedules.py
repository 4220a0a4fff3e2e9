"""Scalar schedules over optimizer steps: learning-rate factors and the cosine ramps that EMA momentum
(BYOL), DINO's teacher temperature and weight decay follow.

The learning-rate factors are small callable classes rather than closures: ``LambdaLR.state_dict``
saves a callable object's ``__dict__`` (and nothing of a function), so a checkpoint restores the exact
schedule, including its length and warm-up.
"""

from __future__ import annotations

import bisect
import math


def cosine_schedule(base: float, final: float, step: int, total_steps: int) -> float:
    """Half-cosine ramp from ``base`` at step 0 to ``final`` at ``total_steps``, held there after.

    value = final - (final - base) (cos(π k / K) + 1) / 2  (BYOL's τ schedule, Grill et al. 2020;
    SGDR's annealing, Loshchilov & Hutter 2017). A zero-length schedule is already at its end.
    """
    if total_steps <= 0:
        return final
    progress = min(max(step, 0), total_steps) / total_steps
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


def linear_warmup(start: float, end: float, step: int, warmup_steps: int) -> float:
    """Straight line from ``start`` at step 0 to ``end`` at ``warmup_steps``, held there after
    (Goyal et al. 2017's gradual warm-up)."""
    if warmup_steps <= 0:
        return end
    progress = min(max(step, 0), warmup_steps) / warmup_steps
    return start + (end - start) * progress


class LrFactor:
    """Multiplier of a group's initial lr at an optimizer step: a linear warm-up from ``start_factor``
    to 1 over ``warmup_steps``, then :meth:`after_warmup`. Attributes are plain numbers so that
    ``LambdaLR.state_dict`` captures them."""

    def __init__(self, warmup_steps: int = 0, start_factor: float = 0.0):
        self.warmup_steps = int(warmup_steps)
        self.start_factor = float(start_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return linear_warmup(self.start_factor, 1.0, step, self.warmup_steps)
        return self.after_warmup(step)

    def after_warmup(self, step: int) -> float:
        return 1.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class ConstantFactor(LrFactor):
    """1 after the warm-up; with no warm-up, the fixed lr of SimSiam's predictor (Chen & He 2021)."""


class WarmupCosineFactor(LrFactor):
    """Warm-up, then cosine from 1 at ``warmup_steps`` to ``min_factor`` at ``total_steps`` and after
    (SimCLR, BYOL and MoCo v3 anneal per iteration like this)."""

    def __init__(self, total_steps: int, warmup_steps: int = 0, start_factor: float = 0.0,
                 min_factor: float = 0.0):
        super().__init__(warmup_steps, start_factor)
        self.total_steps = int(total_steps)
        self.min_factor = float(min_factor)

    def __call__(self, step: int) -> float:
        # Past the end the lr stays at its floor, even if the warm-up was longer than the run.
        if step >= self.total_steps:
            return self.min_factor
        return super().__call__(step)

    def after_warmup(self, step: int) -> float:
        length = self.total_steps - self.warmup_steps
        return cosine_schedule(1.0, self.min_factor, step - self.warmup_steps, length)


class StepFactor(LrFactor):
    """Warm-up, then ``gamma ** (number of milestones reached)``; milestones are optimizer steps
    (MoCo v1, He et al. 2020: ×0.1 at epochs 120 and 160 of 200)."""

    def __init__(self, milestones: list[int], gamma: float, warmup_steps: int = 0, start_factor: float = 0.0):
        super().__init__(warmup_steps, start_factor)
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)

    def after_warmup(self, step: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, step)
