"""Evaluation: kNN, linear probe, fine-tuning and few-shot protocols on checkpoints (``protocols``),
frozen-feature extraction and its cache (``features``), backbone export (``export``), representation
health (``health``), pictures (``plots``) and the results leaderboard (``results``)."""

from ssl_zoo.eval.knn import knn_accuracy, knn_scores

__all__ = ["knn_accuracy", "knn_scores"]
