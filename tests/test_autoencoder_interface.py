"""The `Autoencoder` interface: a second, deterministic implementation through the latent cache and LatentSiT.

`PixelUnshuffle` is an autoencoder with no network: each 2x2 block of pixels
becomes one latent position of 4x the channels, shifted and scaled. It
subclasses `keras_sit.autoencoders.Autoencoder` and nothing else, so what
works with it works through the interface alone.
"""

import json
import os

import keras
import numpy as np
import pytest
from keras import ops

import keras_sit
from keras_sit.autoencoders import Autoencoder, LatentDistribution
from keras_sit.latents import ArrayImages, LatentDataset, write_latent_cache
from tests.conftest import tiny_autoencoder, to_numpy

SIT = dict(patch_size=2, hidden_size=16, depth=1, num_heads=2, seed=0)
SHIFT, SCALE = 0.25, 2.0


@keras.saving.register_keras_serializable(package="keras_sit_tests")
class PixelUnshuffle(Autoencoder):
    """Images `[B, H, W, C]` to latents `[B, H/f, W/f, f*f*C]` (each f x f block of pixels), no weights."""

    def __init__(self, factor=2, image_channels=3, scaling_factor=SCALE, shift_factor=SHIFT, **kwargs):
        kwargs.pop("latent_channels", None)  # decided by `factor` and `image_channels`
        super().__init__(factor * factor * image_channels, scaling_factor, shift_factor, **kwargs)
        self.factor, self.image_channels = factor, image_channels
        self.built = True  # no weights to build

    @property
    def downsampling_factor(self):
        return self.factor

    def encode_distribution(self, images, batch_size=None):
        x = ops.convert_to_tensor(images, "float32")
        _, height, width, channels = ops.shape(x)
        f = self.factor
        x = ops.reshape(x, (-1, height // f, f, width // f, f, channels))
        x = ops.reshape(ops.transpose(x, (0, 1, 3, 2, 4, 5)), (-1, height // f, width // f, f * f * channels))
        return self.latent_distribution(x)

    def decode(self, latents, batch_size=None):
        x = self.unscale_latents(latents)
        _, height, width, _ = ops.shape(x)
        f, channels = self.factor, self.image_channels
        x = ops.transpose(ops.reshape(x, (-1, height, width, f, f, channels)), (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (-1, height * f, width * f, channels))

    def call(self, images):
        return self.decode(self.encode(images, sample=False))

    def get_config(self):
        return {**super().get_config(), "factor": self.factor, "image_channels": self.image_channels}


def unshuffled(images):
    """The reference latents of `images`, written with NumPy: `(block - shift) * scale`."""
    b, h, w, c = images.shape
    blocks = images.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h // 2, w // 2, 4 * c)
    return (blocks - SHIFT) * SCALE


def uint8_images(count=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, 16, 16, 3)).astype("uint8")


def test_the_interface_gives_encode_scaling_and_shapes():
    autoencoder = PixelUnshuffle()
    x = uint8_images(2).astype("float32") / 127.5 - 1.0
    np.testing.assert_allclose(to_numpy(autoencoder.encode(x, sample=False)), unshuffled(x), rtol=1e-6, atol=1e-6)
    # Deterministic: a draw is the latent itself, whatever the seed.
    np.testing.assert_array_equal(to_numpy(autoencoder.encode(x, seed=3)), to_numpy(autoencoder.encode(x)))
    distribution = autoencoder.encode_distribution(x)
    assert distribution.deterministic and distribution.std is None and set(distribution.cache_arrays()) == {"mean"}
    np.testing.assert_allclose(to_numpy(autoencoder.decode(autoencoder.encode(x))), x, rtol=1e-6, atol=1e-6)
    assert autoencoder.latent_shape((16, 24)) == (8, 12, 12) and autoencoder.latent_shape((4, 4, 3)) == (2, 2, 12)
    with pytest.raises(ValueError, match="`image_shape` \\(15, 16\\) must have a height and width divisible"):
        autoencoder.latent_shape((15, 16))
    with pytest.raises(ValueError, match="`image_shape` must be"):
        autoencoder.latent_shape(16)
    with pytest.raises(TypeError, match="`sample` must be a bool"):
        autoencoder.encode(x, sample=1)


def test_the_kl_autoencoder_is_one_implementation():
    autoencoder = tiny_autoencoder(scaling_factor=0.5, shift_factor=0.1)
    assert isinstance(autoencoder, Autoencoder)
    x = uint8_images(2).astype("float32") / 127.5 - 1.0
    distribution = autoencoder.encode_distribution(x)
    assert isinstance(distribution, LatentDistribution) and not distribution.deterministic
    mean, logvar = (to_numpy(t) for t in autoencoder.encode_moments(x))
    np.testing.assert_array_equal(to_numpy(distribution.mean), to_numpy(autoencoder.encode(x, sample=False)))
    np.testing.assert_allclose(to_numpy(distribution.mean), (mean - 0.1) * 0.5, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(to_numpy(distribution.std), np.exp(0.5 * logvar) * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(to_numpy(distribution.sample(7)), to_numpy(autoencoder.encode(x, seed=7)))
    arrays = distribution.cache_arrays()
    assert set(arrays) == {"mean", "std"}
    np.testing.assert_allclose(arrays["std"], to_numpy(distribution.std), rtol=1e-6)
    assert autoencoder.latent_shape((16, 16)) == (8, 8, 4)


def test_a_bare_subclass_names_what_it_lacks():
    class Empty(Autoencoder):
        pass

    empty = Empty(latent_channels=4)
    with pytest.raises(NotImplementedError, match="Empty must implement `encode_distribution`"):
        empty.encode(np.zeros((1, 4, 4, 3), "float32"))
    with pytest.raises(NotImplementedError, match="Empty must implement `decode`"):
        empty.decode(np.zeros((1, 2, 2, 4), "float32"))
    with pytest.raises(NotImplementedError, match="Empty must define `downsampling_factor`"):
        empty.latent_shape((4, 4))
    with pytest.raises(ValueError, match="`scaling_factor` must be positive"):
        Empty(latent_channels=4, scaling_factor=0.0)
    with pytest.raises(TypeError, match="`latent_channels` must be a positive int"):
        Empty(latent_channels=2.5)


def test_the_autoencoder_saves_and_loads(tmp_path):
    autoencoder = PixelUnshuffle(scaling_factor=0.5, shift_factor=-0.1)
    autoencoder.save(tmp_path / "pixels.keras")
    loaded = keras.saving.load_model(tmp_path / "pixels.keras", safe_mode=True)
    assert isinstance(loaded, PixelUnshuffle) and loaded.get_config() == autoencoder.get_config()
    assert loaded.identity_config() == autoencoder.identity_config()
    assert loaded.weights_fingerprint() == autoencoder.weights_fingerprint()
    x = uint8_images(2).astype("float32") / 127.5 - 1.0
    np.testing.assert_array_equal(to_numpy(loaded.encode(x)), to_numpy(autoencoder.encode(x)))


def test_a_cache_of_a_deterministic_autoencoder_stores_its_latents(tmp_path):
    images, labels = uint8_images(5), np.array([0, 1, 0, 1, 1])
    autoencoder = PixelUnshuffle()
    description = write_latent_cache(ArrayImages(images, labels), autoencoder, tmp_path, shard_size=2, verbose=0)
    assert description["latent_shape"] == [8, 8, 12] and description["num_shards"] == 3
    assert description["autoencoder"] == {key: value for key, value in autoencoder.get_config().items()
                                          if key not in ("name", "trainable")}  # fmt: skip
    assert sorted(os.listdir(tmp_path / "shard-00000")) == ["labels.npy", "mean.npy", "sums.npy"]  # no std
    mean = np.concatenate([np.load(tmp_path / f"shard-0000{s}" / "mean.npy") for s in range(3)])
    x = images.astype("float32") / 127.5 - 1.0
    for flip, view in enumerate((x, x[:, :, ::-1])):
        np.testing.assert_allclose(mean[:, flip], unshuffled(view), rtol=1e-6, atol=1e-6)
    # Statistics of the latents alone: no posterior variance to add.
    per_channel = mean.reshape(-1, 12).astype("float64")
    np.testing.assert_allclose(description["statistics"]["channel_std"], per_channel.std(0), rtol=1e-6)
    # A sampling dataset gives the stored latents themselves.
    dataset = LatentDataset(tmp_path, batch_size=5, shuffle=False, flip=False, sample=True, seed=0)
    batch, batch_labels = dataset[0]
    np.testing.assert_array_equal(batch, mean[:, 0])
    np.testing.assert_array_equal(batch_labels, labels)
    # Another scaling is another autoencoder: the cache is not resumed with it.
    with pytest.raises(ValueError, match="another source, autoencoder or setting"):
        write_latent_cache(ArrayImages(images, labels), PixelUnshuffle(scaling_factor=1.0), tmp_path, 2, verbose=0)
    with pytest.raises(TypeError, match="`autoencoder` must be a keras_sit.autoencoders.Autoencoder"):
        write_latent_cache(ArrayImages(images), object(), tmp_path / "other")


def test_latent_sit_trains_samples_saves_and_loads_with_it(tmp_path):
    autoencoder = PixelUnshuffle()
    write_latent_cache(ArrayImages(uint8_images(4), np.array([0, 1, 0, 1])), autoencoder, tmp_path / "c", verbose=0)
    dataset = LatentDataset(tmp_path / "c", batch_size=2, seed=0)
    model = keras_sit.LatentSiT(autoencoder=autoencoder, image_size=16, num_classes=2, **SIT)
    assert model.data_shape == (8, 8, 12) and model.image_size == 16
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    losses = model.fit(dataset, epochs=1, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses))

    options = dict(labels=[0, 1], num_steps=2, seed=0)
    latents = keras_sit.SiT.generate(model, 2, **options)
    floats = model.generate(2, output="float", **options)
    np.testing.assert_allclose(floats, np.clip(to_numpy(autoencoder.decode(latents)), -1, 1), rtol=1e-5, atol=1e-5)
    images = model.generate(2, **options)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
    np.testing.assert_allclose(model.encode_images(images), unshuffled(images / 127.5 - 1.0), rtol=1e-5, atol=1e-5)

    model.save(tmp_path / "whole.keras")
    whole = keras.saving.load_model(tmp_path / "whole.keras", safe_mode=True)
    assert isinstance(whole.autoencoder, PixelUnshuffle) and whole.get_config() == model.get_config()
    np.testing.assert_array_equal(whole.generate(2, **options), images)

    model.save_sit(tmp_path / "alone.keras")
    expected = json.loads(json.dumps(autoencoder.identity_config()))
    loaded = keras_sit.LatentSiT.load(tmp_path / "alone.keras", autoencoder=PixelUnshuffle(), safe_mode=True)
    assert loaded.get_config()["autoencoder"]["config"]["scaling_factor"] == expected["scaling_factor"]
    np.testing.assert_array_equal(loaded.generate(2, **options), images)
    with pytest.raises(ValueError, match="its shift_factor 0.5 \\(saved with 0.25\\)"):
        keras_sit.LatentSiT.load(tmp_path / "alone.keras", autoencoder=PixelUnshuffle(shift_factor=0.5))
    with pytest.raises(ValueError, match="class 'AutoencoderKL' \\(saved with 'PixelUnshuffle'\\)"):
        keras_sit.LatentSiT.load(tmp_path / "alone.keras", autoencoder=tiny_autoencoder(latent_channels=12))
