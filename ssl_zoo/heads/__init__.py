"""Projection heads, predictors and prototypes."""

from ssl_zoo.heads.mlp import MLP

__all__ = ["MLP"]
