"""The zoo. Each method is one file here and one yaml in ``conf/method/``; add it to ``METHODS``."""

from __future__ import annotations

from ssl_zoo.methods.base import Method, MethodConfig, StepOutput
from ssl_zoo.methods.byol import BYOL
from ssl_zoo.methods.moco_v2 import MoCoV2
from ssl_zoo.methods.simclr import SimCLR

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (
    SimCLR,
    MoCoV2,
    BYOL,
)}

__all__ = ["METHODS", "Method", "MethodConfig", "StepOutput"]
