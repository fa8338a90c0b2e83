"""Improved precision and recall (Kynkaanniemi et al. 2019) of feature vectors, in NumPy, as ADM's evaluator
computes them: each set's manifold is the union of balls reaching its points' k-th nearest neighbours."""

import numpy as np

from keras_sit.evaluation.metrics import _features
from keras_sit.validation import check_positive_int


def _squared_distances(rows, rows_sq, columns, columns_sq):
    """Pairwise squared Euclidean distances `[len(rows), len(columns)]`, clipped at 0."""
    distances = rows_sq[:, None] + columns_sq[None, :] - 2.0 * (rows @ columns.T)
    return np.maximum(distances, 0.0, out=distances)


def _knn_radii(features, k, block_size):
    """Squared distance of each feature to its k-th nearest neighbour in the set (itself excluded)."""
    n = features.shape[0]
    squares = np.einsum("ij,ij->i", features, features)
    radii = np.empty(n)
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        distances = _squared_distances(features[start:stop], squares[start:stop], features, squares)
        distances[np.arange(stop - start), np.arange(start, stop)] = 0.0  # exactly, not up to rounding
        distances.partition(k, axis=1)  # index 0 is the point itself
        radii[start:stop] = distances[:, k]
    return radii


def precision_recall(real_features, fake_features, k=3, block_size=1000):
    """Improved precision and recall (Kynkaanniemi et al. 2019), as ADM's evaluator.

    Each set's manifold is the union of balls around its points, each ball's
    radius the distance to the point's k-th nearest neighbour in its own set
    (the point itself not counted). Precision is the fraction of fake samples
    inside the real manifold (distance <= some real radius), recall the fraction
    of real samples inside the fake manifold. Distances are computed in float64
    blocks of `block_size` rows, so memory is `O(block_size * max(N_real, N_fake))`
    (ADM computes them in float16, falling back to float32, which can only move
    points within rounding of a ball's boundary).

    Args:
        real_features: `[N_real, d]`, the reference set (ADM's `ref_batch`).
        fake_features: `[N_fake, d]`, the samples.
        k: the neighbourhood size (ADM's `nhood_sizes=(3,)`); each set needs more than `k` points.
        block_size: rows of distances computed at once.

    Returns:
        `(precision, recall)`.
    """
    check_positive_int("k", k)
    check_positive_int("block_size", block_size)
    real = _features("real_features", real_features, min_rows=k + 1)
    fake = _features("fake_features", fake_features, dim=real.shape[1], min_rows=k + 1)
    k, block_size = int(k), int(block_size)
    real_radii = _knn_radii(real, k, block_size)
    fake_radii = _knn_radii(fake, k, block_size)
    real_squares = np.einsum("ij,ij->i", real, real)
    fake_squares = np.einsum("ij,ij->i", fake, fake)
    real_covered = np.zeros(real.shape[0], dtype=bool)
    fake_covered = np.zeros(fake.shape[0], dtype=bool)
    for start in range(0, real.shape[0], block_size):
        stop = min(start + block_size, real.shape[0])
        distances = _squared_distances(real[start:stop], real_squares[start:stop], fake, fake_squares)
        real_covered[start:stop] = np.any(distances <= fake_radii[None, :], axis=1)
        fake_covered |= np.any(distances <= real_radii[start:stop, None], axis=0)
    return float(np.mean(fake_covered)), float(np.mean(real_covered))
