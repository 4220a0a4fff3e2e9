"""Optimizers (SGD, AdamW, LARS, LAMB), learning-rate scaling with the global batch, per-step
schedules, and the parameter groups that keep biases and norms out of weight decay and LARS."""

from __future__ import annotations

from ssl_zoo.optim.build import (
    NO_DECAY_NAMES,
    build_optimizer,
    build_scheduler,
    effective_batch_size,
    param_groups,
    scaled_lr,
    warmup_steps_of,
)
from ssl_zoo.optim.config import OPTIMIZERS, SCHEDULERS, OptimizerConfig, SchedulerConfig
from ssl_zoo.optim.schedules import (
    ConstantFactor,
    LrFactor,
    StepFactor,
    WarmupCosineFactor,
    cosine_schedule,
    linear_warmup,
)

__all__ = [
    "NO_DECAY_NAMES", "OPTIMIZERS", "SCHEDULERS", "ConstantFactor", "LrFactor", "OptimizerConfig",
    "SchedulerConfig", "StepFactor", "WarmupCosineFactor", "build_optimizer", "build_scheduler",
    "cosine_schedule", "effective_batch_size", "linear_warmup", "param_groups", "scaled_lr",
    "warmup_steps_of",
]
