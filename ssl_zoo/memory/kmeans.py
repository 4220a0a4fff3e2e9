"""k-means for the clustering methods (DeepCluster, DeepCluster-v2, Local Aggregation, ClusterFit).

Torch tensors in and out; the work is done by faiss (Johnson et al. 2017, what DeepCluster and Local
Aggregation use) when it is installed, else by scikit-learn. Both are seeded, so a clustering is a
pure function of (features, k, iterations, seed): a resumed run reclusters to the same assignments.

Empty clusters are split off a big one as DeepCluster does (Caron et al. 2018, sec. 3.3): a non-empty
cluster is drawn with probability proportional to its size, its centroid is duplicated with a small
perturbation, and its members are shared between the two copies. After :func:`kmeans` every cluster
holds at least one point (given at least ``k`` points).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "faiss", "sklearn")


@dataclass
class Clustering:
    """``centroids`` [k, D] float32 and ``assignments`` [N] int64 (cluster of each point), on the input's
    device."""

    centroids: Tensor
    assignments: Tensor

    def sizes(self) -> Tensor:
        """Points per cluster [k], int64."""
        return torch.bincount(self.assignments, minlength=self.centroids.shape[0])


def resolve_backend(backend: str = "auto") -> str:
    """The library that runs k-means: ``auto`` picks faiss when installed, else scikit-learn."""
    if backend not in BACKENDS:
        raise ValueError(f"k-means backend {backend!r} is not one of {BACKENDS}")
    if backend == "auto":
        backend = "faiss" if importlib.util.find_spec("faiss") is not None else "sklearn"
    if importlib.util.find_spec("faiss" if backend == "faiss" else "sklearn") is None:
        package = "faiss-cpu" if backend == "faiss" else "scikit-learn"
        raise ModuleNotFoundError(f"k-means backend {backend!r} needs {package}: pip install {package}")
    return backend


@torch.no_grad()
def pca_whiten(x: Tensor, dim: int, eps: float = 1e-5) -> Tensor:
    """DeepCluster's pre-processing of features before k-means: PCA to ``dim`` dimensions, whitening
    and L2 normalisation (Caron et al. 2018, sec. 3.3). [N, D] -> [N, min(dim, N, D)], float32.

    The principal axes come from an SVD of the centred features in float64; each projected coordinate
    is divided by sqrt(its variance + ``eps``), so directions of (near) zero variance stay finite.
    """
    x64 = x.detach().to(torch.float64)
    x64 = x64 - x64.mean(dim=0, keepdim=True)
    dim = min(dim, x64.shape[0], x64.shape[1])
    _, s, vh = torch.linalg.svd(x64, full_matrices=False)
    variance = s[:dim] ** 2 / max(x64.shape[0] - 1, 1)
    projected = x64 @ vh[:dim].t() / torch.sqrt(variance + eps)
    return F.normalize(projected, dim=1).to(torch.float32)


@torch.no_grad()
def kmeans(x: Tensor, k: int, iterations: int = 20, seed: int = 0, backend: str = "auto",
           spherical: bool = False, restarts: int = 1) -> Clustering:
    """k-means of the rows of ``x`` [N, D] into ``k`` clusters, ``iterations`` Lloyd iterations.

    ``restarts``: runs from different initialisations, keeping the one of lowest inertia (1, as
    DeepCluster). faiss initialises with ``k`` random points, scikit-learn with k-means++.

    ``spherical``: cluster directions (the rows and the centroids are unit vectors, a point goes to the
    centroid of highest cosine), as DeepCluster-v2 and Local Aggregation do. faiss runs spherical
    k-means itself; with scikit-learn the rows are normalised, Euclidean k-means runs on them and the
    centroids are normalised afterwards, with points reassigned by cosine.
    """
    if x.dim() != 2:
        raise ValueError(f"k-means needs features [N, D], got shape {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= N, got k={k} for N={n} points")
    if iterations < 1 or restarts < 1:
        raise ValueError(f"k-means needs iterations >= 1 and restarts >= 1, got {iterations} and {restarts}")
    backend = resolve_backend(backend)
    data = x.detach().to(torch.float32)
    if spherical:
        data = F.normalize(data, dim=1)
    points = np.ascontiguousarray(data.cpu().numpy())
    if backend == "faiss":
        centroids, assignments = _faiss_kmeans(points, k, iterations, seed, spherical, restarts)
    else:
        centroids, assignments = _sklearn_kmeans(points, k, iterations, seed, restarts)
    cpu = data.cpu()
    centroids, assignments = torch.from_numpy(centroids).float(), torch.from_numpy(assignments).long()
    if spherical:
        centroids = F.normalize(centroids, dim=1)
        assignments = (cpu @ centroids.t()).argmax(dim=1)
    generator = torch.Generator().manual_seed(seed)
    centroids, assignments = split_empty_clusters(cpu, centroids, assignments, generator, spherical)
    return Clustering(centroids.to(x.device), assignments.to(x.device))


def _faiss_kmeans(points: np.ndarray, k: int, iterations: int, seed: int, spherical: bool, restarts: int):
    import faiss

    n, d = points.shape
    # max_points_per_centroid=n: cluster every point, no subsampling (DeepCluster sets it to 10^7).
    km = faiss.Kmeans(d, k, niter=iterations, seed=seed, spherical=spherical, max_points_per_centroid=n,
                      min_points_per_centroid=1, nredo=restarts, verbose=False)
    km.train(points)
    _, labels = km.index.search(points, 1)
    return km.centroids.copy(), labels[:, 0].astype(np.int64)


def _sklearn_kmeans(points: np.ndarray, k: int, iterations: int, seed: int, restarts: int):
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=k, init="k-means++", n_init=restarts, max_iter=iterations, random_state=seed,
                algorithm="lloyd").fit(points)
    return km.cluster_centers_.astype(np.float32), km.labels_.astype(np.int64)


def split_empty_clusters(x: Tensor, centroids: Tensor, assignments: Tensor, generator: torch.Generator,
                         spherical: bool = False, eps: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Give every empty cluster half of a big one (DeepCluster's fix, Caron et al. 2018, sec. 3.3).

    For each empty cluster c: draw a cluster b with >= 2 points with probability proportional to its
    size, set c_c = c_b + δ and c_b = c_b - δ for a small random δ, and move b's members that are now
    closer to c_c to c (if the split is degenerate, e.g. identical points, half of them); both centroids
    are then the means of their members. ``x`` [N, D], ``centroids`` [k, D], ``assignments`` [N], on the
    CPU; returns new tensors.
    """
    centroids, assignments = centroids.clone(), assignments.clone()
    counts = torch.bincount(assignments, minlength=centroids.shape[0])
    for c in torch.nonzero(counts == 0).flatten().tolist():
        splittable = (counts - 1).clamp(min=0).to(torch.float64)
        if splittable.sum() == 0:
            break  # fewer points than clusters: nothing left to split
        b = int(torch.multinomial(splittable, 1, generator=generator))
        members = torch.nonzero(assignments == b).flatten()
        delta = eps * (centroids[b].norm() + eps) * F.normalize(
            torch.randn(centroids.shape[1], generator=generator), dim=0)
        to_new = (x[members] - centroids[b]) @ delta > 0  # nearer to c_b + δ than to c_b - δ
        if to_new.all() or not to_new.any():
            to_new = torch.arange(len(members)) < len(members) // 2
        assignments[members[to_new]] = c
        for cluster in (b, c):
            mean = x[assignments == cluster].mean(dim=0)
            centroids[cluster] = F.normalize(mean, dim=0) if spherical else mean
        counts[c], counts[b] = int(to_new.sum()), int((~to_new).sum())
    return centroids, assignments
