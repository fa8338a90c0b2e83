"""A refused call leaves the model, the autoencoder it shares and the files on disk as they were.

On JAX, Keras' `fit` and `evaluate` detach every variable's value at their first step; a batch
refused while the step is traced must not leave the model (or an autoencoder another model shares)
without values.
"""

import keras
import numpy as np
import pytest

import keras_sit
from tests.conftest import tiny_autoencoder, to_numpy


class FirstBatchBad(keras.utils.PyDataset):
    """Two batches of latents and labels; the first has the wrong latent shape (refused in the step)."""

    def __len__(self):
        return 2

    def __getitem__(self, index):
        shape = (2, 4, 4, 4) if index == 0 else (2, 8, 8, 4)
        return np.zeros(shape, "float32"), np.zeros(2, "int32")


@pytest.mark.parametrize("call", ["fit", "evaluate"])
def test_a_refused_latent_fit_leaves_model_and_shared_autoencoder_working(tmp_path, call):
    vae = tiny_autoencoder()
    config = dict(image_size=16, patch_size=2, hidden_size=8, depth=1, num_heads=2, num_classes=3, seed=0)
    model, other = keras_sit.LatentSiT(vae, **config), keras_sit.LatentSiT(vae, **config)
    model.compile()
    weights = [to_numpy(w) for w in model.weights]
    model.save(tmp_path / "before.keras")
    saved = (tmp_path / "before.keras").read_bytes()
    # TensorFlow traces the step with the shape the batches share: (None, None, None, 4).
    shape = r"\((2|None), (4|None), (4|None), 4\)"
    with pytest.raises(ValueError, match=rf"`x` must be images .* of shape \(batch, 8, 8, 4\); got shape {shape}"):
        getattr(model, call)(FirstBatchBad(), verbose=0, **({"shuffle": False} if call == "fit" else {}))
    for before, after in zip(weights, model.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(after), before)
    assert (tmp_path / "before.keras").read_bytes() == saved
    images = model.generate(2, labels=[0, 1], num_steps=2, seed=1, verbose=0)
    np.testing.assert_array_equal(other.generate(2, labels=[0, 1], num_steps=2, seed=1, verbose=0), images)
    model.save(tmp_path / "after.keras")
    loaded = keras.saving.load_model(tmp_path / "after.keras")
    np.testing.assert_array_equal(loaded.generate(2, labels=[0, 1], num_steps=2, seed=1, verbose=0), images)
    model.fit(np.zeros((2, 8, 8, 4), "float32"), np.zeros(2, "int32"), epochs=1, verbose=0)  # trains on


def test_fit_on_a_cache_of_another_autoencoder_or_normalisation_is_refused(tmp_path):
    from keras_sit.latents import ArrayImages, LatentDataset, write_latent_cache

    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3)).astype("uint8")
    written_by, other = tiny_autoencoder(seed=0), tiny_autoencoder(seed=1)
    write_latent_cache(ArrayImages(images, np.array([0, 1, 2, 0])), written_by, tmp_path / "cache", verbose=0)
    files = {p: p.read_bytes() for p in sorted((tmp_path / "cache").rglob("*")) if p.is_file()}
    config = dict(image_size=16, patch_size=2, hidden_size=8, depth=1, num_heads=2, num_classes=3, seed=0)
    raw, normalized = (LatentDataset(tmp_path / "cache", batch_size=2, normalize=n, seed=0) for n in (False, True))

    model = keras_sit.LatentSiT(other, **config)
    model.compile()
    weights = [to_numpy(w) for w in model.weights]
    with pytest.raises(ValueError, match=r"`x` reads the latent cache .* written by an autoencoder with other"):
        model.fit(raw, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"`validation_data` reads the latent cache"):
        model.fit(np.zeros((2, 8, 8, 4), "float32"), np.zeros(2, "int32"), validation_data=raw, verbose=0)
    plain = keras_sit.LatentSiT(written_by, **config)
    with pytest.raises(ValueError, match=r"`x` yields normalised latents \(normalize=True\) but this model has no"):
        plain.fit(normalized, epochs=1, verbose=0)
    statistics = keras_sit.LatentSiT(written_by, latent_statistics=normalized.statistics, **config)
    with pytest.raises(ValueError, match=r"models normalised latents .* but `x` yields raw ones"):
        statistics.fit(raw, epochs=1, verbose=0)
    for before, after in zip(weights, model.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(after), before)
    assert {p: p.read_bytes() for p in sorted((tmp_path / "cache").rglob("*")) if p.is_file()} == files
    statistics.compile()
    statistics.fit(normalized, epochs=1, verbose=0)  # the matching pair trains
