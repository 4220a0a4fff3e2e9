"""Shared training-time collaborators: probes, monitors and checkpointed state."""

from ssl_zoo.callbacks.knn import KNNMonitor
from ssl_zoo.callbacks.nonfinite import NonFiniteGuard
from ssl_zoo.callbacks.probe import OnlineLinearProbe
from ssl_zoo.callbacks.progress import ProgressLines
from ssl_zoo.callbacks.rng import RNGState

__all__ = ["KNNMonitor", "NonFiniteGuard", "OnlineLinearProbe", "ProgressLines", "RNGState"]
