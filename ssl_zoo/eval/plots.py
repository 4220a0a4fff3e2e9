"""Pictures of a run: a t-SNE map of validation embeddings coloured by label, and the training curves.

Drawn with matplotlib's Agg backend (no display needed); each function returns the figure, which the
caller saves as PNG and may hand to TensorBoard. t-SNE is scikit-learn's (van der Maaten & Hinton 2008),
seeded, with PCA initialisation.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def tsne_embedding(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE coordinates [N, 2] of ``features`` [N, D] (L2-normalised first; N >= 3)."""
    from sklearn.manifold import TSNE

    x = features.astype(np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    perplexity = float(min(30.0, max(1.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def tsne_figure(features: np.ndarray, labels: np.ndarray, title: str = "", seed: int = 0):
    plt = _pyplot()
    xy = tsne_embedding(features, seed)
    fig, ax = plt.subplots(figsize=(6, 6))
    scatter = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10" if labels.max(initial=0) < 10 else "tab20",
                         s=6, alpha=0.8)
    if len(np.unique(labels)) <= 20:
        ax.legend(*scatter.legend_elements(), title="label", loc="best", fontsize="small", markerscale=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"t-SNE of {len(xy)} validation embeddings")
    fig.tight_layout()
    return fig


def read_metrics(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``metrics.csv`` (Lightning's CSV logger) as ``{column: [(step, value), ...]}``, empty cells skipped."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            if not step:
                continue
            for key, value in row.items():
                if key in ("step", "epoch") or value in (None, ""):
                    continue
                try:
                    series.setdefault(key, []).append((int(float(step)), float(value)))
                except ValueError:
                    continue
    return series


# Panels of the curves figure: a title and the metrics.csv columns drawn in it (those present).
PANELS = (("loss", ("train/loss",)), ("kNN top-1 %", ("val/knn_top1", "val/knn_top1_random_init")),
          ("probe top-1 %", ("val/probe_top1",)), ("learning rate", ("lr-",)), ("RankMe", ("val/rankme",)),
          ("alignment / uniformity", ("val/alignment", "val/uniformity")))


def curves_figure(series: dict[str, list[tuple[int, float]]], title: str = ""):
    """One panel per group of :data:`PANELS` that has data (a column prefix ending in ``-`` matches any)."""
    plt = _pyplot()
    panels = []
    for name, columns in PANELS:
        keys = [k for c in columns for k in sorted(series) if (k.startswith(c) if c.endswith("-") else k == c)]
        if keys:
            panels.append((name, keys))
    cols = min(3, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (name, keys) in zip(axes.flat, panels):
        for key in keys:
            steps, values = zip(*series[key])
            ax.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3, label=key)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
