"""`.npz` files in and out, with errors that name the file.

NumPy's own errors on a bad file say what went wrong but not where: a
truncated archive raises `zipfile.BadZipFile: File is not a zip file`, a
file of other bytes a `ValueError` about pickles, a damaged member a CRC or
zlib error. Everything in `keras_sit.evaluation` that reads or writes an
`.npz` goes through here, so each of those becomes a `ValueError` naming
the argument and the file (a missing file a `FileNotFoundError`), raised
before anything is computed or written. Pickled (object) arrays are never
loaded.
"""

import os
import zipfile
import zlib

import numpy as np

# What NumPy and zipfile raise on a damaged archive or member.
DAMAGED = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error)


def check_input_file(path, label="`path`", what="an .npz file"):
    """`path` as a str, for a file that exists and is not a folder; `label` names it in errors."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{label} must be a path to {what} (str or os.PathLike); got {type(path).__name__}.")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No file at {label} {path!r}; expected {what}.")
    if os.path.isdir(path):
        raise ValueError(f"{label} {path!r} is a folder; expected {what}.")
    return path


def open_npz(path, label="`path`"):
    """`np.load(path, allow_pickle=False)` of an `.npz` archive (use it in a `with`), or an error naming the file."""
    path = check_input_file(path, label)
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{label} {path!r} is not an .npz file: it is not a zip archive (truncated, damaged, or another format)."
        )
    try:
        return np.load(path, allow_pickle=False)
    except DAMAGED as error:
        raise ValueError(f"{label} {path!r} is a damaged .npz file: {type(error).__name__}: {error}") from error


def read_array(data, key, path, label="`path`"):
    """The array `key` of the open archive `data`, or a `ValueError` naming the file if it cannot be read."""
    try:
        return data[key]
    except DAMAGED as error:
        raise ValueError(
            f"{label} {path!r}: the array {key!r} cannot be read (damaged, or objects that need pickle): "
            f"{type(error).__name__}: {error}"
        ) from error


def npz_output_path(path, label="`path`"):
    """The file `np.savez(path)` writes (NumPy appends `.npz` to a str without it), checked before writing.

    A `TypeError` unless a path, a `ValueError` if it is a folder, and a
    `FileNotFoundError` if the folder it goes in does not exist.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"{label} must be a path to an .npz file to write (str or os.PathLike); got {type(path).__name__}."
        )
    path = os.fspath(path)
    written = path if path.endswith(".npz") else f"{path}.npz"
    if os.path.isdir(written):
        raise ValueError(f"{label} {path!r} names a folder ({written!r}); give the name of the .npz file to write.")
    folder = os.path.dirname(written) or "."
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"The folder of {label} {path!r} does not exist; create {folder!r} first.")
    return written
