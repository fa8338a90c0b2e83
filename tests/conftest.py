import keras
import numpy as np
import pytest

import keras_sit

BACKEND = keras.backend.backend()


def tiny_sit(**overrides):
    """A SiT small enough to train in a test."""
    config = dict(input_shape=(4, 4, 2), patch_size=2, hidden_size=16, depth=2, num_heads=2, seed=0)
    config.update(overrides)
    return keras_sit.SiT(**config)


def randomize(model, rng, scale=0.2):
    """Random backbone weights, so the network's output is far from its zero init."""
    for variable in model.backbone.trainable_weights:
        variable.assign(rng.normal(0, scale, size=variable.shape).astype("float32"))


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def fit_losses(model, *fit_args, steps, **fit_kwargs):
    """Per-step training losses of `steps` one-batch epochs."""
    history = model.fit(*fit_args, epochs=steps, verbose=0, shuffle=False, **fit_kwargs)
    return np.array(history.history["loss"])
