"""The shared k-means: finds planted clusters, is a pure function of its seed, leaves no cluster empty."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from ssl_zoo.memory.kmeans import kmeans, pca_whiten, resolve_backend, split_empty_clusters

BACKENDS = [b for b, module in (("faiss", "faiss"), ("sklearn", "sklearn")) if importlib.util.find_spec(module)]


def blobs(n_per: int = 40, k: int = 5, dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = 10 * torch.randn(k, dim, generator=g)
    labels = torch.arange(k).repeat_interleave(n_per)
    return centres[labels] + 0.1 * torch.randn(k * n_per, dim, generator=g), labels


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to renaming the clusters: i and j together in ``a`` iff together in ``b``."""
    return torch.equal(a[:, None] == a[None, :], b[:, None] == b[None, :])


def test_at_least_one_backend_is_installed():
    assert BACKENDS, "install faiss-cpu or scikit-learn"
    assert resolve_backend("auto") in BACKENDS


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spherical", [False, True])
def test_kmeans_recovers_well_separated_blobs(backend, spherical):
    x, labels = blobs(k=3)
    result = kmeans(x, 3, iterations=20, seed=3, backend=backend, spherical=spherical, restarts=5)
    assert result.centroids.shape == (3, 8) and result.assignments.dtype == torch.long
    assert same_partition(result.assignments, labels)
    if spherical:
        torch.testing.assert_close(result.centroids.norm(dim=1), torch.ones(3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_is_a_pure_function_of_its_seed(backend):
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(1))
    a, b = kmeans(x, 12, seed=7, backend=backend), kmeans(x, 12, seed=7, backend=backend)
    assert torch.equal(a.assignments, b.assignments) and torch.equal(a.centroids, b.centroids)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_cluster_is_left_empty_even_with_duplicate_points(backend):
    # 3 distinct points, each repeated: any k > 3 leaves clusters empty before the split.
    x = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]]).repeat(10, 1)
    result = kmeans(x, 6, iterations=5, seed=0, backend=backend)
    assert (result.sizes() > 0).all() and result.sizes().sum() == 30


def test_split_gives_an_empty_cluster_part_of_a_big_one_and_recomputes_means():
    x = torch.cat([torch.zeros(6, 2), torch.ones(1, 2) * 3])
    x[:3, 0] = -1.0  # the big cluster has two halves: (-1, 0) x3 and (0, 0) x3; cluster 1 is one point
    centroids = torch.tensor([[-0.5, 0.0], [3.0, 3.0], [100.0, 100.0]])
    assignments = torch.tensor([0] * 6 + [1])
    new_c, new_a = split_empty_clusters(x, centroids, assignments, torch.Generator().manual_seed(0))
    sizes = torch.bincount(new_a, minlength=3)
    assert (sizes > 0).all() and sizes[1] == 1 and sizes[0] + sizes[2] == 6
    for c in range(3):
        torch.testing.assert_close(new_c[c], x[new_a == c].mean(dim=0))


def test_pca_whiten_decorrelates_and_normalises():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g) @ torch.randn(6, 6, generator=g) + 3.0
    reduced = pca_whiten(x, 4, eps=0.0)
    assert reduced.shape == (500, 4)
    torch.testing.assert_close(reduced.norm(dim=1), torch.ones(500))
    # Before the L2 normalisation the coordinates are white: recompute them and check the covariance.
    centred = (x - x.mean(0)).double()
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    white = centred @ vh[:4].t() / (s[:4] / (500 - 1) ** 0.5)
    torch.testing.assert_close(white.t() @ white / 499, torch.eye(4, dtype=torch.float64))
    torch.testing.assert_close(reduced, F.normalize(white, dim=1).float(), atol=1e-5, rtol=1e-5)


def test_pca_whiten_clamps_the_dimension_and_stays_finite_on_rank_deficient_features():
    x = torch.randn(10, 3).repeat(1, 4)  # rank 3 in 12 dimensions
    out = pca_whiten(x, 256)
    assert out.shape == (10, 10) and torch.isfinite(out).all()


def test_kmeans_rejects_more_clusters_than_points():
    with pytest.raises(ValueError, match="k <= N"):
        kmeans(torch.randn(4, 2), 5)
