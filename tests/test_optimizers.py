"""`keras_sit.AdamW` against `keras.optimizers.AdamW`: same steps, same state, saved and loaded."""

import keras
import numpy as np
import pytest

import keras_sit
from tests.conftest import tiny_sit, to_numpy

SHAPES = [(3, 5), (5,), (2, 3, 4), (1,)]


def run(optimizer_class, steps=4, **kwargs):
    """Variables and optimizer state after `steps` updates with fixed, differently scaled gradients."""
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s).astype("float32"), name=f"w{i}") for i, s in enumerate(SHAPES)]
    optimizer = optimizer_class(**kwargs)
    optimizer.build(variables)
    optimizer.exclude_from_weight_decay(var_names=["w1"])
    for _ in range(steps):
        # Gradients from 1e-9 to 1: at the small end epsilon dominates `sqrt(v)`.
        grads = [
            keras.ops.convert_to_tensor((10.0 ** -(3 * i)) * rng.normal(size=s).astype("float32"))
            for i, s in enumerate(SHAPES)
        ]
        optimizer.apply(grads, variables)
    return [to_numpy(v) for v in variables], [to_numpy(v) for v in optimizer.variables]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(learning_rate=1e-2, weight_decay=0.0),
        dict(learning_rate=1e-2, weight_decay=0.5),
        dict(learning_rate=1e-2, weight_decay=0.1, amsgrad=True, epsilon=1e-3),
        dict(learning_rate=keras.optimizers.schedules.ExponentialDecay(1e-2, 1, 0.5), beta_1=0.5, beta_2=0.9),
        dict(learning_rate=1e-2, weight_decay=0.0, use_ema=True, ema_momentum=0.7, clipnorm=0.5),
    ],
    ids=["plain", "decay", "amsgrad", "schedule", "ema-clip"],
)
def test_adamw_steps_as_keras_adamw(kwargs):
    ours, ours_state = run(keras_sit.AdamW, **kwargs)
    keras_, keras_state = run(keras.optimizers.AdamW, **kwargs)
    for a, b in zip(ours + ours_state, keras_ + keras_state):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
    start, _ = run(keras.optimizers.AdamW, steps=0, **kwargs)
    assert all(np.abs(a - b).max() > 0 for a, b in zip(ours, start))  # every variable moved


def test_default_optimizer_is_saved_and_loaded(tmp_path):
    model = tiny_sit()
    model.compile()
    assert type(model.optimizer) is keras_sit.AdamW
    assert model.optimizer.get_config() == keras.optimizers.AdamW(1e-4, weight_decay=0.0).get_config() | {
        "name": model.optimizer.name
    }
    x = np.random.default_rng(0).normal(size=(8, 4, 4, 2)).astype("float32")
    model.fit(x, batch_size=4, epochs=1, verbose=0)
    path = str(tmp_path / "sit.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded.optimizer) is keras_sit.AdamW
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
