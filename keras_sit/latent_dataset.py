"""`LatentDataset`: a latent cache streamed into `fit`, memory-mapped, a fresh draw and flip each time.

It reads a cache written by `keras_sit.latent_cache.write_latent_cache`
(the layout is described there): each time an example is used it takes one
of the two flips at random and draws a latent from the stored posterior
(where there is one). It can also yield the stored teacher features of the
same flip, for an objective that reads them (REPA), and normalise the
latents per channel with the cache's statistics. The cache is checked as it
is opened: a missing, damaged or unfinished `cache.json`, and shard files
that are missing, damaged or of other shapes than `cache.json` records,
raise an error naming the file. It also exposes what the cache was written
from (`autoencoder_fingerprint`, `autoencoder_config`,
`source_fingerprint`), for a model to check its autoencoder against.
"""

import os

import keras
import numpy as np

from keras_sit.backend import processes
from keras_sit.distribution import feeds
from keras_sit.distribution.feeds import EpochOrder, process_rows
from keras_sit.latent_cache_files import CACHE_FILE, load_shard_array, read_cache_description, shard_path
from keras_sit.validation import check_bool, check_positive_int, check_seed


class LatentDataset(EpochOrder, keras.utils.PyDataset):
    """Batches of latents (and labels, and teacher features) from a cache written by `write_latent_cache`.

    Every time an example is used, one of its two flips is chosen and a
    latent is drawn from the stored posterior, `mean + std * N(0, I)`
    (`sample=False` takes the mean; a cache of a deterministic autoencoder
    stores no `std` and always gives its latents). The order is a fresh permutation every
    epoch. Draws come from a NumPy generator keyed by `(seed, epoch, batch)`,
    so a seed gives the same batches on every backend and every run. The
    shards are memory-mapped: only the examples of a batch are read. Images
    skipped while the cache was written are not there: `num_examples` counts
    the examples stored (the description's `num_cached`).

    In a job of several processes (`keras_sit.distribution`) on JAX or
    PyTorch, `batch_size` is the global batch and each process yields its
    slice of it, reading only those examples, with the flips and draws one
    process would give them; under TensorFlow's multi-worker strategy every
    worker yields the global batch and the strategy slices it. Give every
    process the same `seed` (with None the chief's random one is shared).

    Args:
        directory: the cache, a folder written by `write_latent_cache`
            (complete; a cache written before sources were fingerprinted is
            read too).
        batch_size: examples per batch (the global batch in a job).
        shuffle: a fresh order every epoch (else the cache's order).
        flip: pick one of the two flips at random (else always the
            original image).
        sample: draw from the posterior (else its mean).
        seed: int, or None for a random one.
        drop_remainder: drop the last, smaller batch (needed by a
            multi-device `keras.distribution`, which splits batches evenly).
        features: the teacher features to yield beside the latents: False
            (none), True (every one the cache stores), a name or a tuple of
            names (`write_latent_cache(..., teachers=...)`'s). Each example's
            tokens are those of the flip its latent comes from, as float32.
        normalize: yield `(latent - channel_mean) / channel_std` with the
            cache's per-channel statistics (`statistics`), for a SiT trained
            on normalised latents; give it the same statistics
            (`LatentSiT(..., latent_statistics=dataset.statistics)`) so that
            it decodes them.
        **kwargs: `keras.utils.PyDataset`'s (`workers`, ...).

    Yields `(latents, labels)` for a cache with labels, else `latents`; with
    features, `latents` is the dict `{"x": latents, NAME: tokens, ...}`
    that `SiT.fit` hands to objectives reading `extra_inputs`.
    """

    def __init__(
        self,
        directory,
        batch_size=64,
        shuffle=True,
        flip=True,
        sample=True,
        seed=None,
        drop_remainder=False,
        features=False,
        normalize=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("batch_size", batch_size)
        for name, value in (
            ("shuffle", shuffle),
            ("flip", flip),
            ("sample", sample),
            ("drop_remainder", drop_remainder),
            ("normalize", normalize),
        ):
            check_bool(name, value)
        check_seed(seed)
        self.description = read_cache_description(directory)
        self.directory = directory
        directory = os.fspath(directory)  # checked: a folder path
        self.batch_size, self.shuffle, self.flip, self.sample = int(batch_size), shuffle, flip, sample
        self.drop_remainder, self.normalize = drop_remainder, normalize
        self.features = _feature_names(features, self.description, directory)
        # One seed for every process of a job: the chief's draw.
        self.seed = processes.broadcast(np.random.default_rng().integers(2**31 - 1)) if seed is None else int(seed)
        # A process of a JAX or PyTorch job yields its slice of each global batch; TensorFlow's strategy slices.
        slices = feeds.slices_by_process()
        self._index, self._count = (processes.process_index(), processes.process_count()) if slices else (0, 1)
        if slices:
            feeds.process_batch_size(batch_size)
        num_shards = self.description["num_shards"]
        means = [load_shard_array(directory, s, "mean", "r") for s in range(num_shards)]
        # A deterministic autoencoder's cache has no `std`: its latents are the means.
        self.stochastic = os.path.exists(os.path.join(shard_path(directory, 0), "std.npy"))
        stds = [load_shard_array(directory, s, "std", "r") if self.stochastic else None for s in range(num_shards)]
        labels = [load_shard_array(directory, s, "labels") for s in range(num_shards)]
        features = {
            name: [load_shard_array(directory, s, name, "r") for s in range(num_shards)] for name in self.features
        }
        _check_shards(directory, self.description, means, stds, labels, features)
        labels = np.concatenate(labels)
        self.labels = None if np.all(labels < 0) else labels
        self.shard_size = self.description["shard_size"]
        # Shards are shorter than `shard_size` where images were skipped: index them by their starts.
        kept = [i for i, mean in enumerate(means) if len(mean)]
        self._means, self._stds = [means[i] for i in kept], [stds[i] for i in kept]
        self._features = {name: [arrays[i] for i in kept] for name, arrays in features.items()}
        lengths = [len(mean) for mean in self._means]
        self._starts = np.cumsum([0, *lengths[:-1]])
        self._num_examples = int(sum(lengths))
        if normalize:
            self._channel_mean, self._channel_std = _normalization(self.statistics, directory)
        self.epoch = 0
        self._order = self._permutation()

    @property
    def num_examples(self):
        """The examples in the cache (the source's images less those skipped)."""
        return self._num_examples

    @property
    def latent_shape(self):
        return tuple(self.description["latent_shape"])

    @property
    def autoencoder_fingerprint(self):
        """The SHA-256 of the weights of the autoencoder the cache was encoded with (`cache.json`'s
        `"autoencoder_weights_sha256"`), as `Autoencoder.weights_fingerprint()` gives it; None if not recorded.

        A model trained on the cache decodes with an autoencoder: the same
        fingerprint (and `autoencoder_config`) tells that it is the one.
        """
        return self.description.get("autoencoder_weights_sha256")

    @property
    def autoencoder_config(self):
        """The configuration of the cache's autoencoder (`Autoencoder.identity_config()`); None if not recorded."""
        return self.description.get("autoencoder")

    @property
    def source_fingerprint(self):
        """The fingerprint of the images the cache was written from (`cache.json`'s `"source_sha256"`).

        None for a cache written before sources were fingerprinted.
        """
        return self.description.get("source_sha256")

    @property
    def statistics(self):
        """The cache's per-channel statistics of the latents, `{"channel_mean": [...], "channel_std": [...]}`."""
        return dict(self.description["statistics"])

    @property
    def feature_shapes(self):
        """The token shape `(N, C)` of each feature this dataset yields, by name."""
        return {name: tuple(self.description["features"][name]["shape"]) for name in self.features}

    @property
    def num_classes(self):
        names = self.description.get("class_names")
        if names:
            return len(names)
        return None if self.labels is None else int(self.labels.max()) + 1

    def __len__(self):
        full, rest = divmod(self.num_examples, self.batch_size)
        # In a job of several processes a batch needs a row for each.
        return full if self.drop_remainder or rest < max(1, self._count) else full + 1

    def __getitem__(self, index):
        indices = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        sample = self.sample and self.stochastic
        # The draws of the whole global batch, of which a process of a job keeps its rows (a last, short
        # batch cut to a multiple of the process count), as it reads only them.
        flips = rng.integers(0, 2, len(indices)) if self.flip else np.zeros(len(indices), "int64")
        noise = rng.standard_normal((len(indices), *self.latent_shape), dtype="float32") if sample else None
        rows = process_rows(np.arange(len(indices)), self._index, self._count)
        indices, flips = indices[rows], flips[rows]
        means = np.empty((len(indices), *self.latent_shape), "float32")
        stds = np.empty_like(means) if sample else None
        features = {name: np.empty((len(indices), *shape), "float32") for name, shape in self.feature_shapes.items()}
        for row, (example, flip) in enumerate(zip(indices, flips)):
            shard = int(np.searchsorted(self._starts, example, side="right")) - 1
            offset = int(example) - int(self._starts[shard])
            means[row] = self._means[shard][offset, flip]
            if sample:
                stds[row] = self._stds[shard][offset, flip]
            for name, tokens in features.items():
                tokens[row] = self._features[name][shard][offset, flip]
        latents = means + stds * noise[rows] if sample else means
        if self.normalize:
            latents = (latents - self._channel_mean) / self._channel_std
        inputs = {"x": latents, **features} if features else latents
        if self.labels is None:
            return inputs
        return inputs, self.labels[indices].astype("int32")


def _feature_names(features, description, directory):
    """`LatentDataset`'s `features` argument as a tuple of names the cache stores."""
    stored = sorted(description.get("features") or {})
    if features is False or features is None:
        return ()
    if features is True:
        names = tuple(stored)
    elif isinstance(features, str):
        names = (features,)
    elif isinstance(features, (tuple, list)) and all(isinstance(name, str) for name in features):
        names = tuple(features)
    else:
        raise TypeError(f"`features` must be a bool, a feature name or a tuple of names; got {features!r}.")
    if not names:
        raise ValueError(
            f"`features` asks for teacher features, but the latent cache in {directory!r} stores none "
            "(write it with `write_latent_cache(..., teachers=...)`)."
        )
    unknown = [name for name in names if name not in stored]
    if unknown or len(set(names)) != len(names):
        raise ValueError(
            f"`features` must name distinct features of the latent cache in {directory!r}, which stores "
            f"{stored or 'none'}; got {list(names)}."
        )
    return names


def _check_shards(directory, description, means, stds, labels, features):
    """The shards' arrays have the shapes and dtypes `cache.json` records, or a `ValueError` names the file.

    Each shard's `mean` (and `std`) is `[n, 2, *latent_shape]` floats,
    `labels` `[n]` integers (-1 in every example, or in none), each feature
    `[n, 2, N, C]` floats, and the shards hold `num_cached` examples in all.
    Of the memory-mapped latents and features only the headers are read.
    """
    latent_shape = tuple(description["latent_shape"])
    shapes = {name: tuple(entry["shape"]) for name, entry in (description.get("features") or {}).items()}

    def fail(shard, name, expected, array):
        path = os.path.join(shard_path(directory, shard), f"{name}.npy")
        raise ValueError(
            f"{path!r} holds {array.dtype} {tuple(array.shape)}, where {expected} was expected ({CACHE_FILE} records "
            f"latents {list(latent_shape)}): the shard is damaged or from another cache; delete it and run "
            "`write_latent_cache` again to rewrite it."
        )

    for shard, (mean, std, label) in enumerate(zip(means, stds, labels)):
        n = len(label) if label.ndim == 1 else -1
        if label.ndim != 1 or label.dtype.kind not in "iu":
            fail(shard, "labels", "integer labels [n]", label)
        for name, array in (("mean", mean), ("std", std)):
            if array is not None and (array.shape != (n, 2, *latent_shape) or array.dtype.kind != "f"):
                fail(shard, name, f"floats [{n}, 2, {', '.join(map(str, latent_shape))}]", array)
        for name, arrays in features.items():
            array = arrays[shard]
            if array.shape != (n, 2, *shapes[name]) or array.dtype.kind != "f":
                fail(shard, name, f"float tokens [{n}, 2, {', '.join(map(str, shapes[name]))}]", array)
    total = sum(len(label) for label in labels)
    recorded = description.get("num_cached", total)
    if total != recorded:
        raise ValueError(
            f"The latent cache in {directory!r} holds {total} examples in its shards, but {CACHE_FILE} records "
            f"{recorded}: shards are damaged or from another cache. Write the cache again in a new directory."
        )
    labelled = [bool(np.all(label >= 0)) for label in labels if len(label)]
    unlabelled = [bool(np.all(label == -1)) for label in labels if len(label)]
    if not (all(labelled) or all(unlabelled)):
        raise ValueError(
            f"The latent cache in {directory!r} mixes labelled examples with unlabelled ones (label -1) or holds "
            "labels below -1: its `source` gave both. Write it again from a source that labels every image or none."
        )
    num_classes = len(description.get("class_names") or [])
    if num_classes and all(labelled) and any(len(label) and label.max() >= num_classes for label in labels):
        raise ValueError(
            f"The latent cache in {directory!r} holds labels beyond its {num_classes} class names "
            f"({CACHE_FILE}'s 'class_names')."
        )


def _normalization(statistics, directory):
    """The cache's per-channel mean and standard deviation as float32 arrays, checked for use as divisors."""
    mean = np.asarray(statistics["channel_mean"], "float32")
    std = np.asarray(statistics["channel_std"], "float32")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise ValueError(
            f"`normalize=True` needs finite statistics with a positive std in every channel; the latent cache in "
            f"{directory!r} has channel_std {std.tolist()}."
        )
    return mean, std
