"""PEDCC: predefined evenly-distributed class centroids (POD paper, section 2.1).

``k`` unit vectors in ``R^n`` with pairwise inner product exactly ``-1/(k-1)``
form a regular simplex centred on the origin; they exist iff ``k <= n + 1``
(the theorem the POD paper cites as [19]). We build the simplex in closed form
and place it in ``R^n`` with a seeded random rotation, so the same
``(k, n, seed)`` always gives the same centroids. Centroids are generated once
at training time and stored in the checkpoint (and later in the exported
model's card); they are never regenerated when a model is loaded.
"""

from __future__ import annotations

import numpy as np


def check_pedcc_shape(num_classes: int, latent_dim: int) -> None:
    """Raise a one-line ``ValueError`` unless ``num_classes`` centroids fit in ``latent_dim`` dimensions.

    Raises:
        ValueError: ``num_classes < 2``, ``latent_dim < 1``, or ``num_classes > latent_dim + 1``
            (equivalently a latent dimension smaller than ``num_classes - 1``).
    """
    if num_classes < 2:
        raise ValueError(f"PEDCC needs at least 2 classes, got {num_classes}")
    if latent_dim < 1:
        raise ValueError(f"latent dimension {latent_dim} is invalid: expected a positive integer")
    if num_classes > latent_dim + 1:
        raise ValueError(
            f"{num_classes} evenly-distributed centroids do not fit in {latent_dim} dimensions: "
            f"need num_classes <= latent_dim + 1 = {latent_dim + 1}, i.e. a latent dimension >= {num_classes - 1}"
        )


def _simplex_in_subspace(num_classes: int) -> np.ndarray:
    """Regular simplex as float64 [k, k-1]: unit rows, pairwise inner product -1/(k-1)."""
    k = num_classes
    # e_i - mean(e) lies in the (k-1)-dim hyperplane sum(v) = 0; its rows have
    # norm sqrt((k-1)/k) and pairwise inner product -1/k, so after scaling they
    # are unit vectors with inner product -1/(k-1).
    vertices = np.eye(k) - np.full((k, k), 1.0 / k)
    vertices /= np.sqrt((k - 1) / k)
    # Express them in an orthonormal basis of that hyperplane (k-1 coordinates).
    basis, _ = np.linalg.qr(vertices.T)  # columns span the column space of vertices.T
    coords = vertices @ basis[:, : k - 1]
    return coords


def _random_rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
    """Haar-distributed orthogonal matrix float64 [dim, dim] (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def pedcc_centroids(num_classes: int, latent_dim: int, seed: int = 0) -> np.ndarray:
    """Evenly-distributed class centroids on the unit sphere of ``R^latent_dim``.

    Args:
        num_classes: k, the number of classes (>= 2).
        latent_dim: n, the latent dimension; needs ``k <= n + 1``.
        seed: Seed of the random rotation; same seed, same centroids.

    Returns:
        float32 [k, n]: rows of norm 1, pairwise inner products ``-1/(k-1)``,
        rows summing to the zero vector.

    Raises:
        ValueError: the centroids cannot exist (see ``check_pedcc_shape``).
    """
    check_pedcc_shape(num_classes, latent_dim)
    coords = _simplex_in_subspace(num_classes)  # [k, k-1]
    padded = np.zeros((num_classes, latent_dim))
    padded[:, : num_classes - 1] = coords
    rotation = _random_rotation(latent_dim, np.random.default_rng(seed))
    centroids = padded @ rotation.T
    # Renormalise in float64 so rounding leaves norms at 1 to float32 precision.
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    return centroids.astype(np.float32)


def check_centroids(centroids: np.ndarray, class_names: list[str] | tuple[str, ...], latent_dim: int | None = None) -> None:
    """Raise a one-line ``ValueError`` when centroids [K, D] do not match the class list (and latent size).

    Args:
        centroids: array-like [K, D].
        class_names: The K class names the centroids belong to, in order.
        latent_dim: Expected D, when known (the model's latent dimension).
    """
    shape = tuple(np.shape(centroids))
    if len(shape) != 2:
        raise ValueError(f"centroids have shape {shape}: expected a 2-D array [num_classes, latent_dim]")
    if shape[0] != len(class_names):
        raise ValueError(
            f"{shape[0]} centroids do not match {len(class_names)} classes ({', '.join(class_names)})"
        )
    if latent_dim is not None and shape[1] != latent_dim:
        raise ValueError(f"centroids have dimension {shape[1]}, but the model's latent dimension is {latent_dim}")
