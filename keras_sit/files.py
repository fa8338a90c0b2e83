"""Writing files so that a crash never leaves a half-written one where a reader looks (and reading JSON ones).

The latent cache and the evaluation runner are resumable: after a crash they
trust every file they find. A saved model is trusted the same way, and Keras
writes it in place. So each file is written under a partial name in its own
directory, flushed to disk, and renamed into place, which POSIX makes atomic:
a reader sees the old file or the new one, never a mix.
"""

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile

PARTIAL_SUFFIX = ".partial"
REMOTE_PATH = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # gs://, s3://, hf://, ...


def write_synced(path, write):
    """`write(file)` into `path` (binary), then flush it to disk."""
    with open(path, "wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())


def write_atomically(path, write):
    """`write(file)` into a partial file, synced, then renamed onto `path`."""
    with replacing(path) as partial, open(partial, "wb") as file:
        write(file)


@contextlib.contextmanager
def replacing(path):
    """Yields a partial path to write; on success, syncs it and renames it onto `path`.

    The partial file keeps `path`'s name (writers such as Keras check the suffix)
    inside a hidden directory beside `path`, `.NAME.partial-HOST-PID-XXXX`, which
    no reader mistakes for the file. The directory is the same file system, so the
    rename is atomic, and unique, so concurrent writers (every host of a multi-host
    run saving the same checkpoint) never write into each other's file. On an
    error it is removed and `path` is left as it was; after a success, those left
    by writers on this host that were killed are removed too. A `path` that is a
    folder, or whose folder does not exist, raises before anything is written.
    """
    given = os.fspath(path)
    path = os.path.realpath(path)  # through a symlink: replace its target, keep the link
    directory, name = os.path.split(path)
    if os.path.isdir(path):
        raise ValueError(f"{given!r} is a folder; a file was expected there.")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"The folder of {given!r} does not exist ({directory!r}): create it first.")
    partial_directory = tempfile.mkdtemp(prefix=_partial_prefix(name) + f"{os.getpid()}-", dir=directory)
    try:
        partial = os.path.join(partial_directory, name)
        yield partial
        _sync_file(partial)
        os.replace(partial, path)
        _sync_directory(directory)
    finally:
        shutil.rmtree(partial_directory, ignore_errors=True)
    _remove_dead_partials(directory, name)


@contextlib.contextmanager
def chief_writes(path):
    """Yields where this process saves `path`: `path` on the chief, a throwaway file elsewhere.

    In a job of several processes, saving a model is a collective on JAX (the
    variables are global arrays) and on TensorFlow's multi-worker strategy,
    so every process must save; only the chief's file is kept. A lone
    process is the chief.
    """
    from keras_sit.backend.processes import process_index

    if process_index() == 0 or not isinstance(path, (str, os.PathLike)):
        yield path
        return
    scratch = tempfile.mkdtemp(prefix="keras_sit_not_chief_")
    try:
        yield os.path.join(scratch, os.path.basename(os.fspath(path)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def save_atomically(path, overwrite, suffixes, save, **kwargs):
    """Runs a Keras saver, `save(partial, overwrite=True, **kwargs)`, through `replacing(path)`.

    Keras' savers write straight into `path`; the partial file has `path`'s
    suffix, which they check. Returns False, having done nothing, unless `path`
    is a local file name ending in one of `suffixes` that may be overwritten
    without asking; the caller then lets Keras save it (remote paths, file
    objects, directories, sharded weights, and `overwrite=False` onto an
    existing file, where Keras asks first).
    """
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or REMOTE_PATH.match(path) or not path.endswith(suffixes):
        return False
    if not overwrite and os.path.exists(path):
        return False
    with replacing(path) as partial:
        save(partial, overwrite=True, **kwargs)
    return True


def _partial_prefix(name):
    return f".{name}{PARTIAL_SUFFIX}-{socket.gethostname()}-"


def _sync_file(path):
    with open(path, "r+b") as file:
        os.fsync(file.fileno())


def _sync_directory(directory):
    """Makes a rename in `directory` durable, where the system lets a directory be synced (not Windows)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some file systems refuse
            os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove_dead_partials(directory, name):
    """Removes partial directories of `name` whose writer, a process of this host, is gone."""
    if os.name != "posix":  # `os.kill(pid, 0)` only probes on POSIX
        return
    prefix = _partial_prefix(name)
    for entry in os.scandir(directory):
        if entry.name.startswith(prefix):
            pid = entry.name[len(prefix) :].split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(entry.path, ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def read_json_object(path, what, remedy=""):
    """The JSON object in the file `path`, or None where there is none; `what` names it in errors.

    A folder of that name, a file that is no JSON (truncated, damaged) or
    JSON that is no object raises a `ValueError` naming the file, followed
    by `remedy`: a file that cannot be read is never taken as absent.
    """
    if not os.path.exists(path):
        return None
    if not os.path.isfile(path):
        raise ValueError(f"{path!r} is a folder; {what} is a file.{remedy}")
    try:
        with open(path, encoding="utf-8") as file:
            content = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path!r} is not valid JSON ({type(error).__name__}: {error}): {what} is damaged or truncated.{remedy}"
        ) from error
    if not isinstance(content, dict):
        raise ValueError(f"{path!r} must hold a JSON object ({what}); it holds a {type(content).__name__}.{remedy}")
    return content
