"""`AutoencoderKL`: shapes, the latent spaces, chunked decoding, saving, mixed precision and input checks.

Numerical agreement with diffusers is tested in test_convert_autoencoder.py.
"""

import keras
import numpy as np
import pytest

from keras_sit.autoencoders import AUTOENCODER_CONFIGS, AutoencoderKL, sample_posterior
from tests.conftest import to_numpy

TINY = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4)


def tiny(seed=0, **overrides):
    """A two-level autoencoder (f = 2) with random weights of order one in every layer (biases and norms too)."""
    model = AutoencoderKL(**{**TINY, **overrides})
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        if variable.path.endswith("gamma"):
            values = 1.0 + rng.normal(0, 0.1, size=variable.shape)
        elif len(variable.shape) > 1:
            values = rng.normal(0, np.prod(variable.shape[:-1]) ** -0.5, size=variable.shape)
        else:
            values = rng.normal(0, 0.1, size=variable.shape)
        variable.assign(values.astype("float32"))
    return model


def images(batch=2, seed=0):
    """Non-square images. The tests share this shape: JAX compiles each eager op once per shape."""
    return np.random.default_rng(seed).uniform(-1, 1, size=(batch, 8, 12, 3)).astype("float32")


def test_shapes_dtypes_and_factor():
    model = tiny(scaling_factor=0.5, shift_factor=0.1)
    x = images()
    mean, logvar = model.encode_moments(x)
    assert model.downsampling_factor == 2
    assert tuple(mean.shape) == tuple(logvar.shape) == (2, 4, 6, 4)
    latents = model.encode(x, seed=1)
    assert tuple(latents.shape) == (2, 4, 6, 4)
    decoded = model.decode(latents)
    assert tuple(decoded.shape) == (2, 8, 12, 3)
    assert tuple(model(x).shape) == (2, 8, 12, 3)
    for tensor in (mean, logvar, latents, decoded, model(x)):
        assert keras.backend.standardize_dtype(tensor.dtype) == "float32"
    assert AutoencoderKL(**{**TINY, "block_out_channels": (8, 8, 16)}).downsampling_factor == 4


def test_chunked_decode_and_encode_equal_one_pass():
    model = tiny()
    latents = np.random.default_rng(1).normal(size=(3, 4, 6, 4)).astype("float32")
    np.testing.assert_allclose(  # batches of 2 and 1
        to_numpy(model.decode(latents, batch_size=2)), to_numpy(model.decode(latents)), rtol=1e-5, atol=1e-5
    )
    x = images()
    for chunked, whole in zip(model.encode_moments(x, batch_size=1), model.encode_moments(x)):
        np.testing.assert_allclose(to_numpy(chunked), to_numpy(whole), rtol=1e-5, atol=1e-5)


def test_encode_mean_sample_and_seeds():
    model = tiny(scaling_factor=0.5, shift_factor=0.1)
    x = images()
    mean, logvar = (to_numpy(t) for t in model.encode_moments(x))
    np.testing.assert_allclose(to_numpy(model.encode(x, sample=False)), (mean - 0.1) * 0.5, rtol=1e-6, atol=1e-6)
    assert logvar.min() >= -30.0 and logvar.max() <= 20.0

    # An int seed is the same noise every time, and the draw is mean + std * N(0, 1).
    first, again = to_numpy(model.encode(x, seed=7)), to_numpy(model.encode(x, seed=7))
    np.testing.assert_array_equal(first, again)
    noise = to_numpy(keras.random.normal(mean.shape, seed=7, dtype="float32"))
    np.testing.assert_allclose(first, (mean + np.exp(0.5 * logvar) * noise - 0.1) * 0.5, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        to_numpy(sample_posterior(mean, logvar, 7)), mean + np.exp(0.5 * logvar) * noise, rtol=1e-5, atol=1e-5
    )
    # Without a seed the model's own generator gives fresh noise on every call.
    assert not np.allclose(to_numpy(model.encode(x)), to_numpy(model.encode(x)))
    generator = keras.random.SeedGenerator(3)
    assert not np.allclose(to_numpy(model.encode(x, seed=generator)), to_numpy(model.encode(x, seed=generator)))


def test_latent_scaling_round_trip():
    model = tiny(scaling_factor=0.5, shift_factor=0.1)
    raw = np.random.default_rng(0).normal(size=(2, 4, 6, 4)).astype("float32")
    np.testing.assert_allclose(to_numpy(model.scale_latents(raw)), (raw - 0.1) * 0.5, rtol=1e-6)
    np.testing.assert_allclose(to_numpy(model.unscale_latents(model.scale_latents(raw))), raw, rtol=1e-5, atol=1e-6)
    # decode takes scaled latents: encode(mean) -> decode is the reconstruction `call`.
    x = images()
    np.testing.assert_allclose(
        to_numpy(model.decode(model.encode(x, sample=False))), to_numpy(model(x)), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "overrides",
    [{}, {"use_quant_conv": False, "use_post_quant_conv": False, "mid_block_add_attention": False}],
)
def test_keras_file_round_trip(tmp_path, overrides):
    model = tiny(scaling_factor=0.25, shift_factor=-0.5, seed=1, **overrides)
    path = tmp_path / "autoencoder.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, AutoencoderKL)
    assert loaded.get_config() == model.get_config()
    x = images()
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))
    latents = model.encode(x, sample=False)
    np.testing.assert_array_equal(to_numpy(loaded.encode(x, sample=False)), to_numpy(latents))
    np.testing.assert_array_equal(to_numpy(loaded.decode(latents)), to_numpy(model.decode(latents)))


def test_mixed_bfloat16_is_close_to_float32():
    reference = tiny()
    model = AutoencoderKL(**TINY, dtype="mixed_bfloat16")
    model.set_weights(reference.get_weights())
    assert model.encoder.conv_in.compute_dtype == "bfloat16"
    assert all(keras.backend.standardize_dtype(w.dtype) == "float32" for w in model.weights)
    x = images()
    pairs = [
        (model.encode_moments(x)[0], reference.encode_moments(x)[0]),
        (model.decode(reference.encode(x, sample=False)), reference.decode(reference.encode(x, sample=False))),
    ]
    for low, high in pairs:
        assert keras.backend.standardize_dtype(low.dtype) == "float32"
        low, high = to_numpy(low), to_numpy(high)
        assert np.abs(low - high).max() <= 0.05 * np.abs(high).max()


def test_presets():
    assert set(AUTOENCODER_CONFIGS) >= {"sd", "sd3"}
    small = dict(block_out_channels=(8, 16), norm_num_groups=4)
    sd3 = AutoencoderKL.from_config_name("sd3", **small)
    assert (sd3.latent_channels, sd3.scaling_factor, sd3.shift_factor) == (16, 1.5305, 0.0609)
    assert sd3.quant_conv is None and sd3.post_quant_conv is None
    assert sd3.get_config()["use_quant_conv"] is False and sd3.downsampling_factor == 2
    sd = AutoencoderKL.from_config_name("sd", **small)
    assert (sd.latent_channels, sd.scaling_factor, sd.shift_factor) == (4, 0.18215, 0.0)
    assert sd.quant_conv is not None and sd.post_quant_conv is not None
    with pytest.raises(ValueError, match="name"):
        AutoencoderKL.from_config_name("sd4")


def test_bad_inputs_and_arguments():
    model = tiny()
    with pytest.raises(ValueError, match="images"):
        model.encode(np.zeros((8, 8, 3), "float32"))
    with pytest.raises(ValueError, match="images"):
        model.encode_moments(np.zeros((1, 8, 8, 4), "float32"))
    with pytest.raises(ValueError, match="divisible by 2"):
        model.encode(np.zeros((1, 7, 8, 3), "float32"))
    with pytest.raises(ValueError, match="latents"):
        model.decode(np.zeros((1, 4, 6, 3), "float32"))
    with pytest.raises(ValueError, match="batch_size"):
        model.decode(np.zeros((1, 4, 6, 4), "float32"), batch_size=0)
    with pytest.raises(TypeError, match="seed"):
        model.encode(images(), seed=1.5)
    with pytest.raises(TypeError, match="sample"):
        model.encode(images(), sample="no")
    with pytest.raises(ValueError, match="norm_num_groups"):
        AutoencoderKL(block_out_channels=(8, 12), norm_num_groups=8)
    with pytest.raises(ValueError, match="scaling_factor"):
        AutoencoderKL(**{**TINY, "scaling_factor": 0.0})
    with pytest.raises(ValueError, match="block_out_channels"):
        AutoencoderKL(block_out_channels=())
    with pytest.raises(TypeError, match="use_quant_conv"):
        AutoencoderKL(**TINY, use_quant_conv=1)


def test_a_frozen_autoencoder_has_no_trainable_weights_after_a_round_trip():
    model = AutoencoderKL(**TINY, trainable=False)
    assert model.trainable_weights == [] and len(model.non_trainable_weights) == len(model.weights)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    assert restored.trainable_weights == [] and not restored.encoder.trainable
