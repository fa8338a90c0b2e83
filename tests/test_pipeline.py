"""LatentSiT end to end: a folder of images -> latent cache -> fit -> generate -> PNG, saved as one file; latents
normalised with the cache's statistics; teacher features from the cache into an objective."""

import glob
import os
import warnings

import keras
import numpy as np
import pytest
from keras import ops
from PIL import Image

import keras_sit
from keras_sit import files
from keras_sit.latents import ArrayImages, ImageFolder, LatentDataset, write_latent_cache
from keras_sit.objectives import Objective
from keras_sit.visualization import save_image_grid, to_float
from tests.conftest import tiny_autoencoder, to_numpy

SIT = dict(patch_size=2, hidden_size=16, depth=1, num_heads=2, seed=0)


def image_folder(root, rng):
    """Two classes of 20x24 pictures: dark ones with a bright square, bright ones with a dark square."""
    for label, (background, square) in enumerate(((30, 220), (220, 30))):
        (root / f"class_{label}").mkdir(parents=True)
        for i in range(4):
            picture = np.full((20, 24, 3), background, "uint8")
            top, left = rng.integers(2, 10, 2)
            picture[top : top + 6, left : left + 6] = square
            Image.fromarray(picture).save(root / f"class_{label}" / f"{i}.png")
    return root


def test_folder_to_cache_to_fit_to_png_and_one_file_round_trip(tmp_path, rng):
    folder = ImageFolder(image_folder(tmp_path / "images", rng), image_size=16)
    autoencoder = tiny_autoencoder()
    write_latent_cache(folder, autoencoder, tmp_path / "cache", shard_size=3, verbose=0)
    dataset = LatentDataset(tmp_path / "cache", batch_size=4, seed=0)
    model = keras_sit.LatentSiT(autoencoder=autoencoder, image_size=16, num_classes=dataset.num_classes, **SIT)
    assert model.data_shape == (8, 8, 4) and model.image_size == 16
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    losses = model.fit(dataset, epochs=2, verbose=0).history["loss"]
    assert len(losses) == 2 and np.all(np.isfinite(losses))
    # The autoencoder is frozen: training moved the SiT only.
    assert all(not w.trainable for w in model.autoencoder.weights)
    assert len(model.trainable_weights) == len(model.backbone.trainable_weights)

    images = model.generate(4, labels=[0, 1, 0, 1], num_steps=3, seed=0)
    assert images.shape == (4, 16, 16, 3) and images.dtype == np.uint8
    save_image_grid(images, tmp_path / "samples.png", rows=2, value_range=(0, 255))
    assert Image.open(tmp_path / "samples.png").size == (2 * 18 * 14, 2 * 18 * 14)  # scaled to >= 512 px

    model.save(tmp_path / "latent_sit.keras")
    loaded = keras.saving.load_model(tmp_path / "latent_sit.keras", safe_mode=True)
    assert isinstance(loaded, keras_sit.LatentSiT) and loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(loaded.generate(4, labels=[0, 1, 0, 1], num_steps=3, seed=0), images)
    # Training resumes from the saved optimizer state.
    assert int(keras.ops.convert_to_numpy(loaded.optimizer.iterations)) == 2 * len(dataset)


def test_generate_decodes_what_the_sit_samples(rng):
    autoencoder = tiny_autoencoder()
    sit = keras_sit.SiT(input_shape=(8, 8, 4), num_classes=3, **SIT)
    for variable in sit.backbone.trainable_weights:
        variable.assign(rng.normal(0, 0.2, size=variable.shape).astype("float32"))
    model = keras_sit.LatentSiT.from_sit(sit, autoencoder)
    options = dict(labels=[0, 2], num_steps=2, cfg_scale=2.0, sampler="heun", seed=5)
    latents = sit.generate(2, **options)
    expected = np.clip(keras.ops.convert_to_numpy(autoencoder.decode(latents)), -1.0, 1.0)
    floats = model.generate(2, output="float", **options)
    np.testing.assert_allclose(floats, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(model.generate(2, **options), np.round((expected + 1.0) * 127.5).astype("uint8"))
    chunked, trajectory = model.generate(2, output="float", decode_batch_size=1, return_trajectory=True, **options)
    np.testing.assert_allclose(chunked, floats, rtol=1e-5, atol=1e-5)
    assert trajectory.shape == (3, 2, 8, 8, 4)  # in latent space
    sde = model.generate(2, sampler="sde-euler", num_steps=2, labels=1, guidance_channels=3, cfg_scale=3.0)
    assert sde.shape == (2, 16, 16, 3)


def test_bad_arguments():
    autoencoder = tiny_autoencoder()
    with pytest.raises(ValueError, match="`image_size` \\(17\\) must be divisible"):
        keras_sit.LatentSiT(autoencoder=autoencoder, image_size=17, **SIT)
    with pytest.raises(ValueError, match="latent channels"):
        keras_sit.LatentSiT(autoencoder=autoencoder, input_shape=(8, 8, 3), **SIT)
    with pytest.raises(ValueError, match="needs `image_size`"):
        keras_sit.LatentSiT(autoencoder=autoencoder, **SIT)
    with pytest.raises(TypeError, match="`autoencoder` must be"):
        keras_sit.LatentSiT(autoencoder="sd-vae", image_size=16, **SIT)
    model = keras_sit.LatentSiT(autoencoder=autoencoder, image_size=16, **SIT)
    with pytest.raises(ValueError, match="`output` must be one of"):
        model.generate(1, output="png", num_steps=1)


def config_without_names(model):
    config = {key: value for key, value in model.get_config().items() if key != "name"}
    return {
        **config,
        "autoencoder": {**config["autoencoder"], "config": {**config["autoencoder"]["config"], "name": None}},
    }


def test_the_sit_saves_alone_and_loads_with_its_autoencoder(tmp_path, rng, monkeypatch):
    vae = dict(block_out_channels=(32, 64))  # 660k weights to the SiT's 11k
    model = keras_sit.LatentSiT(autoencoder=tiny_autoencoder(**vae), image_size=16, num_classes=3, **SIT)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(rng.normal(size=(4, 8, 8, 4)).astype("float32"), np.array([0, 1, 2, 0]), batch_size=4, verbose=0)
    full, alone = str(tmp_path / "full.keras"), str(tmp_path / "alone.keras")
    replaced = []
    replacing = files.replacing
    monkeypatch.setattr(keras_sit.files, "replacing", lambda path: replaced.append(path) or replacing(path))
    model.save(full)
    model.save_sit(alone)
    assert [os.path.basename(path) for path in replaced] == ["full.keras", "alone.keras"]  # both atomic
    assert not glob.glob(str(tmp_path / ".*partial*"))
    assert os.path.getsize(alone) < 0.2 * os.path.getsize(full)  # the autoencoder's weights are the bulk
    assert "autoencoder" in dir(model) and model.get_config()["autoencoder"] is not None  # saving left it whole
    options = dict(labels=[0, 1, 2, 0], num_steps=3, seed=0)
    expected = model.generate(4, **options)

    autoencoder = tiny_autoencoder(**vae)  # the same weights, built anew
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras_sit.LatentSiT.load(alone, autoencoder=autoencoder, safe_mode=True)
    assert not [w for w in caught if "other weights" in str(w.message)]
    assert isinstance(loaded, keras_sit.LatentSiT) and loaded.autoencoder is autoencoder
    assert config_without_names(loaded) == config_without_names(model)
    for ours, theirs in zip(loaded.backbone.weights, model.backbone.weights):
        np.testing.assert_array_equal(to_numpy(ours), to_numpy(theirs))
    assert int(to_numpy(loaded.optimizer.iterations)) == 1  # the optimizer state came along
    np.testing.assert_array_equal(loaded.generate(4, **options), expected)
    # The loaded model is whole again: `save` writes its autoencoder.
    loaded.save(tmp_path / "again.keras")
    assert os.path.getsize(tmp_path / "again.keras") > 0.8 * os.path.getsize(full)

    # The one-file default, unchanged, with either loader.
    for whole in (keras.saving.load_model(full, safe_mode=True), keras_sit.LatentSiT.load(full)):
        assert config_without_names(whole) == config_without_names(model)
        for ours, theirs in zip(whole.autoencoder.weights, model.autoencoder.weights):
            np.testing.assert_array_equal(to_numpy(ours), to_numpy(theirs))
        np.testing.assert_array_equal(whole.generate(4, **options), expected)


def test_the_sit_alone_needs_the_right_autoencoder(tmp_path):
    model = keras_sit.LatentSiT(autoencoder=tiny_autoencoder(), image_size=16, **SIT)
    model.save(tmp_path / "full.keras")
    model.save_sit(tmp_path / "alone.keras")
    alone = str(tmp_path / "alone.keras")
    for load in (keras.saving.load_model, keras_sit.LatentSiT.load):
        with pytest.raises(
            ValueError, match="saved without its autoencoder.*LatentSiT.load\\(path, autoencoder=vae\\)"
        ):
            load(alone)
    with pytest.raises(
        ValueError, match="not the one this LatentSiT was saved with: its latent_channels 8 \\(saved with 4\\)"
    ):
        keras_sit.LatentSiT.load(alone, autoencoder=tiny_autoencoder(latent_channels=8))
    with pytest.raises(ValueError, match="scaling_factor 0.5"):
        keras_sit.LatentSiT.load(alone, autoencoder=tiny_autoencoder(scaling_factor=0.5))
    with pytest.warns(UserWarning, match="other weights"):
        loaded = keras_sit.LatentSiT.load(alone, autoencoder=tiny_autoencoder(seed=1))
    assert loaded.autoencoder.latent_channels == 4
    with pytest.raises(ValueError, match="saved with its autoencoder"):
        keras_sit.LatentSiT.load(tmp_path / "full.keras", autoencoder=tiny_autoencoder())
    with pytest.raises(TypeError, match="`autoencoder` must be"):
        keras_sit.LatentSiT.load(alone, autoencoder="sd-vae")
    with pytest.raises(ValueError, match="`filepath` must be a `.keras` file"):
        model.save_sit(tmp_path / "alone.h5")
    sit = keras_sit.SiT(input_shape=(8, 8, 4), **SIT)
    sit.save(tmp_path / "sit.keras")
    with pytest.raises(ValueError, match="not a LatentSiT"):
        keras_sit.LatentSiT.load(tmp_path / "sit.keras")


# --- normalised latents ----------------------------------------------------------------------------

STATISTICS = {"channel_mean": [0.1, -0.2, 0.3, 0.05], "channel_std": [0.5, 2.0, 1.5, 0.8]}
MEAN, STD = (np.asarray(STATISTICS[key], "float32") for key in ("channel_mean", "channel_std"))


def test_normalized_latents_are_denormalized_to_decode_and_normalized_on_encoding(tmp_path, rng):
    autoencoder = tiny_autoencoder()
    sit = keras_sit.SiT(input_shape=(8, 8, 4), num_classes=3, **SIT)
    for variable in sit.backbone.trainable_weights:
        variable.assign(rng.normal(0, 0.2, size=variable.shape).astype("float32"))
    model = keras_sit.LatentSiT.from_sit(sit, autoencoder, latent_statistics=STATISTICS)
    assert model.normalizes_latents and model.latent_mean == STATISTICS["channel_mean"]
    assert model.get_config()["latent_std"] == STATISTICS["channel_std"]

    # The SiT samples normalised latents; the images are those of `latent * std + mean`.
    options = dict(labels=[0, 2], num_steps=2, cfg_scale=2.0, seed=5)
    normalized = sit.generate(2, **options)
    expected = np.clip(to_numpy(autoencoder.decode(normalized * STD + MEAN)), -1.0, 1.0)
    np.testing.assert_allclose(model.generate(2, output="float", **options), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.decode_latents(normalized, output="float"), expected, rtol=1e-5, atol=1e-5)
    unnormalized = keras_sit.LatentSiT.from_sit(sit, autoencoder)
    assert not unnormalized.normalizes_latents and unnormalized.get_config()["latent_mean"] is None
    assert np.abs(unnormalized.decode_latents(normalized, output="float") - expected).max() > 0.01

    # Encoding normalises: `(latent - mean) / std`; decoding it gives the autoencoder's round trip.
    images = rng.integers(0, 256, (3, 16, 16, 3)).astype("uint8")
    scaled = to_numpy(autoencoder.encode(to_float(images), sample=False))
    encoded = model.encode_images(images)
    np.testing.assert_allclose(encoded, (scaled - MEAN) / STD, rtol=1e-5, atol=1e-6)
    round_trip = np.clip(to_numpy(autoencoder.decode(scaled)), -1.0, 1.0)
    np.testing.assert_allclose(model.decode_latents(encoded, output="float"), round_trip, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(to_numpy(model.denormalize_latents(model.normalize_latents(scaled))), scaled, atol=1e-6)

    # Saved and loaded (one file, or the SiT alone), the statistics stay.
    expected_images = model.generate(2, **options)
    model.save(tmp_path / "model.keras")
    model.save_sit(tmp_path / "sit.keras")
    for loaded in (
        keras.saving.load_model(tmp_path / "model.keras", safe_mode=True),
        keras_sit.LatentSiT.load(tmp_path / "sit.keras", autoencoder=tiny_autoencoder(), safe_mode=True),
    ):
        assert loaded.latent_mean == STATISTICS["channel_mean"] and loaded.latent_std == STATISTICS["channel_std"]
        np.testing.assert_array_equal(loaded.generate(2, **options), expected_images)
    # `from_sit` of a LatentSiT keeps its statistics.
    assert keras_sit.LatentSiT.from_sit(model, autoencoder).latent_std == STATISTICS["channel_std"]


def test_a_cache_normalised_into_fit_with_teacher_features(tmp_path, rng):
    """REPA's data: normalised latents and a teacher's tokens of the same flip, read by an objective in `fit`."""
    images = rng.integers(0, 256, (6, 16, 16, 3)).astype("uint8")
    seeded = keras.initializers.GlorotUniform(seed=0)
    patches = keras.layers.Conv2D(6, 4, strides=4, kernel_initializer=seeded, name="patches")
    teacher = keras.Sequential(
        [keras.Input((16, 16, 3), name="images"), patches, keras.layers.Reshape((16, 6), name="tokens")],
        name="teacher",
    )
    autoencoder = tiny_autoencoder()
    description = write_latent_cache(
        ArrayImages(images, np.arange(6) % 2), autoencoder, tmp_path, verbose=0, teachers={"dino": teacher}
    )
    dataset = LatentDataset(tmp_path, batch_size=3, seed=0, features=True, normalize=True)
    model = keras_sit.LatentSiT.from_preset(
        "SiT-S/2",
        autoencoder=autoencoder,
        image_size=16,
        num_classes=2,
        latent_statistics=dataset.statistics,
        hidden_size=16,
        depth=1,
        num_heads=2,
        objectives=[TokenAlignment(name="alignment")],
    )
    assert model.latent_mean == description["statistics"]["channel_mean"]
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(dataset, epochs=1, verbose=0).history
    assert set(history) == {"loss", "alignment"} and np.isfinite(history["alignment"][0])
    assert model.generate(2, labels=[0, 1], num_steps=2, seed=0).shape == (2, 16, 16, 3)


@keras.saving.register_keras_serializable(package="keras_sit_tests")
class TokenAlignment(Objective):
    """REPA's term: minus the mean cosine similarity of projected block-1 tokens and the teacher's tokens."""

    extra_inputs = ("dino",)
    token_depths = (1,)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.projector = keras.layers.Dense(6, name="projector")

    def build(self, token_shape):
        self.projector.build((None, *token_shape))

    def term(self, batch, forward, training=False):
        projected = self.projector(forward["tokens"][1])
        target = ops.cast(batch["dino"], "float32")
        cosine = ops.sum(projected * target, -1) / (ops.norm(projected, axis=-1) * ops.norm(target, axis=-1) + 1e-6)
        return -ops.mean(cosine)


def test_bad_normalization_arguments():
    autoencoder = tiny_autoencoder()

    def model(**kwargs):
        return keras_sit.LatentSiT(autoencoder=autoencoder, image_size=16, **SIT, **kwargs)

    with pytest.raises(ValueError, match="`latent_mean` and `latent_std` go together"):
        model(latent_mean=[0.0] * 4)
    with pytest.raises(ValueError, match=r"`latent_std` must have one number per latent channel \(4\); got 3"):
        model(latent_mean=[0.0] * 4, latent_std=[1.0] * 3)
    with pytest.raises(ValueError, match="`latent_std` must be positive in every channel"):
        model(latent_mean=[0.0] * 4, latent_std=[1.0, 0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="`latent_mean` must be finite"):
        model(latent_mean=[0.0, float("nan"), 0.0, 0.0], latent_std=[1.0] * 4)
    with pytest.raises(TypeError, match="`latent_mean` must be a list of numbers"):
        model(latent_mean="0.0", latent_std=[1.0] * 4)
    with pytest.raises(ValueError, match="Give `latent_statistics` or `latent_mean` and `latent_std`, not both"):
        model(latent_statistics=STATISTICS, latent_mean=[0.0] * 4, latent_std=[1.0] * 4)
    with pytest.raises(ValueError, match="`latent_statistics` must be a latent cache's statistics"):
        model(latent_statistics={"mean": [0.0] * 4})
    assert model(latent_mean=np.zeros(4), latent_std=(1, 2, 3, 4)).latent_std == [1.0, 2.0, 3.0, 4.0]
