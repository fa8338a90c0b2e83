"""Checkpoints saved under each backend (tests/fixtures, written by make_tiny_sit.py) load under every backend."""

import os

import keras
import numpy as np
import pytest

from keras_sit import SiT
from tests.conftest import to_numpy

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


@pytest.mark.xla_default
@pytest.mark.parametrize("saved_under", ["jax", "tensorflow", "torch"])
def test_fixture_loads_with_same_outputs_optimizer_and_noise_state(saved_under):
    expected = np.load(os.path.join(FIXTURES, f"tiny_sit_{saved_under}.npz"))
    assert str(expected["backend"]) == saved_under
    model = keras.saving.load_model(os.path.join(FIXTURES, f"tiny_sit_{saved_under}.keras"), safe_mode=True)
    assert isinstance(model, SiT) and model.backbone.learn_sigma
    # Saved with jit_compile="auto", which the loading backend resolves for itself
    # (JAX and TensorFlow, on a CPU too: XLA; PyTorch: eager, not torch.compile).
    assert model.jit_compile == {"jax": True, "tensorflow": True, "torch": False}[keras.backend.backend()]
    x, t, labels = expected["x"], expected["t"], expected["labels"]
    conditional = labels < model.num_classes  # the others hold the null class: labels=None asks for those
    velocity = np.empty_like(expected["velocity"])
    velocity[conditional] = to_numpy(model.velocity(x[conditional], t[conditional], labels[conditional]))
    velocity[~conditional] = to_numpy(model.velocity(x[~conditional], t[~conditional]))
    np.testing.assert_allclose(velocity, expected["velocity"], rtol=1e-5, atol=1e-5)
    assert np.abs(velocity).max() > 0.1  # random weights: a real comparison, not zeros
    assert int(to_numpy(model.optimizer.iterations)) == int(expected["iterations"]) == 2
    assert to_numpy(model.seed_generator.state).tolist() == expected["seed_state"].tolist()
    model.fit(expected["images"], expected["label_batch"], batch_size=8, epochs=1, verbose=0)
    assert int(to_numpy(model.optimizer.iterations)) == 3
    assert to_numpy(model.seed_generator.state)[1] == expected["seed_state"][1] + 3
