"""PEDCC geometry: unit norms, pairwise cosine -1/(k-1), zero sum, seeded placement, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from patchdet.training.pedcc import check_centroids, pedcc_centroids


@pytest.mark.parametrize(
    ("num_classes", "latent_dim"),
    [(2, 1), (2, 16), (3, 2), (5, 4), (10, 9), (10, 32), (10, 256), (30, 256), (100, 512)],
)
def test_regular_simplex_geometry(num_classes: int, latent_dim: int) -> None:
    centroids = pedcc_centroids(num_classes, latent_dim, seed=7).astype(np.float64)
    assert centroids.shape == (num_classes, latent_dim)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-6)
    gram = centroids @ centroids.T
    off_diagonal = gram[~np.eye(num_classes, dtype=bool)]
    np.testing.assert_allclose(off_diagonal, -1.0 / (num_classes - 1), atol=1e-6)
    np.testing.assert_allclose(centroids.sum(axis=0), 0.0, atol=1e-5)


def test_same_seed_same_centroids_other_seed_other_rotation() -> None:
    first = pedcc_centroids(10, 64, seed=3)
    np.testing.assert_array_equal(first, pedcc_centroids(10, 64, seed=3))
    other = pedcc_centroids(10, 64, seed=4)
    assert not np.allclose(first, other)
    # A rotation keeps the geometry: the Gram matrices agree.
    np.testing.assert_allclose(first @ first.T, other @ other.T, atol=1e-6)


def test_centroids_fill_all_dimensions_after_rotation() -> None:
    centroids = pedcc_centroids(4, 32, seed=0)
    # Without the rotation only the first k-1 coordinates would be non-zero.
    assert np.count_nonzero(np.abs(centroids[:, 3:]) > 1e-3) > 0


def test_too_many_classes_for_the_dimension_is_refused() -> None:
    with pytest.raises(ValueError, match=r"11 evenly-distributed centroids do not fit in 9 dimensions.*>= 10"):
        pedcc_centroids(11, 9)


@pytest.mark.parametrize(("num_classes", "latent_dim", "message"), [(1, 8, "at least 2 classes, got 1"), (3, 0, "latent dimension 0")])
def test_degenerate_shapes_are_refused(num_classes: int, latent_dim: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pedcc_centroids(num_classes, latent_dim)


def test_check_centroids_names_the_numbers() -> None:
    centroids = pedcc_centroids(3, 8)
    check_centroids(centroids, ["a", "b", "c"], latent_dim=8)
    with pytest.raises(ValueError, match="3 centroids do not match 2 classes"):
        check_centroids(centroids, ["a", "b"])
    with pytest.raises(ValueError, match="dimension 8, but the model's latent dimension is 16"):
        check_centroids(centroids, ["a", "b", "c"], latent_dim=16)
