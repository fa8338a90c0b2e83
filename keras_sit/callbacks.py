"""Watching sample quality during `fit`: a fixed grid of samples, and a Frechet distance in the logs.

The loss of a generative model says little about its samples. `SampleGrid`
writes, every few epochs, a PNG of samples from the same noise and labels, so
successive grids show the same samples improving. `FrechetDistance` draws
samples every few epochs, passes them and held-out real images through a
feature extractor, and puts the Frechet distance between the two feature
distributions into the epoch's logs, so `History` and TensorBoard show it
beside the loss.
"""

import keras
import numpy as np

from keras_sit.evaluation.metrics import FeatureStatistics
from keras_sit.evaluation.runner import balanced_labels, extract_features
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
        save_image_grid(to_uint8(samples), self.path.format(epoch=epoch + 1), rows=self.rows, value_range=(0, 255))


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
