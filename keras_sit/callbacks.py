"""Watching sample quality during `fit`: a fixed grid of samples, and a Frechet distance in the logs.

The loss of a generative model says little about its samples. `SampleGrid`
writes, every few epochs, a PNG of samples from the same noise and labels, so
successive grids show the same samples improving. `FrechetDistance` draws
samples every few epochs, passes them and held-out real images through a
feature extractor, and puts the Frechet distance between the two feature
distributions into the epoch's logs, so `History` and TensorBoard show it
beside the loss. `BackupAndRestore` keeps a job's training state so that a
restarted job resumes where it stopped. In a job of several processes every
process runs the callbacks (sampling may be a collective) and only the chief
writes.
"""

import json
import os
import shutil

import keras
import numpy as np

from keras_sit import distribution
from keras_sit.backend.train_step import set_initial_epoch
from keras_sit.evaluation.metrics import FeatureStatistics
from keras_sit.evaluation.runner import balanced_labels, extract_features
from keras_sit.files import write_atomically
from keras_sit.validation import check_positive_int, check_seed
from keras_sit.visualization import save_image_grid, to_uint8


class SampleGrid(keras.callbacks.Callback):
    """Every `every` epochs, write `path.format(epoch=...)`: a grid of samples from fixed noise.

    Args:
        path: a file name with `{epoch}` in it, e.g. `"grids/epoch_{epoch:03d}.png"`.
        per_class: samples a row; a row per class (at most `max_rows`), or
            one row for an unconditional model.
        every: epochs between grids.
        seed: the fixed noise (and the SDE's increments).
        **generate_kwargs: `generate`'s sampler and guidance settings.
    """

    def __init__(self, path, per_class=8, max_rows=10, every=1, seed=0, **generate_kwargs):
        super().__init__()
        if not isinstance(path, str):
            raise TypeError(f"`path` must be a str with `{{epoch}}` in it; got {path!r}.")
        if "{epoch" not in path:
            raise ValueError(f"`path` must contain `{{epoch}}` so grids do not overwrite each other; got {path!r}.")
        for name, value in (("per_class", per_class), ("max_rows", max_rows), ("every", every)):
            check_positive_int(name, value)
        check_seed(seed)
        self.path, self.per_class, self.max_rows, self.every, self.seed = path, per_class, max_rows, every, seed
        self.generate_kwargs = {"verbose": 0, **generate_kwargs}  # no bar inside fit's

    def on_train_begin(self, logs=None):
        model = self.model
        self.rows = 1 if model.num_classes is None else min(model.num_classes, self.max_rows)
        self.labels = None if model.num_classes is None else np.repeat(np.arange(self.rows), self.per_class)
        count = self.rows * self.per_class
        self.noise = np.random.default_rng(self.seed).standard_normal((count, *model.data_shape)).astype("float32")

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        samples = self.model.generate(len(self.noise), labels=self.labels, noise=self.noise, seed=self.seed,
                                      **self.generate_kwargs)  # fmt: skip
        if distribution.is_chief():
            save_image_grid(to_uint8(samples), self.path.format(epoch=epoch + 1), rows=self.rows,
                            value_range=(0, 255))  # fmt: skip


class FrechetDistance(keras.callbacks.Callback):
    """Every `every` epochs, log the Frechet distance between samples and real images as `name`.

    Args:
        real_images: held-out real images (uint8, or floats in [-1, 1]).
        feature_extractor: a callable from uint8 images `[B, H, W, 3]` to
            features `[B, d]` (e.g. `lambda x: inception.features(x)["pool"]`
            for FID, or a small classifier's penultimate layer).
        num_samples: samples drawn each time (class-balanced labels).
        every: epochs between evaluations; the value is logged on those
            epochs and kept in `self.values` (`{epoch: distance}`).
        name: the log key.
        seed: the samples' seed (the same every time, so changes are the model's).
        **generate_kwargs: `generate`'s sampler and guidance settings.
    """

    def __init__(self, real_images, feature_extractor, num_samples=500, every=1, name="fid", seed=0, **generate_kwargs):
        super().__init__()
        check_positive_int("num_samples", num_samples)
        check_positive_int("every", every)
        check_seed(seed)
        if not callable(feature_extractor):
            raise TypeError(f"`feature_extractor` must be callable; got {type(feature_extractor).__name__}.")
        self.real_images = to_uint8(real_images)
        self.feature_extractor, self.num_samples, self.every = feature_extractor, num_samples, every
        self.name, self.seed, self.generate_kwargs = name, seed, {"verbose": 0, **generate_kwargs}
        self.values = {}
        self._real = None

    def _features(self, images):
        return extract_features(self.feature_extractor, to_uint8(images))["pool"].astype("float64")

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        if self._real is None:
            self._real = FeatureStatistics.from_features(self._features(self.real_images))
        model = self.model
        labels = None if model.num_classes is None else balanced_labels(self.num_samples, model.num_classes, self.seed)
        samples = model.generate(self.num_samples, labels=labels, seed=self.seed, **self.generate_kwargs)
        distance = FeatureStatistics.from_features(self._features(samples)).frechet_distance(self._real)
        self.values[epoch + 1] = distance
        if logs is not None:
            logs[self.name] = distance


class BackupAndRestore(keras.callbacks.Callback):
    """Back the training state up every epoch; a restarted `fit` resumes from the last backup exactly.

    `keras.callbacks.BackupAndRestore`'s job, for SiT and for jobs of several
    processes. Keras' writes the weights and then the epoch number in place,
    from every process: a job killed between the two, or two processes
    writing at once, leaves a backup that resumes at the wrong epoch or does
    not load. Here only the chief writes; each backup is a new
    `epoch-NNNNN.weights.h5` written atomically (the weights, the
    optimizer's state and the SiT's noise streams), and then `backup.json`,
    atomically, names it; older backups are removed after. Whenever the job
    dies, `backup.json` names a whole file, and every process of the
    restarted job loads it and starts at the epoch after it. The backup
    directory must be visible to every process (a shared file system), as
    for Keras'.

    A data feed that shuffles by epoch number (`LatentDataset`,
    `ProcessSlices`) starts again from its first epoch's order, so a resumed
    job sees the same examples in another order; with `shuffle=False` the
    resumed job computes exactly what an uninterrupted one does.

    Args:
        backup_dir: where the backups go.
        delete_checkpoint: remove the backups when `fit` ends normally.
    """

    STATE_FILE = "backup.json"

    def __init__(self, backup_dir, delete_checkpoint=True):
        super().__init__()
        if not isinstance(backup_dir, (str, os.PathLike)) or not os.fspath(backup_dir):
            raise TypeError(f"`backup_dir` must be a non-empty path; got {backup_dir!r}.")
        self.backup_dir = os.fspath(backup_dir)
        self.delete_checkpoint = bool(delete_checkpoint)

    def _state(self):
        path = os.path.join(self.backup_dir, self.STATE_FILE)
        if not os.path.exists(path):
            return None
        with open(path) as file:
            return json.load(file)

    def on_train_begin(self, logs=None):
        if distribution.is_chief():
            os.makedirs(self.backup_dir, exist_ok=True)
        state = self._state()
        if state is None:
            return
        model = self.model
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(os.path.join(self.backup_dir, state["weights"]))
        set_initial_epoch(model, state["epoch"])

    def on_epoch_end(self, epoch, logs=None):
        name = f"epoch-{epoch + 1:05d}.weights.h5"
        # Every process saves (a collective on JAX and TensorFlow); the chief writes (`SiT.save_weights`).
        self.model.save_weights(os.path.join(self.backup_dir, name))
        if not distribution.is_chief():
            return
        state = json.dumps({"epoch": epoch + 1, "weights": name}).encode()
        write_atomically(os.path.join(self.backup_dir, self.STATE_FILE), lambda file: file.write(state))
        for old in os.listdir(self.backup_dir):
            if old.startswith("epoch-") and old.endswith(".weights.h5") and old != name:
                os.remove(os.path.join(self.backup_dir, old))

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and distribution.is_chief() and not self.model.stop_training:
            shutil.rmtree(self.backup_dir, ignore_errors=True)
