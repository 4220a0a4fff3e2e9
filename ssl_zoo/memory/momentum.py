"""Exponential-moving-average (momentum) copies of networks: MoCo's key encoder, BYOL's target."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn


def momentum_at(base: float, final: float, step: int, total_steps: int, schedule: str = "cosine") -> float:
    """Momentum τ at ``step``.

    ``cosine``: BYOL (Grill et al. 2020): τ = 1 - (1 - τ_base)(cos(πk/K) + 1)/2, from base to ``final``
    (1.0 in BYOL, DINO, MoCo v3). ``constant``: MoCo v1/v2 keep τ = 0.999.
    """
    if schedule == "constant" or total_steps <= 0:
        return base
    progress = min(max(step, 0), total_steps) / total_steps
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


class MomentumEncoder(nn.Module):
    """A frozen copy of a chain of online modules (e.g. backbone then projector), updated as
    θ_t ← τ θ_t + (1 - τ) θ_o after every optimizer step.

    The copy is a registered sub-module (``encoder``, an ``nn.Sequential``), so it lives in the
    checkpoint; the online modules are held by reference only (their owner registers them once).
    Buffers (BN running statistics) are copied, as MoCo's and BYOL's reference code do. ``Method``
    calls :meth:`update` for every ``MomentumEncoder`` it holds.
    """

    def __init__(self, *online: nn.Module, base_momentum: float = 0.996, final_momentum: float = 1.0,
                 schedule: str = "cosine"):
        super().__init__()
        if not online:
            raise ValueError("MomentumEncoder needs at least one online module")
        self.encoder = nn.Sequential(*(copy.deepcopy(m) for m in online))
        self.encoder.requires_grad_(False)
        self._online = list(online)  # a plain list keeps them out of this module's state dict
        self.base_momentum, self.final_momentum, self.schedule = base_momentum, final_momentum, schedule
        self.register_buffer("momentum", torch.tensor(base_momentum, dtype=torch.float64))

    def online_parameters(self) -> list[nn.Parameter]:
        return [p for m in self._online for p in m.parameters()]

    def online_buffers(self) -> list[torch.Tensor]:
        return [b for m in self._online for b in m.buffers()]

    def forward(self, x):
        return self.encoder(x)

    @torch.no_grad()
    def update(self, step: int, total_steps: int) -> float:
        """EMA step with the momentum for optimizer step ``step`` (0-based, the step just taken)."""
        tau = momentum_at(self.base_momentum, self.final_momentum, step, total_steps, self.schedule)
        target_params = list(self.encoder.parameters())
        online_params = [p.detach() for p in self.online_parameters()]
        torch._foreach_lerp_(target_params, online_params, 1.0 - tau)
        for t, o in zip(self.encoder.buffers(), self.online_buffers()):
            t.copy_(o)
        self.momentum.fill_(tau)
        return tau
