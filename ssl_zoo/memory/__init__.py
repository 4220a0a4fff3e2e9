"""Stateful pieces shared by methods; each is a module whose state is in the checkpoint."""

from ssl_zoo.memory.bank import MemoryBank
from ssl_zoo.memory.momentum import MomentumEncoder, momentum_at
from ssl_zoo.memory.queue import FeatureQueue

__all__ = ["FeatureQueue", "MemoryBank", "MomentumEncoder", "momentum_at"]
