"""EMA of the weights: Keras' recurrence, `fit` keeps the training weights, sampling uses the EMA, saving."""

import keras
import numpy as np
import pytest

import keras_sit
from tests.conftest import randomize, tiny_sit, to_numpy

DECAY = 0.9  # far from 0.9999 so that a few steps move the EMA visibly
IMAGES = np.random.default_rng(0).normal(size=(8, 4, 4, 2)).astype("float32")


@pytest.fixture
def images():
    return IMAGES.copy()


def values(variables):
    return [to_numpy(v).copy() for v in variables]


def ema_values(model):
    with model.ema_weights():
        return values(model.trainable_weights)


def assert_all_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def trained(images, epochs, rng=None, **compile_kwargs):
    """A SiT after `epochs` one-step epochs of Adam(1e-2) with EMA, and its weights after each step."""
    model = tiny_sit()
    if rng is not None:
        randomize(model, rng)
    optimizer = keras.optimizers.Adam(1e-2, use_ema=True, ema_momentum=DECAY)
    model.compile(optimizer=optimizer, **compile_kwargs)
    history = record_fit(model, images, epochs)
    return model, history


def record_fit(model, images, epochs):
    """`fit` one step per epoch; the weights after each step (synced at epoch end on every backend)."""
    history = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: history.append(values(model.trainable_weights))
    )
    model.fit(images, batch_size=len(images), epochs=epochs, verbose=0, shuffle=False, callbacks=[record])
    return history


@pytest.fixture(scope="module")
def five_steps():
    """A model after five one-step epochs, and its weights after each (shared: tests must not change it)."""
    return trained(IMAGES, epochs=5)


def test_ema_follows_keras_recurrence(five_steps):
    """Keras starts the average at the weights after the first step, then `e <- d e + (1 - d) w`."""
    model, history = five_steps
    expected = history[0]
    decay = np.float32(DECAY)
    for weights in history[1:]:
        expected = [decay * e + (np.float32(1) - decay) * w for e, w in zip(expected, weights)]
    got = ema_values(model)
    error = max(np.abs(g - e).max() for g, e in zip(got, expected))
    assert error < 1e-6, error
    distance = max(np.abs(g - w).max() for g, w in zip(got, history[-1]))
    assert distance > 1e-3  # the EMA is not just the weights
    assert model.has_ema


def test_compile_configures_the_default_optimizer():
    model = tiny_sit()
    model.compile(use_ema=True)
    optimizer = model.optimizer
    assert type(optimizer) is keras_sit.AdamW
    assert (optimizer.use_ema, optimizer.ema_momentum, optimizer.weight_decay) == (True, 0.9999, 0.0)
    assert np.isclose(float(to_numpy(optimizer.learning_rate)), 1e-4)
    assert optimizer.ema_overwrite_frequency is None
    model.compile(use_ema=True, ema_decay=0.99)
    assert model.optimizer.ema_momentum == 0.99
    model.compile()
    assert not model.optimizer.use_ema
    assert not model.has_ema  # compiled, never trained


def test_second_fit_continues_from_training_weights(images, five_steps):
    """`fit(2)` then `fit(3)` = `fit(5)`: Keras' end-of-fit EMA overwrite is skipped."""
    model, first = trained(images, epochs=2)
    assert_all_equal(values(model.trainable_weights), first[-1])  # training weights, not the EMA
    assert max(np.abs(e - w).max() for e, w in zip(ema_values(model), first[-1])) > 1e-3
    second = record_fit(model, images, epochs=3)
    whole, history = five_steps
    for a, b in zip(first + second, history):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    for x, y in zip(ema_values(model), ema_values(whole)):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    assert int(to_numpy(model.optimizer.iterations)) == 5


def test_apply_ema_replaces_the_weights(images):
    model, history = trained(images, epochs=2)
    ema = ema_values(model)
    model.apply_ema()
    assert_all_equal(values(model.trainable_weights), ema)
    assert_all_equal(ema_values(model), ema)  # the average itself is unchanged


def test_swap_ema_weights_callback_validates_on_the_ema(images):
    """Keras' `SwapEMAWeights` still works: validation sees the EMA, training is unchanged."""
    runs = []
    for callbacks in ([], [keras.callbacks.SwapEMAWeights()]):
        model = tiny_sit()
        model.compile(optimizer=keras.optimizers.Adam(1e-2, use_ema=True, ema_momentum=DECAY))
        history = model.fit(
            images,
            batch_size=len(images),
            epochs=2,
            verbose=0,
            shuffle=False,
            validation_data=(images,),
            callbacks=callbacks,
        )
        runs.append((values(model.trainable_weights) + ema_values(model), history.history["val_loss"]))
    (plain, plain_val), (swapped, swapped_val) = runs
    for a, b in zip(plain, swapped):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)  # TF swaps by adding and subtracting
    assert plain_val[0] == swapped_val[0]  # after one step the EMA is the weights
    assert abs(plain_val[1] - swapped_val[1]) > 1e-4


def test_generate_encode_log_likelihood_use_the_ema(images, rng):
    model, history = trained(images, epochs=3, rng=rng)
    raw, ema = history[-1], ema_values(model)
    twin = tiny_sit()  # the same model with the EMA as its weights
    for variable, value in zip(twin.trainable_weights, ema):
        variable.assign(value)
    sample_args = dict(num_steps=3, seed=0)
    samples = model.generate(4, **sample_args)
    np.testing.assert_allclose(samples, twin.generate(4, **sample_args), rtol=0, atol=1e-6)
    assert_all_equal(values(model.trainable_weights), raw)  # put back bit for bit
    training = model.generate(4, use_ema=False, **sample_args)
    assert np.abs(training - samples).max() > 1e-3
    np.testing.assert_array_equal(model.generate(4, use_ema=True, **sample_args), samples)
    # the step-by-step path and the SDE
    sde = dict(sampler="sde-euler", return_trajectory=True, **sample_args)
    np.testing.assert_allclose(model.generate(4, **sde)[0], twin.generate(4, **sde)[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        model.encode(images[:4], num_steps=3), twin.encode(images[:4], num_steps=3), rtol=0, atol=1e-5
    )
    likelihood = dict(num_steps=2, sampler="euler", divergence="hutchinson", seed=0)
    np.testing.assert_allclose(
        model.log_likelihood(images[:4], **likelihood)[0],
        twin.log_likelihood(images[:4], **likelihood)[0],
        rtol=1e-6,
        atol=1e-4,
    )
    assert_all_equal(values(model.trainable_weights), raw)


def test_save_load_keeps_ema_and_resumes(images, tmp_path):
    model, _ = trained(images, epochs=2)
    path = str(tmp_path / "ema.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.optimizer.use_ema and loaded.optimizer.ema_momentum == DECAY
    assert_all_equal(values(loaded.trainable_weights), values(model.trainable_weights))
    assert_all_equal(ema_values(loaded), ema_values(model))
    np.testing.assert_array_equal(loaded.generate(4, num_steps=3, seed=0), model.generate(4, num_steps=3, seed=0))
    record_fit(model, images, epochs=1)
    record_fit(loaded, images, epochs=1)
    for a, b in zip(
        values(loaded.trainable_weights) + ema_values(loaded), values(model.trainable_weights) + ema_values(model)
    ):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_errors(images):
    model = tiny_sit()
    with pytest.raises(ValueError, match="use_ema"):
        model.compile(optimizer=keras.optimizers.Adam(), use_ema=True)
    with pytest.raises(ValueError, match="ema_decay"):
        model.compile(ema_decay=0.99)
    with pytest.raises(ValueError, match="ema_decay"):
        model.compile(use_ema=True, ema_decay=1.0)
    with pytest.raises(TypeError, match="use_ema"):
        model.compile(use_ema="yes")
    model.compile(use_ema=True)
    for call in (
        model.apply_ema,
        lambda: model.ema_weights().__enter__(),
        lambda: model.generate(2, num_steps=2, use_ema=True),
    ):
        with pytest.raises(ValueError, match="train at least one step"):  # compiled with EMA, never trained
            call()
    with pytest.raises(TypeError, match="use_ema"):
        model.generate(2, num_steps=2, use_ema="ema")
    with pytest.raises(ValueError, match="use_ema=True"):
        model.encode(images[:2], use_ema=True)
    with pytest.raises(ValueError, match="use_ema=True"):
        model.log_likelihood(images[:2], use_ema=True)
    before = to_numpy(model.sampling_seed_generator.state).tolist()
    with pytest.raises(ValueError):
        model.generate(2, num_steps=2, use_ema=True)
    assert to_numpy(model.sampling_seed_generator.state).tolist() == before  # checked before drawing noise
