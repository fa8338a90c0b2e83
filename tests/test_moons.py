"""A vector-input SiT learns scikit-learn's two moons (a loose distributional check)."""

import keras
import numpy as np
from sklearn.datasets import make_moons

from tests.conftest import tiny_sit


def test_vector_sit_generates_points_on_the_moons(one_torch_thread):
    """640 eager steps on PyTorch: one intra-op thread (see `one_torch_thread`)."""
    data, _ = make_moons(4096, noise=0.05, random_state=0)
    data = data.astype("float32")
    # patch_size=2: one token holding the whole point.
    model = tiny_sit(input_shape=None, input_dim=2, patch_size=2, hidden_size=64, depth=2, num_heads=2, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    model.fit(data, batch_size=256, epochs=40, verbose=0)

    samples = model.generate(1000, num_steps=50, seed=0)
    assert samples.shape == (1000, 2) and np.all(np.isfinite(samples))
    curve, side = make_moons(4000, noise=0.0, random_state=0)
    distance = np.linalg.norm(samples[:, None, :] - curve[None, :, :], axis=-1)
    nearest = distance.argmin(axis=1)
    # Most samples lie on a moon (training noise is 0.05; a Gaussian blob would sit far off) ...
    on_curve = distance.min(axis=1) < 0.2
    assert on_curve.mean() > 0.75, on_curve.mean()
    # ... and both moons are populated in roughly equal measure.
    upper = side[nearest[on_curve]].mean()
    assert 0.35 < upper < 0.65, upper
    # A Gaussian with the same mean and covariance fails the same test.
    gaussian = np.random.default_rng(0).multivariate_normal(data.mean(0), np.cov(data.T), 1000)
    far = np.linalg.norm(gaussian[:, None, :] - curve[None, :, :], axis=-1).min(axis=1)
    assert (far < 0.2).mean() < 0.6
