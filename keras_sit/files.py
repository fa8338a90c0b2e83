"""Writing files so that a crash never leaves a half-written one where a reader looks.

The latent cache and the evaluation runner are resumable: after a crash they
trust every file they find. So each file is written under a temporary name,
flushed to disk, and renamed into place, which POSIX makes atomic.
"""

import os

PARTIAL_SUFFIX = ".partial"


def write_synced(path, write):
    """`write(file)` into `path` (binary), then flush it to disk."""
    with open(path, "wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())


def write_atomically(path, write):
    """`write(file)` into `path + ".partial"`, synced, then renamed onto `path`."""
    write_synced(path + PARTIAL_SUFFIX, write)
    os.replace(path + PARTIAL_SUFFIX, path)
