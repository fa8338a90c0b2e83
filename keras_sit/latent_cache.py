"""Writing the latent cache: a data set encoded once, both flips, in atomic resumable shards.

Latent SiT trains on the latents of an autoencoder (Stable Diffusion's KL
autoencoder turns a 256x256x3 image into 32x32x4 latents). Encoding every
image at every step would cost more than the SiT itself, so
`write_latent_cache` encodes each image and its horizontal mirror once with
any `keras_sit.autoencoders.Autoencoder` and stores what its
`LatentDistribution.cache_arrays()` gives, in the SiT's scaled latent
space: a Gaussian posterior's mean and standard deviation (not one frozen
sample), or a deterministic encoder's latents, in shards with per-channel
statistics. With `teachers=` it also stores frozen vision models' patch
tokens of both flips (for REPA; `keras_sit.latent_features`). Each shard is
written to a temporary directory and renamed into place, so a half-written
shard is never read; after a crash the same call resumes and skips the
finished shards. In a job of several processes (`keras_sit.distribution`)
every process calls `write_latent_cache` and writes every N-th shard; the
chief writes `cache.json`, so the cache is the one a lone process writes.
On JAX, create the autoencoder and teachers under
`keras_sit.distribution.local()`, so that each process encodes on its own.
`keras_sit.latent_dataset.LatentDataset` reads the cache.

The cache's layout: `cache.json` (what was encoded, and the statistics once
complete) and `shard-00000/` ... each holding

- `mean.npy` and `std.npy`, `[n, 2, h, w, c]`, flip index 1 the mirrored
  image (no `std.npy` for a deterministic autoencoder);
- `labels.npy`, `[n]`, -1 when there are none;
- `sums.npy`, per-channel sums for the statistics;
- `NAME.npy` for each teacher, `[n, 2, N, C]` tokens, flip index 1 the
  mirrored image (`features.npy` for a single teacher);
- `skipped.json`, when images of the shard were skipped.

Shard `k` holds the readable examples among the source's `k * shard_size
... (k + 1) * shard_size - 1`, in order, so a shard with skipped images is
shorter.
"""

import itertools
import json
import os
import shutil

import keras
import numpy as np

from keras_sit.autoencoders.base import Autoencoder
from keras_sit.backend import processes
from keras_sit.files import PARTIAL_SUFFIX, write_atomically, write_synced
from keras_sit.images import UnreadableImageError
from keras_sit.latent_features import (
    resolve_teachers,
    save_batches,
    teacher_differences,
    teacher_features,
    teacher_identity,
)
from keras_sit.validation import check_choice, check_positive_int
from keras_sit.visualization import to_float

CACHE_FILE = "cache.json"
SKIPPED_FILE = "skipped.json"
FORMAT_VERSION = 1
ON_ERROR = ("raise", "skip")
FLOAT_DTYPES = ("float32", "float16")
# Plan entries present only in a cache with teacher features.
FEATURE_PLAN_KEYS = ("teachers", "feature_dtype")


def write_latent_cache(
    source,
    autoencoder,
    directory,
    shard_size=1024,
    batch_size=32,
    dtype="float32",
    verbose=1,
    on_error="raise",
    teachers=None,
    feature_dtype="float16",
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
            cache of the same source, autoencoder and teachers, only missing
            shards are written; a cache of something else raises.
        shard_size: examples per shard.
        batch_size: images per `encode_distribution` call (each is encoded
            with its mirror, so the autoencoder sees twice as many; the
            teachers see the same batches).
        dtype: `"float32"` or `"float16"` (half the disk) for the stored
            latents.
        verbose: 1 shows a progress bar over the shards; 1 and 2 print a
            line for each image skipped and their count.
        on_error: what an unreadable image (`UnreadableImageError`: a
            truncated or corrupt file) does: `"raise"` stops the cache with
            an error naming the file; `"skip"` leaves it out. Each shard
            records its skipped images as it is written, so a resumed cache
            keeps them; the description lists them all (`"skipped"`, their
            paths, and `"num_skipped"`), `"num_cached"` counts the examples
            stored, and `LatentDataset` streams those.
        teachers: None, a teacher, or a dict name -> teacher, whose tokens
            of each image and its mirror are stored as `NAME.npy` (a single
            teacher's as `features.npy`). A teacher is a Keras model, layer
            or callable mapping float32 images `[B, S, S, 3]` in 0..255 (not
            the autoencoder's [-1, 1]) to tokens `[B, N, C]`. Names are
            identifiers other than `x`, `labels`, `images`, `mean`, `std`
            and `sums`; `LatentDataset(..., features=...)` yields the tokens
            under them. The cache records each teacher's class,
            configuration and weights' SHA-256, and is only resumed with the
            same teachers.
        feature_dtype: `"float16"` (half the disk) or `"float32"` for the
            stored tokens.

    Returns:
        The cache's description (`cache.json`), statistics included:
        `num_examples` counts the source's images, `num_cached` the examples
        stored; with teachers, `features` gives each one's token shape
        `[N, C]` and dtype.
    """
    if not isinstance(autoencoder, Autoencoder):
        raise TypeError(
            "`autoencoder` must be a keras_sit.autoencoders.Autoencoder (such as keras_sit.AutoencoderKL); "
            f"got {type(autoencoder).__name__}."
        )
    check_positive_int("shard_size", shard_size)
    check_positive_int("batch_size", batch_size)
    check_choice("dtype", dtype, FLOAT_DTYPES)
    check_choice("verbose", verbose, (0, 1, 2))
    check_choice("on_error", on_error, ON_ERROR)
    teachers = resolve_teachers(teachers)
    check_choice("feature_dtype", feature_dtype, FLOAT_DTYPES)
    processes.check_process_local(autoencoder, "autoencoder")
    for name, teacher in teachers.items():
        if isinstance(teacher, keras.layers.Layer):
            processes.check_process_local(teacher, f"teachers[{name!r}]")
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
    if teachers:
        plan["teachers"] = {name: teacher_identity(teacher) for name, teacher in teachers.items()}
        plan["feature_dtype"] = feature_dtype
    plan = json.loads(json.dumps(plan))
    os.makedirs(directory, exist_ok=True)
    existing = _read_json(directory)
    if existing is not None:
        _check_resumable(directory, existing, plan)
    elif processes.process_index() == 0:
        _write_json(directory, plan)
    num_shards = -(-num_examples // shard_size)
    # In a job of several processes each writes every `count`-th shard; the chief shows the progress.
    index, count = processes.process_index(), processes.process_count()
    mine = [shard for shard in range(num_shards) if shard % count == index]
    progress = keras.utils.Progbar(len(mine), verbose=verbose if index == 0 else 0, unit_name="shard")
    for step, shard in enumerate(mine, 1):
        start, stop = shard * shard_size, min((shard + 1) * shard_size, num_examples)
        if not os.path.isdir(shard_path(directory, shard)):
            _write_shard(
                source,
                autoencoder,
                teachers,
                directory,
                shard,
                range(start, stop),
                batch_size,
                (dtype, feature_dtype),
                plan["image_size"],
                on_error,
                verbose,
            )
        progress.update(step)
    processes.barrier()  # every shard is written
    skipped = [record for shard in range(num_shards) for record in _read_skipped(directory, shard)]
    num_cached = sum(_shard_length(directory, shard) for shard in range(num_shards))
    if num_cached == 0:
        raise ValueError(f"No image of `source` could be read ({len(skipped)} skipped): the cache would be empty.")
    description = {**plan, "num_shards": num_shards, "statistics": _statistics(directory, num_shards)}
    description["latent_shape"] = _stored_shape(directory, "mean")
    if teachers:
        description["features"] = {
            name: {"shape": _stored_shape(directory, name), "dtype": feature_dtype} for name in teachers
        }
    description.update(num_cached=num_cached, num_skipped=len(skipped), skipped=[r["path"] for r in skipped])
    description["complete"] = True
    if index == 0:
        _write_json(directory, description)
    processes.barrier()  # no process returns before the description is there
    if skipped and verbose and index == 0:
        print(f'Skipped {len(skipped)} unreadable image(s) of {num_examples}; {CACHE_FILE} lists them under "skipped".')
    return description


def _check_resumable(directory, existing, plan):
    """Raise unless the cache in `directory` was written with this plan (the same source, models and settings)."""
    differences = teacher_differences(existing.get("teachers"), plan.get("teachers"))
    if differences:
        raise ValueError(
            f"`teachers` are not the ones the latent cache in {directory!r} was written with: "
            + ", ".join(differences)
            + ". Give the same teachers, or use a new directory."
        )
    keys = {*plan, *FEATURE_PLAN_KEYS}
    if {key: existing.get(key) for key in keys} != {key: plan.get(key) for key in keys}:
        raise ValueError(
            f"`directory` {directory!r} holds a latent cache of another source, autoencoder or setting; "
            "use a new directory (or delete it)."
        )


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


def _write_shard(
    source, autoencoder, teachers, directory, shard, indices, batch_size, dtypes, image_size, on_error, verbose
):
    dtype, feature_dtype = dtypes
    stored, labels, skipped = {}, [], []  # file name -> batches of `[n, 2, h, w, c]`
    features = {name: [] for name in teachers}  # teacher name -> batches of `[n, 2, N, C]`
    pairs = _readable(source, indices, on_error, skipped, verbose)
    while batch := list(itertools.islice(pairs, batch_size)):
        pixels = np.stack([image for image, _ in batch])
        images = to_float(pixels)
        both = np.concatenate([images, images[:, :, ::-1]], axis=0)  # the images, then their mirrors
        n = len(batch)
        for name, array in autoencoder.encode_distribution(both).cache_arrays().items():
            stored.setdefault(name, []).append(np.stack([array[:n], array[n:]], axis=1))
        for name, teacher in teachers.items():
            features[name].append(teacher_features(name, teacher, pixels, feature_dtype))
        labels.extend(label for _, label in batch)
    if not stored:  # every image of the shard skipped: empty arrays of what the autoencoder and teachers store
        blank = np.zeros((1, image_size, image_size, 3), "uint8")
        arrays = autoencoder.encode_distribution(to_float(blank)).cache_arrays()
        stored = {name: [np.zeros((0, 2, *array.shape[1:]), "float32")] for name, array in arrays.items()}
        features = {
            name: [teacher_features(name, teacher, blank, feature_dtype)[:0]] for name, teacher in teachers.items()
        }
    arrays = {name: np.concatenate(batches).astype(dtype) for name, batches in stored.items()}
    # Per channel: count, sum and sum of squares of the means, and the sum of the variances (0 without `std`).
    values = arrays["mean"].astype("float64").reshape(-1, arrays["mean"].shape[-1])
    variances = np.zeros_like(values)
    if "std" in arrays:
        variances = np.square(arrays["std"].astype("float64")).reshape(values.shape)
    sums = np.stack([np.full(values.shape[1], len(values)), values.sum(0), np.square(values).sum(0), variances.sum(0)])
    final = shard_path(directory, shard)
    partial = final + PARTIAL_SUFFIX
    shutil.rmtree(partial, ignore_errors=True)  # left by a crash
    os.makedirs(partial)
    for name, array in (*arrays.items(), ("labels", np.asarray(labels, "int32")), ("sums", sums)):
        write_synced(os.path.join(partial, f"{name}.npy"), lambda file, array=array: np.save(file, array))
    for name, batches in features.items():
        write_synced(os.path.join(partial, f"{name}.npy"), lambda file, batches=batches: save_batches(file, batches))
    if skipped:
        content = json.dumps(skipped, indent=1).encode()
        write_synced(os.path.join(partial, SKIPPED_FILE), lambda file: file.write(content))
    os.rename(partial, final)  # atomic: the shard appears whole or not at all


def _read_skipped(directory, shard):
    """The images skipped in a shard, `[{"index", "path", "reason"}]`."""
    path = os.path.join(shard_path(directory, shard), SKIPPED_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as file:
        return json.load(file)


def _shard_length(directory, shard):
    return len(np.load(os.path.join(shard_path(directory, shard), "labels.npy"), mmap_mode="r"))


def _stored_shape(directory, name):
    """The shape of one example's one flip of the array `name` (`[h, w, c]` latents, `[N, C]` tokens)."""
    return list(np.load(os.path.join(shard_path(directory, 0), f"{name}.npy"), mmap_mode="r").shape[2:])


def _statistics(directory, num_shards):
    """Per-channel mean and standard deviation of the cached latents (samples, both flips)."""
    sums = sum(np.load(os.path.join(shard_path(directory, s), "sums.npy")) for s in range(num_shards))
    count, total, squares, variances = sums
    mean = total / count
    # A sample's variance is the variance of the means plus the mean posterior variance.
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0) + variances / count)
    return {"channel_mean": mean.tolist(), "channel_std": std.tolist()}


def shard_path(directory, shard):
    """The folder of shard number `shard`."""
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
