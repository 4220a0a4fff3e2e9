"""Schemas of the ``optimizer`` and ``scheduler`` config groups."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ssl_zoo.errors import check

OPTIMIZERS = ("sgd", "adamw", "lars", "lamb")
LR_SCALING_RULES = ("linear", "sqrt", "none")
SCHEDULERS = ("warmup_cosine", "step", "constant")


@dataclass
class OptimizerConfig:
    """The optimizer and its learning-rate scaling rule.

    ``lr`` is the *base* learning rate: the one for a global batch of ``reference_batch`` samples.
    The rate actually used is ``scaled_lr(lr, global_batch, lr_scaling, reference_batch)``: ``linear``
    (Goyal et al. 2017, "Accurate, Large Minibatch SGD"), ``sqrt`` (Krizhevsky 2014; the LAMB paper,
    You et al. 2019) or ``none``. ``momentum``/``nesterov`` are read by sgd and lars, ``betas``/``eps``
    by adamw and lamb; ``eps`` is also LARS's guard in the trust-ratio denominator.
    ``trust_coefficient`` is LARS's η (You et al. 2017, "Large Batch Training of Convolutional
    Networks"). ``exclude_bias_and_norm`` keeps biases, normalisation parameters and ViT tokens out
    of weight decay *and* out of LARS/LAMB's layer-wise adaptation, as SimCLR and BYOL do.
    """

    name: str = "sgd"
    lr: float = 0.03
    lr_scaling: str = "linear"
    reference_batch: int = 256
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    trust_coefficient: float = 0.001
    exclude_bias_and_norm: bool = True

    def validate(self, prefix: str = "optimizer") -> None:
        check(self.name in OPTIMIZERS, f"{prefix}.name", self.name, "one of: " + ", ".join(OPTIMIZERS))
        check(self.lr > 0, f"{prefix}.lr", self.lr, "a number > 0")
        check(self.lr_scaling in LR_SCALING_RULES, f"{prefix}.lr_scaling", self.lr_scaling,
              "one of: " + ", ".join(LR_SCALING_RULES))
        check(self.reference_batch >= 1, f"{prefix}.reference_batch", self.reference_batch, "an integer >= 1")
        check(self.weight_decay >= 0, f"{prefix}.weight_decay", self.weight_decay, "a number >= 0")
        check(0 <= self.momentum < 1, f"{prefix}.momentum", self.momentum, "a number in [0, 1)")
        # torch's SGD and timm's Lars both refuse Nesterov without momentum; say so at the config key.
        check(not self.nesterov or self.momentum > 0, f"{prefix}.nesterov", self.nesterov,
              "false when optimizer.momentum is 0", "Nesterov momentum needs a momentum > 0")
        check(len(self.betas) == 2, f"{prefix}.betas", self.betas, "two numbers [beta1, beta2]")
        for i, beta in enumerate(self.betas):
            check(0 <= beta < 1, f"{prefix}.betas[{i}]", beta, "a number in [0, 1)")
        check(self.eps > 0, f"{prefix}.eps", self.eps, "a number > 0")
        check(self.trust_coefficient > 0, f"{prefix}.trust_coefficient", self.trust_coefficient,
              "a number > 0")


@dataclass
class SchedulerConfig:
    """The per-optimizer-step learning-rate schedule, as a factor of each group's initial lr.

    Every schedule starts with a linear warm-up (Goyal et al. 2017) from ``warmup_start_factor`` to 1
    over ``warmup_steps`` steps (or ``warmup_epochs`` epochs when ``warmup_steps`` is null).
    ``warmup_cosine``: then a half cosine (Loshchilov & Hutter 2017, SGDR, without restarts) from 1 to
    ``min_lr_factor`` at the last step (SimCLR, BYOL, MoCo v3, DINO). ``step``: multiply by ``gamma``
    at each of ``milestones`` (epochs, MoCo v1). ``constant``: stay at 1.
    """

    name: str = "warmup_cosine"
    warmup_epochs: float = 0.0
    warmup_steps: Optional[int] = None  # noqa: UP045 (schemas spell nullable fields Optional[...])
    warmup_start_factor: float = 0.0
    min_lr_factor: float = 0.0
    milestones: list[float] = field(default_factory=list)
    gamma: float = 0.1

    def validate(self, prefix: str = "scheduler") -> None:
        check(self.name in SCHEDULERS, f"{prefix}.name", self.name, "one of: " + ", ".join(SCHEDULERS))
        check(self.warmup_epochs >= 0, f"{prefix}.warmup_epochs", self.warmup_epochs, "a number >= 0")
        check(self.warmup_steps is None or self.warmup_steps >= 0, f"{prefix}.warmup_steps",
              self.warmup_steps, "null or an integer >= 0")
        check(0 <= self.warmup_start_factor <= 1, f"{prefix}.warmup_start_factor", self.warmup_start_factor,
              "a number in [0, 1]")
        check(0 <= self.min_lr_factor <= 1, f"{prefix}.min_lr_factor", self.min_lr_factor,
              "a number in [0, 1]")
        check(0 < self.gamma <= 1, f"{prefix}.gamma", self.gamma, "a number in (0, 1]")
        for i, epoch in enumerate(self.milestones):
            check(epoch > 0, f"{prefix}.milestones[{i}]", epoch, "an epoch > 0")
        check(all(a < b for a, b in zip(self.milestones, self.milestones[1:])), f"{prefix}.milestones",
              self.milestones, "strictly increasing epochs")
        if self.name == "step":
            check(len(self.milestones) > 0, f"{prefix}.milestones", self.milestones,
                  "at least one epoch with scheduler=step", "e.g. scheduler.milestones=[120,160]")
