"""The files of a latent cache: `cache.json` (its description), and one `shard-NNNNN` folder per shard with
its arrays and `skipped.json`. Where they lie, how they are read (each damaged file named), and the statistics
gathered from them."""

import json
import os
import re

import numpy as np

from keras_sit.files import read_json_object, write_atomically

CACHE_FILE = "cache.json"
SKIPPED_FILE = "skipped.json"
SHARD_NAME = re.compile(r"shard-\d{5}$")


def shard_folders(directory):
    """The names of the shard folders in `directory` (none if it does not exist)."""
    if not os.path.isdir(directory):
        return []
    return sorted(entry.name for entry in os.scandir(directory) if SHARD_NAME.match(entry.name) and entry.is_dir())


def read_skipped(directory, shard):
    """The images skipped in a shard, `[{"index", "path", "reason"}]`; a damaged record raises, naming it."""
    folder = shard_path(directory, shard)
    path = os.path.join(folder, SKIPPED_FILE)
    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8") as file:
            records = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path!r} is not valid JSON ({error}): {_damaged(folder)}") from error
    if not isinstance(records, list) or not all(isinstance(r, dict) and "path" in r for r in records):
        raise ValueError(f"{path!r} is not a list of skipped images: {_damaged(folder)}")
    return records


def _damaged(folder, how="damaged"):
    return f"the shard is {how}; delete {folder!r} and run `write_latent_cache` again to rewrite it."


def load_shard_array(directory, shard, name, mmap_mode=None):
    """The array `name` (`mean`, `labels`, a teacher's name, ...) of shard `shard`, memory-mapped with `mmap_mode="r"`.

    A missing file raises a `FileNotFoundError`, a damaged one (no NumPy
    array file, truncated, objects) a `ValueError`, each naming the file.
    """
    folder = shard_path(directory, shard)
    path = os.path.join(folder, f"{name}.npy")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"The latent cache in {directory!r} lacks {path!r}: {_damaged(folder, 'incomplete')}")
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:  # NumPy's "pickled data", a short file, a bad header
        raise ValueError(
            f"{path!r} cannot be read as a NumPy array of numbers (it is truncated or damaged): {_damaged(folder)}"
        ) from error


def shard_length(directory, shard):
    return len(load_shard_array(directory, shard, "labels", "r"))


def stored_shape(directory, name):
    """The shape of one example's one flip of the array `name` (`[h, w, c]` latents, `[N, C]` tokens)."""
    return list(load_shard_array(directory, 0, name, "r").shape[2:])


def shard_statistics(directory, num_shards):
    """Per-channel mean and standard deviation of the cached latents (samples, both flips)."""
    sums = sum(load_shard_array(directory, s, "sums") for s in range(num_shards))
    count, total, squares, variances = sums
    mean = total / count
    # A sample's variance is the variance of the means plus the mean posterior variance.
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0) + variances / count)
    return {"channel_mean": mean.tolist(), "channel_std": std.tolist()}


def shard_path(directory, shard):
    """The folder of shard number `shard`."""
    return os.path.join(directory, f"shard-{shard:05d}")


def read_cache_json(directory):
    """`cache.json` of `directory` as a dict, or None where there is none; a damaged one raises, naming it."""
    return read_json_object(
        os.path.join(directory, CACHE_FILE),
        "the latent cache's description",
        " Delete the cache's folder and write it again.",
    )


def write_cache_json(directory, content):
    write_atomically(
        os.path.join(directory, CACHE_FILE), lambda file: file.write(json.dumps(content, indent=1).encode())
    )


# What a complete `cache.json` must hold for `LatentDataset`, and the JSON type of each.
_COMPLETE_KEYS = {
    "num_shards": int,
    "shard_size": int,
    "latent_shape": list,
    "statistics": dict,
}


def read_cache_description(directory):
    """The `cache.json` of a finished cache; raises if the cache is missing, damaged or unfinished.

    `directory` must be a folder: a missing one raises a `FileNotFoundError`,
    a file, a folder without `cache.json`, a `cache.json` that is no JSON
    object or lacks what a complete cache records, and an unfinished cache a
    `ValueError`, each naming the folder or the file.
    """
    if not isinstance(directory, (str, os.PathLike)) or not isinstance(os.fspath(directory), str):
        raise TypeError(f"`directory` must be a folder path (a str or os.PathLike); got {type(directory).__name__}.")
    directory = os.fspath(directory)
    if not os.path.exists(directory):
        raise FileNotFoundError(f"`directory` {directory!r} does not exist: it holds no latent cache.")
    if not os.path.isdir(directory):
        raise ValueError(f"`directory` {directory!r} is a file; a latent cache is a folder with {CACHE_FILE}.")
    description = read_cache_json(directory)
    if description is None:
        raise ValueError(f"`directory` {directory!r} holds no latent cache ({CACHE_FILE} is missing).")
    if not description.get("complete"):
        raise ValueError(
            f"The latent cache in {directory!r} is unfinished: run `write_latent_cache` again to complete it."
        )
    path = os.path.join(directory, CACHE_FILE)
    for key, kind in _COMPLETE_KEYS.items():
        value = description.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value <= 0):
            raise ValueError(
                f"{path!r} is damaged: a complete latent cache records {key!r} ({kind.__name__}); got {value!r}."
            )
    statistics = description["statistics"]
    if not all(isinstance(statistics.get(key), list) for key in ("channel_mean", "channel_std")):
        raise ValueError(f"{path!r} is damaged: its 'statistics' lack 'channel_mean' and 'channel_std' lists.")
    return description
