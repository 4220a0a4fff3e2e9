"""Evaluation protocols: kNN, linear probe, and the monitors run during training."""

from ssl_zoo.eval.knn import knn_accuracy, knn_scores

__all__ = ["knn_accuracy", "knn_scores"]
