"""Saving is atomic: a save killed mid-write leaves the previous file whole, where Keras' own leaves it corrupt."""

import glob
import os
import signal
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
from keras.src.utils import io_utils

import keras_sit
from keras_sit import files
from tests.conftest import randomize, to_numpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = dict(input_shape=(4, 4, 1), patch_size=2, hidden_size=8, depth=1, num_heads=2, seed=0)

# Saves a model with other weights over sys.argv[1], and SIGKILLs itself in the middle: the weights are
# written as HDF5 (`.weights.h5`, and inside the `.keras` zip), so the second dataset h5py is asked to
# create kills the process, after the destination was opened and one dataset written, every run alike.
KILLED_SAVE = f"""
import os, signal, sys
import h5py, keras, numpy as np, keras_sit

path, method, ours = sys.argv[1], sys.argv[2], sys.argv[3] == "ours"
model = keras_sit.SiT(**{CONFIG!r})
for variable in model.trainable_weights:
    variable.assign(np.full(variable.shape, 0.5, "float32"))
create_dataset, created = h5py.Group.create_dataset, []

def create_then_die(self, *args, **kwargs):
    if created:
        os.kill(os.getpid(), signal.SIGKILL)
    created.append(args[0])
    return create_dataset(self, *args, **kwargs)

h5py.Group.create_dataset = create_then_die
if ours:
    getattr(model, method)(path)
else:  # Keras' own
    getattr(keras.Model, method)(model, path)
"""


def tiny(seed):
    model = keras_sit.SiT(**CONFIG)
    randomize(model, np.random.default_rng(seed))
    return model


def values(model):
    return [to_numpy(v) for v in model.weights]


def assert_same_weights(model, expected):
    for value, want in zip(values(model), expected):
        np.testing.assert_array_equal(value, want)


def loaded_weights(path):
    if path.endswith(".keras"):
        return values(keras.saving.load_model(path, safe_mode=True))
    model = keras_sit.SiT(**CONFIG)
    model.load_weights(path)
    return values(model)


def partials(path):
    return glob.glob(os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.partial-*"))


def child_env():
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend(), "TF_CPP_MIN_LOG_LEVEL": "3"}
    if keras.backend.backend() == "jax":  # share conftest's compilation cache: the child compiles what we did
        import jax

        env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir or ""
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


def test_killed_save_leaves_the_previous_file_and_keras_own_does_not(tmp_path):
    original = tiny(seed=0)
    paths = {}
    cases = (("save", "ours", "sit.keras"), ("save_weights", "ours", "sit.weights.h5"), ("save", "keras", "sit.keras"))
    for save, saver, name in cases:
        paths[save, saver] = path = str(tmp_path / f"{save}-{saver}" / name)  # a directory each, to list it
        os.makedirs(os.path.dirname(path))
        getattr(original, save)(path)
    # One process per kill; they import a backend each, so they run side by side.
    processes = {
        case: subprocess.Popen([sys.executable, "-c", KILLED_SAVE, path, *case], cwd=ROOT, env=child_env())
        for case, path in paths.items()
    }
    for case, process in processes.items():
        assert process.wait(timeout=120) == -signal.SIGKILL, case

    # Keras writes in place: the same kill truncated its file. This is what the protection is for.
    with pytest.raises(ValueError, match="File not found"):
        keras.saving.load_model(paths["save", "keras"])

    for save in ("save", "save_weights"):
        path = paths[save, "ours"]
        assert_same_weights(original, loaded_weights(path))
        assert len(partials(path)) == 1  # the killed write, under a name no reader takes for the file
        assert glob.glob(os.path.join(os.path.dirname(path), "*")) == [path]

        # The next save replaces the file and removes what the killed one left.
        new = tiny(seed=1)
        getattr(new, save)(path)
        assert_same_weights(new, loaded_weights(path))
        assert not partials(path)


def test_failed_save_leaves_the_previous_file(tmp_path, monkeypatch):
    original = tiny(seed=0)
    paths = [str(tmp_path / "sit.keras"), str(tmp_path / "sit.weights.h5")]
    original.save(paths[0])
    original.save_weights(paths[1])

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(h5py.Group, "create_dataset", fail)
    for path, save in zip(paths, ("save", "save_weights")):
        with pytest.raises(OSError, match="disk full"):
            getattr(tiny(seed=1), save)(path)
    monkeypatch.undo()
    for path in paths:
        assert_same_weights(original, loaded_weights(path))
    assert sorted(os.listdir(tmp_path)) == ["sit.keras", "sit.weights.h5"]  # no partial left


@pytest.mark.parametrize("proceed", [False, True])
def test_overwrite_false_asks_first(tmp_path, monkeypatch, proceed):
    original, new = tiny(seed=0), tiny(seed=1)
    paths = [str(tmp_path / "sit.keras"), str(tmp_path / "sit.weights.h5")]
    original.save(paths[0])
    original.save_weights(paths[1])
    asked = []
    monkeypatch.setattr(io_utils, "ask_to_proceed_with_overwrite", lambda path: asked.append(path) or proceed)
    new.save(paths[0], overwrite=False)
    new.save_weights(paths[1], overwrite=False)
    assert asked == paths
    for path in paths:
        assert_same_weights(new if proceed else original, loaded_weights(path))


def test_model_checkpoint_and_latent_sit_save_atomically(tmp_path, monkeypatch):
    assert keras_sit.LatentSiT.save is keras_sit.SiT.save
    assert keras_sit.LatentSiT.save_weights is keras_sit.SiT.save_weights
    replaced = []
    replacing = files.replacing

    def spy(path):
        replaced.append(os.path.basename(path))
        return replacing(path)

    monkeypatch.setattr(keras_sit.files, "replacing", spy)
    model = tiny(seed=0)
    for name, weights_only in (("sit.keras", False), ("sit.weights.h5", True)):
        checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / name), save_weights_only=weights_only)
        checkpoint.set_model(model)
        checkpoint.on_epoch_end(0, logs={"loss": 1.0})
        assert_same_weights(model, loaded_weights(str(tmp_path / name)))
    assert replaced == ["sit.keras", "sit.weights.h5"]


def test_remote_and_directory_paths_are_saved_by_keras(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(keras.Model, "save", lambda self, path, **kwargs: calls.append((path, kwargs)))
    model = tiny(seed=0)
    model.save("gs://bucket/sit.keras")
    model.save(str(tmp_path / "sit"), zipped=False)
    assert calls == [
        ("gs://bucket/sit.keras", {"overwrite": True, "zipped": None}),
        (str(tmp_path / "sit"), {"overwrite": True, "zipped": False}),
    ]
