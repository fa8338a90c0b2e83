"""The seed's functions against their formulas."""

import keras
import numpy as np
import pytest

from keras_sit.functions import (
    cosine_interpolant,
    cosine_velocity,
    linear_interpolant,
    linear_velocity,
    output_size,
    sample_interpolant_time,
    sit_loss,
)
from tests.conftest import to_numpy


@pytest.fixture
def batch(rng):
    x = rng.normal(size=(5, 3, 2, 2)).astype("float32")
    noise = rng.normal(size=x.shape).astype("float32")
    t = rng.uniform(size=(5,)).astype("float32")
    return x, noise, t


def test_linear_interpolant_and_velocity(batch):
    x, noise, t = batch
    tb = t[:, None, None, None]
    np.testing.assert_allclose(
        to_numpy(linear_interpolant(x, noise, t)), (1 - tb) * x + tb * noise, rtol=1e-6, atol=1e-6
    )
    np.testing.assert_array_equal(to_numpy(linear_velocity(x, noise)), noise - x)
    # Endpoints: t=0 is data, t=1 is noise.
    np.testing.assert_allclose(to_numpy(linear_interpolant(x, noise, np.zeros(5, "float32"))), x)
    np.testing.assert_allclose(to_numpy(linear_interpolant(x, noise, np.ones(5, "float32"))), noise)


def test_cosine_interpolant_and_velocity(batch):
    x, noise, t = batch
    a = np.pi / 2 * t[:, None, None, None]
    np.testing.assert_allclose(
        to_numpy(cosine_interpolant(x, noise, t)), np.cos(a) * x + np.sin(a) * noise, rtol=1e-5, atol=1e-6
    )
    expected = np.pi / 2 * (-np.sin(a) * x + np.cos(a) * noise)
    np.testing.assert_allclose(to_numpy(cosine_velocity(x, noise, t)), expected, rtol=1e-5, atol=1e-5)


def test_velocity_is_time_derivative_of_interpolant(batch):
    x, noise, t = batch
    t = np.clip(t, 0.05, 0.95)
    h = 1e-2  # central differences in float32 (JAX has no float64 by default): error ~1e-4
    for interpolant, velocity in [
        (cosine_interpolant, cosine_velocity),
        (linear_interpolant, lambda x, n, t: linear_velocity(x, n)),
    ]:
        finite = (to_numpy(interpolant(x, noise, t + h)) - to_numpy(interpolant(x, noise, t - h))) / (2 * h)
        np.testing.assert_allclose(to_numpy(velocity(x, noise, t)), finite, rtol=1e-3, atol=1e-3)


def test_sample_interpolant_time_is_uniform_and_seeded():
    t = to_numpy(sample_interpolant_time(20000, seed=3))
    assert t.shape == (20000,)
    assert t.min() >= 0.0 and t.max() < 1.0
    assert abs(t.mean() - 0.5) < 0.01 and abs(t.var() - 1 / 12) < 0.005
    np.testing.assert_array_equal(t, to_numpy(sample_interpolant_time(20000, seed=3)))
    generator = keras.random.SeedGenerator(1)
    first, second = (
        to_numpy(sample_interpolant_time(8, seed=generator)),
        to_numpy(sample_interpolant_time(8, seed=generator)),
    )
    assert not np.allclose(first, second)


def test_sit_loss_is_mean_squared_error(rng):
    pred = rng.normal(size=(4, 3, 3, 2)).astype("float32")
    target = rng.normal(size=(4, 3, 3, 2)).astype("float32")
    loss = to_numpy(sit_loss(pred, target))
    assert loss.dtype == np.float32 and loss.shape == ()
    per_example = ((pred - target) ** 2).reshape(4, -1).mean(axis=1)  # official mean_flat, then batch mean
    np.testing.assert_allclose(loss, per_example.mean(), rtol=1e-6)
    assert to_numpy(sit_loss(pred, pred)) == 0.0


def test_output_size():
    assert output_size(input_shape=(32, 32, 4), patch_size=2) == 16
    assert output_size(input_shape=(32, 32, 4), patch_size=2, learn_sigma=True) == 32  # official p*p*2C
    assert output_size(input_dim=8, patch_size=4) == 4
    assert output_size(input_dim=8, patch_size=4, learn_sigma=True) == 8
    with pytest.raises(ValueError, match="exactly one"):
        output_size(input_shape=(8, 8, 1), input_dim=4)
