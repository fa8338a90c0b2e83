"""A cache of autoencoder latents on disk, written once and streamed into `fit`.

Latent SiT trains on the latents of an autoencoder (Stable Diffusion's KL
autoencoder turns a 256x256x3 image into 32x32x4 latents). Encoding every
image at every step would cost more than the SiT itself, so the images are
encoded once:

- `ImageFolder` reads a folder of class sub-folders and prepares each image
  as ADM, DiT and the official SiT prepare ImageNet: a center crop to the
  target size, downsampled with a box filter while the image is at least
  twice the target, then resized bicubically (`center_crop`). A file that
  does not decode raises an `UnreadableImageError` (a `ValueError`) naming
  it; `write_latent_cache(..., on_error="skip")` skips such files and lists
  them in the cache's description.
- `write_latent_cache` encodes each image and its horizontal mirror with
  any `keras_sit.autoencoders.Autoencoder` and stores what its
  `LatentDistribution.cache_arrays()` gives, in the SiT's scaled latent
  space: a Gaussian posterior's mean and standard deviation (not one frozen
  sample), or a deterministic encoder's latents, in shards with per-channel
  statistics. Each shard is written to a temporary directory and renamed
  into place, so a half-written shard is never read; after a crash the same
  call resumes and skips the finished shards.
- `LatentDataset` streams the shards (memory-mapped, never all in memory)
  as a `keras.utils.PyDataset` for `fit`: each time an example is used it
  draws a fresh latent from the stored posterior (where there is one) and
  one of the two flips.

The cache's layout: `cache.json` (what was encoded, and the statistics once
complete) and `shard-00000/` ... each holding `mean.npy` and `std.npy`
(`[n, 2, h, w, c]`, flip index 1 the mirrored image; no `std.npy` for a
deterministic autoencoder), `labels.npy` (`[n]`,
-1 when there are none), `sums.npy` (per-channel sums for the statistics)
and, when images of the shard were skipped, `skipped.json`. Shard `k` holds
the readable examples among the source's `k * shard_size ... (k + 1) *
shard_size - 1`, in order, so a shard with skipped images is shorter.
"""

import itertools
import json
import os
import shutil

import keras
import numpy as np

from keras_sit.autoencoders.base import Autoencoder
from keras_sit.files import PARTIAL_SUFFIX, write_atomically, write_synced
from keras_sit.images import (  # noqa: F401  (the image sources are part of this module's API too)
    ArrayImages,
    ImageFolder,
    UnreadableImageError,
    center_crop,
    read_image,
    to_rgb,
)
from keras_sit.validation import check_bool, check_choice, check_positive_int, check_seed
from keras_sit.visualization import to_float

CACHE_FILE = "cache.json"
SKIPPED_FILE = "skipped.json"
FORMAT_VERSION = 1
ON_ERROR = ("raise", "skip")


def write_latent_cache(
    source, autoencoder, directory, shard_size=1024, batch_size=32, dtype="float32", verbose=1, on_error="raise"
):
    """Encode `source` with `autoencoder` into a latent cache in `directory`; resumable.

    Args:
        source: an `ImageFolder`, an `ArrayImages`, or anything with `len`,
            indexing that gives `(uint8 [S, S, 3] image, label)` (label -1
            for none) and an `image_size`. Indexing may raise an
            `UnreadableImageError` for an item that cannot be read.
        autoencoder: a `keras_sit.autoencoders.Autoencoder`, e.g. a
            `keras_sit.AutoencoderKL`.
        directory: where the cache goes. If it holds a finished or partial
            cache of the same source and autoencoder, only missing shards
            are written; a cache of something else raises.
        shard_size: examples per shard.
        batch_size: images per `encode_distribution` call (each is encoded
            with its mirror, so the autoencoder sees twice as many).
        dtype: `"float32"` or `"float16"` (half the disk) for the stored
            arrays.
        verbose: 1 shows a progress bar over the examples; 1 and 2 print a
            line for each image skipped and their count.
        on_error: what an unreadable image (`UnreadableImageError`: a
            truncated or corrupt file) does: `"raise"` stops the cache with
            an error naming the file; `"skip"` leaves it out. Each shard
            records its skipped images as it is written, so a resumed cache
            keeps them; the description lists them all (`"skipped"`, their
            paths, and `"num_skipped"`), `"num_cached"` counts the examples
            stored, and `LatentDataset` streams those.

    Returns:
        The cache's description (`cache.json`), statistics included:
        `num_examples` counts the source's images, `num_cached` the examples
        stored.
    """
    if not isinstance(autoencoder, Autoencoder):
        raise TypeError(
            "`autoencoder` must be a keras_sit.autoencoders.Autoencoder (such as keras_sit.AutoencoderKL); "
            f"got {type(autoencoder).__name__}."
        )
    check_positive_int("shard_size", shard_size)
    check_positive_int("batch_size", batch_size)
    check_choice("dtype", dtype, ("float32", "float16"))
    check_choice("verbose", verbose, (0, 1, 2))
    check_choice("on_error", on_error, ON_ERROR)
    num_examples = len(source)
    if num_examples == 0:
        raise ValueError("`source` holds no images.")
    plan = {
        "format": FORMAT_VERSION,
        "num_examples": num_examples,
        "shard_size": int(shard_size),
        "image_size": _image_size(source, on_error),
        "dtype": dtype,
        "class_names": list(getattr(source, "class_names", None) or []),
        "autoencoder": autoencoder.identity_config(),
        "autoencoder_weights_sha256": autoencoder.weights_fingerprint(),
    }
    os.makedirs(directory, exist_ok=True)
    existing = _read_json(directory)
    if existing is not None:
        if {key: existing.get(key) for key in plan} != json.loads(json.dumps(plan)):
            raise ValueError(
                f"`directory` {directory!r} holds a latent cache of another source, autoencoder or setting; "
                "use a new directory (or delete it)."
            )
    else:
        _write_json(directory, plan)
    num_shards = -(-num_examples // shard_size)
    progress = keras.utils.Progbar(num_examples, verbose=verbose, unit_name="image")
    for shard in range(num_shards):
        start, stop = shard * shard_size, min((shard + 1) * shard_size, num_examples)
        if not os.path.isdir(_shard_path(directory, shard)):
            _write_shard(
                source,
                autoencoder,
                directory,
                shard,
                start,
                stop,
                batch_size,
                dtype,
                plan["image_size"],
                on_error,
                verbose,
            )
        progress.update(stop)
    skipped = [record for shard in range(num_shards) for record in _read_skipped(directory, shard)]
    num_cached = sum(_shard_length(directory, shard) for shard in range(num_shards))
    if num_cached == 0:
        raise ValueError(f"No image of `source` could be read ({len(skipped)} skipped): the cache would be empty.")
    description = {**plan, "num_shards": num_shards, "statistics": _statistics(directory, num_shards)}
    description["latent_shape"] = list(
        np.load(os.path.join(_shard_path(directory, 0), "mean.npy"), mmap_mode="r").shape[2:]
    )
    description.update(num_cached=num_cached, num_skipped=len(skipped), skipped=[r["path"] for r in skipped])
    description["complete"] = True
    _write_json(directory, description)
    if skipped and verbose:
        print(f'Skipped {len(skipped)} unreadable image(s) of {num_examples}; {CACHE_FILE} lists them under "skipped".')
    return description


def _image_size(source, on_error):
    """The side of the source's images: its `image_size`, else that of its first readable image."""
    size = getattr(source, "image_size", None)
    if size is not None:
        return int(size)
    for index in range(len(source)):
        try:
            return int(source[index][0].shape[0])
        except UnreadableImageError:
            if on_error == "raise":
                raise
    raise ValueError(f"No image of `source` could be read ({len(source)} tried).")


def _readable(source, indices, on_error, skipped, verbose):
    """The `(image, label)` pairs of `indices`; unreadable ones raise, or are appended to `skipped`."""
    for index in indices:
        try:
            yield source[index]
        except UnreadableImageError as error:
            if on_error == "raise":
                raise
            skipped.append({"index": index, "path": error.path, "reason": error.reason})
            if verbose:
                below_progress_bar = "\n" if verbose == 1 else ""
                print(f"{below_progress_bar}Skipped the unreadable image {error.path!r}: {error.reason}")


def _write_shard(source, autoencoder, directory, shard, start, stop, batch_size, dtype, image_size, on_error, verbose):
    stored, labels, skipped = {}, [], []  # file name -> batches of `[n, 2, h, w, c]`
    pairs = _readable(source, range(start, stop), on_error, skipped, verbose)
    while batch := list(itertools.islice(pairs, batch_size)):
        images = to_float(np.stack([image for image, _ in batch]))
        both = np.concatenate([images, images[:, :, ::-1]], axis=0)  # the images, then their mirrors
        n = len(batch)
        for name, array in autoencoder.encode_distribution(both).cache_arrays().items():
            stored.setdefault(name, []).append(np.stack([array[:n], array[n:]], axis=1))
        labels.extend(label for _, label in batch)
    if not stored:  # every image of the shard skipped: empty arrays of what the autoencoder stores
        arrays = autoencoder.encode_distribution(np.zeros((1, image_size, image_size, 3), "float32")).cache_arrays()
        stored = {name: [np.zeros((0, 2, *array.shape[1:]), "float32")] for name, array in arrays.items()}
    arrays = {name: np.concatenate(batches).astype(dtype) for name, batches in stored.items()}
    # Per channel: count, sum and sum of squares of the means, and the sum of the variances (0 without `std`).
    values = arrays["mean"].astype("float64").reshape(-1, arrays["mean"].shape[-1])
    variances = np.zeros_like(values)
    if "std" in arrays:
        variances = np.square(arrays["std"].astype("float64")).reshape(values.shape)
    sums = np.stack([np.full(values.shape[1], len(values)), values.sum(0), np.square(values).sum(0), variances.sum(0)])
    final = _shard_path(directory, shard)
    partial = final + PARTIAL_SUFFIX
    shutil.rmtree(partial, ignore_errors=True)  # left by a crash
    os.makedirs(partial)
    for name, array in (*arrays.items(), ("labels", np.asarray(labels, "int32")), ("sums", sums)):
        write_synced(os.path.join(partial, f"{name}.npy"), lambda file, array=array: np.save(file, array))
    if skipped:
        content = json.dumps(skipped, indent=1).encode()
        write_synced(os.path.join(partial, SKIPPED_FILE), lambda file: file.write(content))
    os.rename(partial, final)  # atomic: the shard appears whole or not at all


def _read_skipped(directory, shard):
    """The images skipped in a shard, `[{"index", "path", "reason"}]`."""
    path = os.path.join(_shard_path(directory, shard), SKIPPED_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as file:
        return json.load(file)


def _shard_length(directory, shard):
    return len(np.load(os.path.join(_shard_path(directory, shard), "labels.npy"), mmap_mode="r"))


def _statistics(directory, num_shards):
    """Per-channel mean and standard deviation of the cached latents (samples, both flips)."""
    sums = sum(np.load(os.path.join(_shard_path(directory, s), "sums.npy")) for s in range(num_shards))
    count, total, squares, variances = sums
    mean = total / count
    # A sample's variance is the variance of the means plus the mean posterior variance.
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0) + variances / count)
    return {"channel_mean": mean.tolist(), "channel_std": std.tolist()}


def _shard_path(directory, shard):
    return os.path.join(directory, f"shard-{shard:05d}")


def _read_json(directory):
    path = os.path.join(directory, CACHE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as file:
        return json.load(file)


def _write_json(directory, content):
    write_atomically(
        os.path.join(directory, CACHE_FILE), lambda file: file.write(json.dumps(content, indent=1).encode())
    )


def read_cache_description(directory):
    """The `cache.json` of a finished cache; raises if the cache is missing or unfinished."""
    description = _read_json(directory)
    if description is None:
        raise ValueError(f"`directory` {directory!r} holds no latent cache ({CACHE_FILE} is missing).")
    if not description.get("complete"):
        raise ValueError(
            f"The latent cache in {directory!r} is unfinished: run `write_latent_cache` again to complete it."
        )
    return description


class LatentDataset(keras.utils.PyDataset):
    """Batches of latents (and labels) from a cache written by `write_latent_cache`, for `fit`.

    Every time an example is used, one of its two flips is chosen and a
    latent is drawn from the stored posterior, `mean + std * N(0, I)`
    (`sample=False` takes the mean; a cache of a deterministic autoencoder
    stores no `std` and always gives its latents). The order is a fresh permutation every
    epoch. Draws come from a NumPy generator keyed by `(seed, epoch, batch)`,
    so a seed gives the same batches on every backend and every run. The
    shards are memory-mapped: only the examples of a batch are read. Images
    skipped while the cache was written are not there: `num_examples` counts
    the examples stored (the description's `num_cached`).

    Args:
        directory: the cache.
        batch_size: examples per batch.
        shuffle: a fresh order every epoch (else the cache's order).
        flip: pick one of the two flips at random (else always the
            original image).
        sample: draw from the posterior (else its mean).
        seed: int, or None for a random one.
        drop_remainder: drop the last, smaller batch (needed by a
            multi-device `keras.distribution`, which splits batches evenly).
        **kwargs: `keras.utils.PyDataset`'s (`workers`, ...).

    Yields `(latents, labels)` for a cache with labels, else `latents`.
    """

    def __init__(
        self, directory, batch_size=64, shuffle=True, flip=True, sample=True, seed=None, drop_remainder=False, **kwargs
    ):
        super().__init__(**kwargs)
        check_positive_int("batch_size", batch_size)
        for name, value in (
            ("shuffle", shuffle),
            ("flip", flip),
            ("sample", sample),
            ("drop_remainder", drop_remainder),
        ):
            check_bool(name, value)
        check_seed(seed)
        self.description = read_cache_description(directory)
        self.directory = directory
        self.batch_size, self.shuffle, self.flip, self.sample = int(batch_size), shuffle, flip, sample
        self.drop_remainder = drop_remainder
        self.seed = int(np.random.default_rng().integers(2**31 - 1)) if seed is None else int(seed)
        shards = [_shard_path(directory, s) for s in range(self.description["num_shards"])]
        means = [np.load(os.path.join(s, "mean.npy"), mmap_mode="r") for s in shards]
        # A deterministic autoencoder's cache has no `std`: its latents are the means.
        self.stochastic = os.path.exists(os.path.join(shards[0], "std.npy"))
        stds = [np.load(os.path.join(s, "std.npy"), mmap_mode="r") if self.stochastic else None for s in shards]
        labels = np.concatenate([np.load(os.path.join(s, "labels.npy")) for s in shards])
        self.labels = None if np.all(labels < 0) else labels
        self.shard_size = self.description["shard_size"]
        # Shards are shorter than `shard_size` where images were skipped: index them by their starts.
        kept = [i for i, mean in enumerate(means) if len(mean)]
        self._means, self._stds = [means[i] for i in kept], [stds[i] for i in kept]
        lengths = [len(mean) for mean in self._means]
        self._starts = np.cumsum([0, *lengths[:-1]])
        self._num_examples = int(sum(lengths))
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
    def num_classes(self):
        names = self.description.get("class_names")
        if names:
            return len(names)
        return None if self.labels is None else int(self.labels.max()) + 1

    def __len__(self):
        full, rest = divmod(self.num_examples, self.batch_size)
        return full if self.drop_remainder or rest == 0 else full + 1

    def _permutation(self):
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.num_examples)

    def on_epoch_end(self):
        self.epoch += 1
        self._order = self._permutation()

    def __getitem__(self, index):
        indices = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        flips = rng.integers(0, 2, len(indices)) if self.flip else np.zeros(len(indices), "int64")
        sample = self.sample and self.stochastic
        means = np.empty((len(indices), *self.latent_shape), "float32")
        stds = np.empty_like(means) if sample else None
        for row, (example, flip) in enumerate(zip(indices, flips)):
            shard = int(np.searchsorted(self._starts, example, side="right")) - 1
            offset = int(example) - int(self._starts[shard])
            means[row] = self._means[shard][offset, flip]
            if sample:
                stds[row] = self._stds[shard][offset, flip]
        latents = means + stds * rng.standard_normal(means.shape, dtype="float32") if sample else means
        if self.labels is None:
            return latents
        return latents, self.labels[indices].astype("int32")
