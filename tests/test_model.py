"""SiT: training on every input kind, fresh noise under jit, save/load and resume, generate, bad input."""

import keras
import numpy as np
import pytest

import keras_sit
from keras_sit import SiT, sampling
from tests.conftest import fit_losses, randomize, tiny_sit, to_numpy


@pytest.fixture
def images(rng):
    return rng.normal(size=(16, 4, 4, 2)).astype("float32")


@pytest.fixture
def labels(rng):
    return rng.integers(0, 3, 16).astype("int32")


# --- fit ----------------------------------------------------------------------------------


def test_fit_unconditional_arrays_with_validation_and_callbacks(images):
    model = tiny_sit()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    seen = []
    history = model.fit(
        images,
        batch_size=8,
        epochs=3,
        verbose=0,
        validation_data=(images[:8],),
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(logs["loss"]))],
    )
    assert len(seen) == 3 and np.all(np.isfinite(history.history["loss"]))
    assert np.all(np.isfinite(history.history["val_loss"]))
    assert int(to_numpy(model.optimizer.iterations)) == 6


def test_fit_conditional_arrays_and_evaluate(images, labels):
    model = tiny_sit(num_classes=3)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(images, labels, batch_size=8, epochs=2, verbose=0, validation_data=(images, labels))
    assert np.all(np.isfinite(history.history["val_loss"]))
    assert np.isfinite(model.evaluate(images, labels, verbose=0))


def test_fit_tf_data_pairs_and_images(images, labels):
    import tensorflow as tf

    model = tiny_sit(num_classes=3)
    model.compile()
    pairs = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    assert np.all(np.isfinite(model.fit(pairs, epochs=2, verbose=0).history["loss"]))
    unconditional = tiny_sit()
    unconditional.compile()
    only_images = tf.data.Dataset.from_tensor_slices(images).batch(8)
    assert np.all(np.isfinite(unconditional.fit(only_images, epochs=1, verbose=0).history["loss"]))


def test_fit_image_dataset_from_directory(tmp_path, rng):
    from PIL import Image

    for name in ("cats", "dogs"):
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    dataset = keras.utils.image_dataset_from_directory(str(tmp_path), image_size=(4, 4), batch_size=4)
    model = tiny_sit(input_shape=(4, 4, 3), num_classes=len(dataset.class_names))
    model.compile()
    history = model.fit(dataset.map(lambda x, y: (x / 127.5 - 1, y)), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_fit_torch_dataloader(images, labels):
    import torch

    dataset = torch.utils.data.TensorDataset(torch.from_numpy(images), torch.from_numpy(labels.astype("int64")))
    model = tiny_sit(num_classes=3)
    model.compile()
    history = model.fit(torch.utils.data.DataLoader(dataset, batch_size=8), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_fit_dict_inputs(images, labels):
    model = tiny_sit(num_classes=3)
    model.compile()
    history = model.fit({"x": images, "labels": labels}, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_training_reduces_loss(images):
    model = tiny_sit()
    model.compile(optimizer=keras.optimizers.Adam(3e-2))
    losses = model.fit(np.tile(images[:2], (8, 1, 1, 1)), batch_size=16, epochs=40, verbose=0).history["loss"]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


# --- randomness ---------------------------------------------------------------------------


@pytest.mark.parametrize("jit_compile", [True, False])
def test_fresh_noise_every_step_with_zero_learning_rate(images, labels, jit_compile):
    """Same batch, weights frozen by lr=0: equal losses would mean the noise is baked in.

    `jit_compile=True` is XLA on JAX and TensorFlow and torch.compile on PyTorch. One block:
    torch.compile compiles each block apart, and the noise is drawn outside them.
    """
    model = tiny_sit(num_classes=3, depth=1)
    model.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=jit_compile)
    losses = fit_losses(model, images, labels, steps=4, batch_size=16)
    assert len(set(losses.round(7).tolist())) == 4, losses
    # Three draws per step (t, noise, label drops) advance the stream.
    assert to_numpy(model.seed_generator.state).tolist() == [0, 12]


def test_same_seed_same_losses_other_seed_other_losses(images, labels):
    runs = {}
    for seed in (5, 5, 6):
        model = tiny_sit(num_classes=3, seed=seed)
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        runs.setdefault(seed, []).append(fit_losses(model, images, labels, steps=3, batch_size=8))
    np.testing.assert_array_equal(runs[5][0], runs[5][1])
    assert not np.allclose(runs[5][0], runs[6][0])


def test_label_dropout_only_in_training():
    model = tiny_sit(num_classes=3, class_dropout_prob=0.3)
    labels = np.zeros(4000, "int32")
    dropped = to_numpy(model.drop_labels(labels))
    assert set(np.unique(dropped)) == {0, 3}  # 3 is the null class
    assert abs((dropped == 3).mean() - 0.3) < 0.03
    # Training draws three values per step (t, noise, drops), inference two.
    x = np.zeros((2, 4, 4, 2), "float32")
    before = to_numpy(model.seed_generator.state)[1]
    model((x, labels[:2]), training=True)
    middle = to_numpy(model.seed_generator.state)[1]
    model((x, labels[:2]), training=False)
    assert (middle - before, to_numpy(model.seed_generator.state)[1] - middle) == (3, 2)


def test_objective_forward_matches_path_formulas(images, rng):
    """`call` returns the backbone at x_t = (1-t) x + t eps and the target eps - x."""
    model = tiny_sit()
    randomize(model, rng)
    state = to_numpy(model.seed_generator.state).copy()
    out = model(images)
    # Replay the same draws with a generator reset to the same state.
    generator = keras.random.SeedGenerator(0)
    generator.state.assign(keras.ops.cast(state, generator.state.dtype))
    t = keras_sit.functions.sample_interpolant_time(16, seed=generator)
    noise = keras.random.normal(images.shape, seed=generator)
    np.testing.assert_allclose(to_numpy(out["target"]), to_numpy(noise) - images, atol=1e-6)
    expected = model.backbone({"x_t": keras_sit.functions.linear_interpolant(images, noise, t), "t": t})
    np.testing.assert_allclose(to_numpy(out["pred"]), to_numpy(expected), atol=1e-5)


# --- save / load --------------------------------------------------------------------------


def test_save_load_same_outputs_and_resumed_fit_continues_noise_stream(tmp_path, images, labels, rng):
    model = tiny_sit(num_classes=3, path="cosine")
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(images, labels, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "sit.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)

    assert isinstance(loaded, SiT) and loaded.get_config() == model.get_config()
    t = rng.uniform(size=16).astype("float32")
    np.testing.assert_array_equal(
        to_numpy(loaded.velocity(images, t, labels)), to_numpy(model.velocity(images, t, labels))
    )
    np.testing.assert_array_equal(
        loaded.generate(4, labels=[0, 1, 2, 0], num_steps=3, seed=1),
        model.generate(4, labels=[0, 1, 2, 0], num_steps=3, seed=1),
    )
    assert int(to_numpy(loaded.optimizer.iterations)) == 2
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    # The noise stream continues: the resumed model trains exactly like the original.
    np.testing.assert_array_equal(to_numpy(loaded.seed_generator.state), to_numpy(model.seed_generator.state))
    resumed = fit_losses(loaded, images, labels, steps=2, batch_size=16)
    original = fit_losses(model, images, labels, steps=2, batch_size=16)
    np.testing.assert_allclose(resumed, original, rtol=1e-6)


def test_saved_optimizer_is_named_by_its_public_class():
    """Under torch, Keras would save `keras.src.backend.torch.optimizers.torch_adam.Adam`."""
    model = tiny_sit()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    optimizer = model.get_compile_config()["optimizer"]
    assert optimizer["module"] == "keras.optimizers" and optimizer["class_name"] == "Adam"
    assert model.get_compile_config()["jit_compile"] == "auto"


def test_config_round_trip():
    model = tiny_sit(num_classes=3, learn_sigma=True, time_embedding_scale=1, path="cosine", class_dropout_prob=0.0)
    clone = SiT.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    for a, b in zip(clone.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)  # same seed, same weights


@keras.saving.register_keras_serializable(package="keras_sit_tests")
class QuadraticPath(keras_sit.Path):
    """A user path: alpha = 1 - t^2, beta = t."""

    def alpha(self, t):
        return 1.0 - t * t

    def beta(self, t):
        return t

    def d_alpha(self, t):
        return -2.0 * t

    def d_beta(self, t):
        return keras.ops.ones_like(t)


def test_custom_path_saves_and_loads_with_safe_mode(tmp_path, images):
    model = tiny_sit(path=QuadraticPath())
    model.compile()
    model.fit(images, batch_size=16, epochs=1, verbose=0)
    model.save(str(tmp_path / "custom.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "custom.keras"), safe_mode=True)
    assert isinstance(loaded.interpolant, QuadraticPath)
    out = loaded(images[:2])
    assert np.all(np.isfinite(to_numpy(out["target"])))


# --- generate -----------------------------------------------------------------------------


def test_euler_sampler_on_linear_ode():
    """dx/dt = x from t=1 to t=0: Euler gives x0 (1 - 1/N)^N, which tends to x0 / e."""
    x = np.array([[1.0, -2.0]], "float32")
    for steps in (1, 4, 64):
        out = to_numpy(sampling.integrate_ode(lambda x, t: x, x, steps, "euler"))
        np.testing.assert_allclose(out, x * (1 - 1 / steps) ** steps, rtol=1e-5)
    time_seen = to_numpy(
        sampling.integrate_ode(
            lambda x, t: keras.ops.ones_like(x) * t[:, None], np.zeros((3, 1), "float32"), 4, "euler"
        )
    )
    # Explicit Euler integral of t over [1, 0] at t = 1, .75, .5, .25: -(1 + .75 + .5 + .25) / 4.
    np.testing.assert_allclose(time_seen, -0.625, rtol=1e-6)


def test_generate_shapes_seed_and_guidance(rng):
    model = tiny_sit(num_classes=3)
    randomize(model, rng)
    samples = model.generate(6, labels=[0, 1, 2, 0, 1, 2], num_steps=4, cfg_scale=3.0, seed=7)
    assert isinstance(samples, np.ndarray) and samples.shape == (6, 4, 4, 2)
    np.testing.assert_array_equal(
        samples, model.generate(6, labels=[0, 1, 2, 0, 1, 2], num_steps=4, cfg_scale=3.0, seed=7)
    )
    assert not np.allclose(model.generate(6, labels=1, num_steps=4), model.generate(6, labels=1, num_steps=4))
    x = rng.normal(size=(2, 4, 4, 2)).astype("float32")
    t = np.array([0.3, 0.8], "float32")
    y = np.array([1, 2], "int32")
    cond = to_numpy(model.velocity(x, t, y))
    uncond = to_numpy(model.velocity(x, t))  # labels=None: the null class
    np.testing.assert_allclose(
        to_numpy(model.velocity(x, t, y, cfg_scale=3.0)), uncond + 3.0 * (cond - uncond), rtol=1e-4, atol=1e-5
    )
    unconditional = model.generate(2, num_steps=2)  # null class
    assert unconditional.shape == (2, 4, 4, 2)


def test_generate_vectors():
    model = tiny_sit(input_shape=None, input_dim=4)
    assert model.generate(3, num_steps=2).shape == (3, 4)


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(path="spiral"), ValueError, "`path` must be one of"),
        (dict(prediction="x0"), ValueError, "`prediction` must be one of"),
        (dict(depth=3, num_layers=4), ValueError, "alias of `depth`"),
        (dict(seed=1.5), TypeError, "`seed` must be an int"),
        (dict(seed=-1), ValueError, r"`seed` must be in \[0, 2\*\*31 - 1\)"),
        (dict(hidden_size=12, num_heads=8), ValueError, "divisible by `num_heads`"),
        (dict(input_shape=(5, 4, 2)), ValueError, "divisible by `patch_size`"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        tiny_sit(**kwargs)


def test_num_layers_alias():
    assert tiny_sit(depth=6, num_layers=3).backbone.depth == 3


def test_bad_fit_inputs(images, labels):
    conditional = tiny_sit(num_classes=3)
    conditional.compile()
    unconditional = tiny_sit()
    unconditional.compile()
    with pytest.raises(ValueError, match="`x` must be images"):
        conditional.fit(images[..., 0], labels, verbose=0)
    with pytest.raises(ValueError, match=r"`x` must be images .* \(batch, 4, 4, 2\)"):
        conditional.fit(np.zeros((16, 4, 4, 3), "float32"), labels, verbose=0)
    with pytest.raises(ValueError, match="class-conditional .* pass labels"):
        conditional.fit(images, verbose=0, batch_size=8)
    with pytest.raises(ValueError, match="this SiT is unconditional"):
        unconditional.fit(images, labels, verbose=0, batch_size=8)
    with pytest.raises(ValueError, match="`labels` must be class indices of shape"):
        conditional.fit(images, np.zeros((16, 2), "int32"), verbose=0, batch_size=8)
    with pytest.raises(TypeError, match="`labels` must be integer"):
        conditional.fit(images, labels.astype("float32"), verbose=0, batch_size=8)
    with pytest.raises(ValueError, match="`loss` must be None"):
        conditional.compile(loss="mse")
    with pytest.raises(ValueError, match="`labels` must be class indices"):
        conditional.fit(images, labels, validation_data=(images, np.zeros((16, 3), "int32")), verbose=0)
    # The rejected calls left the model intact and trainable.
    assert np.isfinite(conditional.fit(images, labels, batch_size=8, verbose=0).history["loss"][0])


def test_bad_velocity_arguments(rng):
    model = tiny_sit(num_classes=3)
    x = rng.normal(size=(2, 4, 4, 2)).astype("float32")
    with pytest.raises(ValueError, match=r"`x_t` must be images .* \(batch, 4, 4, 2\)"):
        model.velocity(x[:, :2], np.zeros(2, "float32"), np.zeros(2, "int32"))
    with pytest.raises(ValueError, match=r"`t` must be a scalar or have shape \(2,\)"):
        model.velocity(x, np.zeros((2, 1), "float32"), np.zeros(2, "int32"))
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 3\)"):
        model.velocity(x, np.zeros(2, "float32"), np.array([0, 3], "int32"))  # 3 is the null class
    with pytest.raises(ValueError, match="`labels` must have one label per example"):
        model.velocity(x, np.zeros(2, "float32"), np.zeros(3, "int32"))
    with pytest.raises(ValueError, match="`labels` are not accepted"):
        tiny_sit().velocity(x, 0.5, np.zeros(2, "int32"))
    # A scalar t is one time for the whole batch.
    np.testing.assert_array_equal(
        to_numpy(model.velocity(x, 0.5, np.zeros(2, "int32"))),
        to_numpy(model.velocity(x, np.full(2, 0.5, "float32"), np.zeros(2, "int32"))),
    )


def test_bad_generate_arguments():
    conditional = tiny_sit(num_classes=3)
    no_null = tiny_sit(num_classes=3, class_dropout_prob=0.0)
    unconditional = tiny_sit()
    with pytest.raises(ValueError, match="`num_samples` must be a positive int"):
        conditional.generate(0)
    with pytest.raises(ValueError, match="`num_steps` must be a positive int"):
        conditional.generate(2, num_steps=0)
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 3\)"):
        conditional.generate(2, labels=[0, 5])
    with pytest.raises(ValueError, match=r"`labels` must have shape \(2,\)"):
        conditional.generate(2, labels=[0, 1, 2])
    with pytest.raises(TypeError, match="`labels` must be integers"):
        conditional.generate(2, labels=[0.5, 1.0])
    with pytest.raises(TypeError, match="`cfg_scale` must be a finite number"):
        conditional.generate(2, labels=[0, 1], cfg_scale=float("nan"))
    with pytest.raises(ValueError, match="this SiT is unconditional"):
        unconditional.generate(2, labels=[0, 1])
    with pytest.raises(ValueError, match="`cfg_scale` != 1 needs labels"):
        unconditional.generate(2, cfg_scale=2.0)
    with pytest.raises(ValueError, match="no null class"):
        no_null.generate(2)


def test_official_time_convention_feeds_one_minus_t_and_negates_velocity(rng):
    ours = tiny_sit(num_classes=3)
    randomize(ours, rng)
    official = tiny_sit(num_classes=3, time_convention="official")
    official.set_weights(ours.get_weights())
    x = rng.normal(size=(2, 4, 4, 2)).astype("float32")
    t = np.array([0.2, 0.9], "float32")
    y = np.array([0, 2], "int32")
    expected = -to_numpy(ours.backbone({"x_t": x, "t": 1 - t, "labels": y}))
    np.testing.assert_allclose(to_numpy(official.velocity(x, t, y)), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="`time_convention` must be"):
        tiny_sit(time_convention="reversed")


def test_an_uncompiled_model_loads_uncompiled(tmp_path):
    tiny_sit().save(tmp_path / "sit.keras")
    loaded = keras.saving.load_model(tmp_path / "sit.keras")
    assert not loaded.compiled and getattr(loaded, "optimizer", None) is None


def test_values_that_would_corrupt_the_weights_are_refused_before_fit(images, labels):
    model = tiny_sit(num_classes=3)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = [w.copy() for w in model.get_weights()]
    for value in (np.nan, np.inf):
        bad = images.copy()
        bad[3, 1, 2, 0] = value
        with pytest.raises(ValueError, match="`x` holds 1 non-finite values"):
            model.fit(bad, labels, batch_size=8, verbose=0)
    for label in (-1, 3):
        bad_labels = labels.copy()
        bad_labels[5] = label
        with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 3\)"):
            model.fit(images, bad_labels, batch_size=8, verbose=0)
        with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 3\)"):
            model.fit(images, labels, validation_data=(images, bad_labels), batch_size=8, verbose=0)
        with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 3\)"):
            model.evaluate(images, bad_labels, batch_size=8, verbose=0)
    for weight, old in zip(model.get_weights(), before):
        np.testing.assert_array_equal(weight, old)
    history = model.fit(images, labels, batch_size=8, verbose=0).history  # the model is intact
    assert np.isfinite(history["loss"][0])
    with pytest.raises(ValueError, match="`diffusion_norm` must be in"):
        model.generate(2, labels=[0, 1], sampler="sde-euler", diffusion_norm=-1.0)
