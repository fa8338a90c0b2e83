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

What the cache was written from is recorded in `cache.json`, so that it is
never resumed, or returned as complete, from anything else: the
autoencoder's configuration and weights' SHA-256, each teacher's, the
settings, and a fingerprint of the source (`source_fingerprint`,
`"source_sha256"`). A cache written before sources were fingerprinted has no
`"source_sha256"`: `LatentDataset` reads it, but `write_latent_cache`
refuses to resume or rewrite it, as it cannot tell whether the source is
the same. Every image is checked as it is read (uint8 `[S, S, 3]`, an
integer label) and every shard's latents and features are checked to be
finite before the shard is written, so a bad image or a NaN-producing model
stops the cache with an error naming the images, before that shard, and
`cache.json` is not marked complete.
"""

import itertools
import json
import os
import shutil

import keras
import numpy as np

from keras_sit.autoencoders.base import Autoencoder
from keras_sit.backend import processes
from keras_sit.files import PARTIAL_SUFFIX, REMOTE_PATH, write_synced
from keras_sit.latent_cache_files import (
    CACHE_FILE,
    SKIPPED_FILE,
    read_cache_json,
    read_skipped,
    shard_folders,
    shard_length,
    shard_path,
    shard_statistics,
    stored_shape,
    write_cache_json,
)
from keras_sit.latent_features import (
    resolve_teachers,
    save_batches,
    teacher_differences,
    teacher_features,
    teacher_identity,
)
from keras_sit.latent_source import (
    check_source_item,
    first_readable,
    readable_items,
    source_class_names,
    source_fingerprint,
    source_image_size,
    source_length,
)
from keras_sit.validation import check_choice, check_positive_int
from keras_sit.visualization import to_float

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
            for none, else a class index below `len(class_names)` where the
            source has `class_names`) and an `image_size`. Indexing may
            raise an `UnreadableImageError` for an item that cannot be read.
            Every item is checked as it is read. Its fingerprint
            (`source_fingerprint`) is recorded.
        autoencoder: a `keras_sit.autoencoders.Autoencoder`, e.g. a
            `keras_sit.AutoencoderKL`.
        directory: a local folder, where the cache goes. If it holds a
            finished or partial cache of the same source (by fingerprint),
            autoencoder (configuration and weights) and teachers, with the
            same settings, only missing shards are written; a cache of
            anything else, one written without a source fingerprint, and
            shard folders without a `cache.json` raise a `ValueError` that
            says what differs, and nothing is written.
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
        stored, `source_sha256` is the source's fingerprint and
        `autoencoder_weights_sha256` the autoencoder's; with teachers,
        `features` gives each one's token shape `[N, C]` and dtype.

    Raises:
        TypeError, ValueError: a bad argument, or a source item that is no
            `(uint8 [S, S, 3] image, int label)` pair, each named; a
            `directory` that is a file, or holds a cache of something else;
            latents or tokens that are not finite (NaN or infinity, or
            beyond float16), naming the images, before their shard is
            written.
    """
    if not isinstance(autoencoder, Autoencoder):
        raise TypeError(
            "`autoencoder` must be a keras_sit.autoencoders.Autoencoder (such as keras_sit.AutoencoderKL); "
            f"got {type(autoencoder).__name__}."
        )
    directory = _check_directory(directory)
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
    num_examples = source_length(source)
    if num_examples == 0:
        raise ValueError("`source` holds no images.")
    class_names = source_class_names(source)
    # The first readable item, checked before anything is written; it gives the image size where the source has none.
    first = first_readable(source)
    image_size = source_image_size(source, first)
    check_source_item(first[1], first[0], image_size, len(class_names))
    plan = {
        "format": FORMAT_VERSION,
        "num_examples": num_examples,
        "shard_size": int(shard_size),
        "image_size": image_size,
        "dtype": dtype,
        "class_names": class_names,
        "source_sha256": source_fingerprint(source, first),
        "autoencoder": autoencoder.identity_config(),
        "autoencoder_weights_sha256": autoencoder.weights_fingerprint(),
    }
    if teachers:
        plan["teachers"] = {name: teacher_identity(teacher) for name, teacher in teachers.items()}
        plan["feature_dtype"] = feature_dtype
    plan = json.loads(json.dumps(plan))
    existing = read_cache_json(directory) if os.path.isdir(directory) else None
    if existing is not None:
        _check_resumable(directory, existing, plan)
    elif shard_folders(directory):
        raise ValueError(
            f"`directory` {directory!r} holds latent cache shards ({', '.join(shard_folders(directory)[:3])}, ...) "
            f"but no {CACHE_FILE}, so what they were written from is unknown: delete them, or use a new directory."
        )
    # In a job of several processes, every one looks at the folder before any writes to it, and the plan is
    # there before any shard: otherwise a process could find another's first shard and no plan, and refuse.
    processes.barrier()
    created = not os.path.exists(directory)
    os.makedirs(directory, exist_ok=True)
    if existing is None and processes.process_index() == 0:
        write_cache_json(directory, plan)
    processes.barrier()
    num_shards = -(-num_examples // shard_size)
    # In a job of several processes each writes every `count`-th shard; the chief shows the progress.
    index, count = processes.process_index(), processes.process_count()
    mine = [shard for shard in range(num_shards) if shard % count == index]
    progress = keras.utils.Progbar(len(mine), verbose=verbose if index == 0 else 0, unit_name="shard")
    try:
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
                    (image_size, len(class_names)),
                    on_error,
                    verbose,
                )
            progress.update(step)
    except Exception:
        # A lone writer that made the folder and refused (or failed) before its first shard leaves no trace.
        if created and count == 1 and not shard_folders(directory):
            shutil.rmtree(directory, ignore_errors=True)
        raise
    processes.barrier()  # every shard is written
    skipped = [record for shard in range(num_shards) for record in read_skipped(directory, shard)]
    num_cached = sum(shard_length(directory, shard) for shard in range(num_shards))
    if num_cached == 0:
        raise ValueError(f"No image of `source` could be read ({len(skipped)} skipped): the cache would be empty.")
    description = {**plan, "num_shards": num_shards, "statistics": shard_statistics(directory, num_shards)}
    description["latent_shape"] = stored_shape(directory, "mean")
    if teachers:
        description["features"] = {
            name: {"shape": stored_shape(directory, name), "dtype": feature_dtype} for name in teachers
        }
    description.update(num_cached=num_cached, num_skipped=len(skipped), skipped=[r["path"] for r in skipped])
    description["complete"] = True
    if index == 0:
        write_cache_json(directory, description)
    processes.barrier()  # no process returns before the description is there
    if skipped and verbose and index == 0:
        print(f'Skipped {len(skipped)} unreadable image(s) of {num_examples}; {CACHE_FILE} lists them under "skipped".')
    return description


# What each plan entry records, for the refusal of a cache of something else: the argument, and what differs.
_PLAN_WORDS = {
    "source_sha256": ("source", "other images, labels or files (its fingerprint differs)"),
    "num_examples": ("source", "another number of images"),
    "image_size": ("source", "another image size"),
    "class_names": ("source", "other class names"),
    "autoencoder": ("autoencoder", "another configuration"),
    "autoencoder_weights_sha256": ("autoencoder", "other weights (their SHA-256 differs)"),
    "shard_size": ("shard_size", None),
    "dtype": ("dtype", None),
    "feature_dtype": ("feature_dtype", None),
    "format": (None, None),
}


def _check_resumable(directory, existing, plan):
    """Raise unless the cache in `directory` was written with this plan (the same source, models and settings).

    The `ValueError` names each argument that differs and how. A cache that
    records no source fingerprint (written before sources were
    fingerprinted) is refused too: whether `source` is the one it holds
    cannot be told, and a cache is never resumed or completed from another
    source. `LatentDataset` still reads such a cache.
    """
    differences = teacher_differences(existing.get("teachers"), plan.get("teachers"))
    if differences:
        raise ValueError(
            f"`teachers` are not the ones the latent cache in {directory!r} was written with: "
            + ", ".join(differences)
            + ". Give the same teachers, or use a new directory."
        )
    keys = [key for key in _PLAN_WORDS if key in plan or key in FEATURE_PLAN_KEYS]
    if "source_sha256" not in existing:
        keys.remove("source_sha256")
    differences = []
    for key in keys:
        saved, given = existing.get(key), plan.get(key)
        if saved != given:
            argument, words = _PLAN_WORDS[key]
            if argument is None:
                differences.append(f"the cache's format is {saved!r}, where this version writes {given!r}")
            elif words:
                differences.append(f"`{argument}` has {words}")
            else:
                differences.append(f"`{argument}` is {given!r} where the cache has {saved!r}")
    if differences:
        raise ValueError(
            f"`directory` {directory!r} holds a latent cache of another source, autoencoder or setting: "
            + "; ".join(dict.fromkeys(differences))
            + ". Use a new directory (or delete it)."
        )
    if "source_sha256" not in existing:
        raise ValueError(
            f"`directory` {directory!r} holds a latent cache that records no fingerprint of its source, so whether "
            "`source` is the one it was written from cannot be checked: it is not resumed or rewritten. "
            "`LatentDataset` still reads it if it is complete; to write a cache of `source`, use a new directory."
        )


def _check_directory(directory):
    """`directory` as a str: a local path that is no file (it may not exist yet)."""
    if not isinstance(directory, (str, os.PathLike)) or not isinstance(os.fspath(directory), str):
        raise TypeError(f"`directory` must be a folder path (a str or os.PathLike); got {type(directory).__name__}.")
    directory = os.fspath(directory)
    if REMOTE_PATH.match(directory):
        raise ValueError(
            f"`directory` {directory!r} must be a local folder: a latent cache is written atomically and memory-mapped."
        )
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"`directory` {directory!r} is a file; a folder for the latent cache was expected.")
    return directory


def _write_shard(
    source, autoencoder, teachers, directory, shard, indices, batch_size, dtypes, image, on_error, verbose
):
    """Encode `source[indices]` and write them as shard `shard`, atomically; checked before anything is written.

    Every item is checked (`check_source_item`), and the stored latents and
    features must be finite in their stored dtype: otherwise nothing of the
    shard is written and a `ValueError` names the images.
    """
    dtype, feature_dtype = dtypes
    image_size, num_classes = image
    stored, labels, kept, skipped = {}, [], [], []  # file name -> batches of `[n, 2, h, w, c]`
    features = {name: [] for name in teachers}  # teacher name -> batches of `[n, 2, N, C]`
    items = readable_items(source, indices, on_error, skipped, verbose)
    checked = ((index, *check_source_item(item, index, image_size, num_classes)) for index, item in items)
    while batch := list(itertools.islice(checked, batch_size)):
        pixels = np.stack([image for _, image, _ in batch])
        images = to_float(pixels)
        both = np.concatenate([images, images[:, :, ::-1]], axis=0)  # the images, then their mirrors
        n = len(batch)
        for name, array in _cache_arrays(autoencoder, both, [index for index, _, _ in batch]).items():
            stored.setdefault(name, []).append(np.stack([array[:n], array[n:]], axis=1))
        for name, teacher in teachers.items():
            features[name].append(teacher_features(name, teacher, pixels, feature_dtype))
        labels.extend(label for _, _, label in batch)
        kept.extend(index for index, _, _ in batch)
    if not stored:  # every image of the shard skipped: empty arrays of what the autoencoder and teachers store
        blank = np.zeros((1, image_size, image_size, 3), "uint8")
        arrays = autoencoder.encode_distribution(to_float(blank)).cache_arrays()
        stored = {name: [np.zeros((0, 2, *np.shape(array)[1:]), "float32")] for name, array in arrays.items()}
        features = {
            name: [teacher_features(name, teacher, blank, feature_dtype)[:0]] for name, teacher in teachers.items()
        }
    with np.errstate(over="ignore"):  # values beyond float16 become infinite, and are reported below
        arrays = {name: np.concatenate(batches).astype(dtype) for name, batches in stored.items()}
    where = f"shard {shard} (images {indices[0]}..{indices[-1]} of `source`)"
    for name, array in arrays.items():
        _check_finite(array, kept, "`autoencoder`", f"latents ({name})", dtype, "dtype", where)
    for name, batches in features.items():
        _check_finite(batches, kept, f"`teachers` entry {name!r}", "tokens", feature_dtype, "feature_dtype", where)
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


def _cache_arrays(autoencoder, both, indices):
    """`autoencoder.encode_distribution(both).cache_arrays()` as NumPy, checked: a `mean`, one row per image."""
    arrays = autoencoder.encode_distribution(both).cache_arrays()
    if not isinstance(arrays, dict) or "mean" not in arrays:
        raise ValueError(
            f"`autoencoder`'s `cache_arrays()` must give a dict with a 'mean' array; got {type(arrays).__name__}"
            + (f" with keys {sorted(arrays)}." if isinstance(arrays, dict) else ".")
        )
    arrays = {name: np.asarray(keras.ops.convert_to_numpy(array)) for name, array in arrays.items()}
    for name, array in arrays.items():
        if array.ndim < 2 or len(array) != len(both) or array.shape != arrays["mean"].shape:
            raise ValueError(
                f"`autoencoder` gave {name!r} of shape {array.shape} for {len(both)} images (images {indices[0]}.."
                f"{indices[-1]} of `source` and their mirrors); one latent per image, all alike, was expected."
            )
    return arrays


def _check_finite(arrays, indices, model, what, dtype, argument, where):
    """Raise, naming the images, unless `arrays` (`[n, 2, ...]`, or batches of them) are finite.

    `indices` are the source's indices of the rows, in order.
    """
    batches = arrays if isinstance(arrays, list) else [arrays]
    flags = [~np.isfinite(batch).all(axis=tuple(range(1, batch.ndim))) for batch in batches]
    bad = np.concatenate(flags) if flags else np.zeros(0, bool)
    if not bad.any():
        return
    images = [int(index) for index, flag in zip(indices, bad) if flag]
    listed = ", ".join(map(str, images[:8])) + (", ..." if len(images) > 8 else "")
    reason = "NaN or infinity"
    if dtype == "float16" and not any(np.isnan(batch).any() for batch in batches):
        reason = f"infinity: float16 stores values beyond 65504 as infinite; `{argument}`='float32' holds them"
    raise ValueError(
        f"{model} gave {what} that are not finite ({reason}) for {len(images)} image(s) of `source`, "
        f"index {listed}, in {where}: the shard is not written and the cache is left unfinished. "
        "Check the model's weights and dtype, and these images."
    )
