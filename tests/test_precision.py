"""Mixed precision (`mixed_bfloat16`): float32 variables, loss, time embedding and sampler state; bf16 network.

Tolerance: a bf16 model and a float32 model with the same weights agree to
within 5% of the float32 output's largest magnitude (velocity, samples, time
embedding) and 3% (relative) for log-likelihoods. bf16 keeps 8 significant
bits (relative rounding 2^-9 = 0.2%), and a network compounds that over its
layers, so the bounds leave room above a few rounding steps.
"""

import keras
import numpy as np
import pytest

from keras_sit import layers
from tests.conftest import randomize, tiny_sit, to_numpy

TOLERANCE = 0.05


@pytest.fixture(autouse=True)
def float32_policy_after():
    """Whatever a test sets, the next one starts from the default policy."""
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture
def data(rng):
    return {
        "x": rng.normal(size=(8, 4, 4, 2)).astype("float32"),
        "labels": rng.integers(0, 3, 8).astype("int32"),
        "t": rng.uniform(size=8).astype("float32"),
    }


@pytest.fixture
def models(rng):
    """A float32 SiT with random weights and a bf16 one with the same weights."""
    float32 = tiny_sit(num_classes=3)
    randomize(float32, rng)
    bf16 = tiny_sit(num_classes=3, dtype="mixed_bfloat16")
    bf16.set_weights(float32.get_weights())
    return float32, bf16


def assert_close(bf16, float32, tolerance=TOLERANCE):
    bf16, float32 = np.asarray(bf16), np.asarray(float32)
    assert bf16.dtype == np.float32 and np.all(np.isfinite(bf16))
    np.testing.assert_allclose(bf16, float32, rtol=0, atol=tolerance * np.abs(float32).max())


def test_global_policy_float32_variables_bf16_compute(data):
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    model = tiny_sit(num_classes=3)
    assert model.dtype_policy.name == "mixed_bfloat16"
    assert {v.dtype for v in model.weights} == {"float32"}
    backbone = model.backbone
    for layer in (
        backbone.patch_embedding.projection,
        backbone.time_embedding.dense_in,
        backbone.blocks[0].attn.qkv,
        backbone.blocks[1].mlp.fc2,
        backbone.final_layer.linear,
    ):
        assert (layer.compute_dtype, layer.variable_dtype) == ("bfloat16", "float32"), layer.path
    inputs = {"x_t": data["x"], "t": data["t"], "labels": data["labels"]}
    assert keras.backend.standardize_dtype(backbone(inputs).dtype) == "bfloat16"
    # SiT casts the network's output back, and keeps the data and target in float32.
    assert keras.backend.standardize_dtype(model.network(inputs).dtype) == "float32"
    assert keras.backend.standardize_dtype(model.velocity(data["x"], 0.5, data["labels"]).dtype) == "float32"
    outputs = model({"x": data["x"], "labels": data["labels"]}, training=True)
    assert {keras.backend.standardize_dtype(v.dtype) for v in outputs.values()} == {"float32"}
    loss = model.compute_loss(y_pred=outputs)
    assert keras.backend.standardize_dtype(loss.dtype) == "float32" and np.isfinite(to_numpy(loss))


def test_time_embedding_sinusoids_in_float32(models, data, monkeypatch):
    float32, bf16 = models
    seen = []

    def spy(t, *args, **kwargs):
        embedding = sinusoids(t, *args, **kwargs)
        seen.append((keras.backend.standardize_dtype(t.dtype), keras.backend.standardize_dtype(embedding.dtype)))
        return embedding

    sinusoids = layers.timestep_sinusoids
    monkeypatch.setattr(layers, "timestep_sinusoids", spy)
    bf16.velocity(data["x"], data["t"], data["labels"])
    assert seen and set(seen) == {("float32", "float32")}  # t reaches the sinusoids unrounded

    t = data["t"]
    reference = to_numpy(float32.backbone.time_embedding(t))
    embedding = to_numpy(keras.ops.cast(bf16.backbone.time_embedding(t), "float32"))
    assert_close(embedding, reference)
    # What the float32 input buys: with t rounded to bf16 first (as Keras' input
    # autocast would do), 1000 t moves by up to 2 and the embedding is far off.
    rounded_t = to_numpy(keras.ops.cast(keras.ops.cast(t, "bfloat16"), "float32"))
    rounded = to_numpy(float32.backbone.time_embedding(rounded_t))
    assert np.abs(rounded - reference).max() > 2 * TOLERANCE * np.abs(reference).max()


def test_fit_finite_losses_and_float32_state(data):
    model = tiny_sit(num_classes=3, dtype="mixed_bfloat16")
    model.compile(use_ema=True, ema_decay=0.9)
    losses = model.fit(data["x"], data["labels"], batch_size=4, epochs=3, verbose=0).history["loss"]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    assert {v.dtype for v in model.weights} == {"float32"}
    assert {v.dtype for v in model.optimizer.variables if "int" not in v.dtype} == {"float32"}  # EMA included
    assert all(np.all(np.isfinite(to_numpy(v))) for v in model.weights)
    samples = model.generate(4, labels=1, num_steps=4, seed=0)  # with the EMA
    assert samples.dtype == np.float32 and np.all(np.isfinite(samples))


def test_velocity_and_samples_close_to_float32(models, data):
    float32, bf16 = models
    x, t, labels = data["x"], data["t"], data["labels"]
    assert_close(to_numpy(bf16.velocity(x, t, labels)), to_numpy(float32.velocity(x, t, labels)))
    for sampler in ("euler", "sde-euler"):
        expected = float32.generate(8, labels, num_steps=4, sampler=sampler, seed=1)
        samples, trajectory = bf16.generate(8, labels, num_steps=4, sampler=sampler, seed=1, return_trajectory=True)
        assert trajectory.dtype == np.float32  # the sampler's state stays float32
        assert_close(samples, expected)
    guided = bf16.generate(8, labels, num_steps=4, cfg_scale=3.0, seed=1)
    assert_close(guided, float32.generate(8, labels, num_steps=4, cfg_scale=3.0, seed=1))


def test_log_likelihood_close_to_float32(models, data):
    float32, bf16 = models
    args = (data["x"][:4], data["labels"][:4])
    kwargs = dict(num_steps=2, sampler="euler", divergence="hutchinson", seed=0)
    expected = float32.log_likelihood(*args, **kwargs)[0]
    log_p = bf16.log_likelihood(*args, **kwargs)[0]
    assert log_p.dtype == np.float32 and np.all(np.isfinite(log_p))
    np.testing.assert_allclose(log_p, expected, rtol=0.03)


def test_save_load_round_trip(models, data, tmp_path):
    _, model = models
    model.compile()
    model.fit(data["x"], data["labels"], batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "bf16.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.dtype_policy.name == "mixed_bfloat16"
    assert loaded.backbone.blocks[0].attn.qkv.compute_dtype == "bfloat16"
    assert {v.dtype for v in loaded.weights} == {"float32"}
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    args = (data["x"], data["t"], data["labels"])
    np.testing.assert_array_equal(to_numpy(loaded.velocity(*args)), to_numpy(model.velocity(*args)))
    assert int(to_numpy(loaded.optimizer.iterations)) == 1


@pytest.mark.xla_default
@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_auto_jit_compile_follows_the_compute_dtype(dtype):
    # TensorFlow on a CPU: XLA for float32, oneDNN's graph kernels (bf16 instructions) for bf16.
    model = tiny_sit(num_classes=3, dtype=dtype)
    model.compile()
    backend = keras.backend.backend()
    expected = {"jax": True, "torch": False, "tensorflow": dtype == "float32"}[backend]
    assert model.jit_compile is expected
    loss = model.train_on_batch(np.zeros((4, 4, 4, 2), "float32"), np.zeros(4, "int32"))
    assert np.isfinite(loss)
