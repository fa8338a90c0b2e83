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
