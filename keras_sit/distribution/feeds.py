"""Feeding `fit` in a job of several processes: each process its slice of every global batch.

`batch_size` is the global batch. On JAX and PyTorch every process runs
`fit` on its own inputs, so each must be handed its slice: rows
`[p * b, (p + 1) * b)` of each global batch, `b = batch_size / processes`,
for process `p`. In-memory arrays become a `ProcessSlices` feed; a batched
`tf.data.Dataset` is re-batched to `b` and sharded by process (as JAX's
`keras.distribution` auto-sharding does, which `initialize` turns off so
that arrays can be fed); `LatentDataset` slices itself.
TensorFlow's multi-worker strategy shards arrays and `tf.data` the same
way on its own, so there the inputs go to Keras unchanged.
"""

import keras
import numpy as np

from keras_sit.backend import processes
from keras_sit.validation import check_positive_int

# `fit`'s arguments, positional after `x` and `y`, up to those the feed replaces.
FIT_POSITIONAL = ("batch_size", "epochs", "verbose", "callbacks", "validation_split", "validation_data", "shuffle")


def slices_by_process():
    """Whether each process must feed `fit` its own slice of every batch (JAX and PyTorch jobs)."""
    return processes.process_count() > 1 and keras.backend.backend() != "tensorflow"


def process_batch_size(batch_size, name="batch_size"):
    """This process's share of the global `batch_size`; it must divide evenly."""
    check_positive_int(name, batch_size)
    count = processes.process_count()
    if batch_size % count:
        raise ValueError(
            f"`{name}` ({batch_size}) is the global batch and must be a multiple of the number of processes ({count})."
        )
    return batch_size // count


class EpochOrder:
    """A `PyDataset`'s order of examples: each epoch a permutation keyed by `(seed, epoch)` when shuffling.

    The same seed gives the same orders in every process of a job and on
    every backend. The host sets `num_examples`, `shuffle`, `seed` and
    `epoch`, and reads `_order`.
    """

    def _permutation(self):
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.num_examples)

    def on_epoch_end(self):
        self.epoch += 1
        self._order = self._permutation()


class ProcessSlices(EpochOrder, keras.utils.PyDataset):
    """This process's slice of every global batch of in-memory arrays.

    Every process draws the same order of examples (a permutation keyed by
    `(seed, epoch)` when shuffling) and keeps its rows of each global batch,
    so the processes together train on exactly the global batches one
    process would. A last, short batch is cut to a multiple of the process
    count (fewer than that many examples are left out of the epoch), as
    every process needs a slice of equal size.

    Args:
        arrays: a structure of arrays with the same first dimension (e.g.
            `(x, y)`).
        batch_size: the global batch.
        shuffle: a fresh order every epoch.
        seed: the order's seed; every process must pass the same one.
        index, count: this process's index and the number of processes
            (default: the job's).
    """

    def __init__(self, arrays, batch_size, shuffle=False, seed=0, index=None, count=None, **kwargs):
        super().__init__(**kwargs)
        self.arrays = arrays
        leaves = [leaf for leaf in keras.tree.flatten(arrays) if leaf is not None]
        lengths = {len(leaf) for leaf in leaves}
        if len(lengths) != 1:
            raise ValueError(f"The arrays fed to `fit` must have the same number of examples; got {sorted(lengths)}.")
        self.num_examples = lengths.pop()
        self.index = processes.process_index() if index is None else index
        self.count = processes.process_count() if count is None else count
        self.batch_size = int(batch_size)
        if self.batch_size % self.count:
            raise ValueError(
                f"`batch_size` ({batch_size}) is the global batch and must be a multiple of the number of "
                f"processes ({self.count})."
            )
        self.shuffle, self.seed, self.epoch = bool(shuffle), int(seed), 0
        self._order = self._permutation()

    def __len__(self):
        full, rest = divmod(self.num_examples, self.batch_size)
        return full + (rest >= self.count)

    def __getitem__(self, index):
        batch = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        rows = process_rows(batch, self.index, self.count)
        return keras.tree.map_structure(lambda array: None if array is None else array[rows], self.arrays)


def process_rows(batch, index, count):
    """Process `index`'s rows of a global `batch` (indices), cut to a multiple of `count`."""
    per_process = len(batch) // count
    return batch[index * per_process : (index + 1) * per_process]


def shard_dataset(dataset):
    """A `tf.data.Dataset` batched with the global batch, re-batched and sharded for this process.

    The same transformation as `keras.distribution.DataParallel`'s: each
    global batch splits into `processes` equal pieces and process `p` takes
    piece `p`. The global batch must be a multiple of the process count.
    """
    import tensorflow as tf
    from tensorflow.python.data.experimental.ops import distribute as tf_data_distribute

    batch = int(tf_data_distribute.compute_batch_size(dataset).numpy())
    if batch < 0:
        raise ValueError(
            "A tf.data.Dataset fed to `fit` in a job of several processes must be batched with a known batch "
            "size, e.g. `dataset.batch(global_batch, drop_remainder=True)`."
        )
    count = processes.process_count()
    dataset = dataset.rebatch(process_batch_size(batch, "the dataset's batch size"))
    return dataset.shard(count, processes.process_index()).prefetch(tf.data.AUTOTUNE)


def process_feed(x, y, batch_size, shuffle, seed):
    """`fit`'s `(x, y, batch_size, shuffle)` for this process of a JAX or PyTorch job.

    Arrays become `ProcessSlices` (which orders them itself: Keras'
    shuffle is then off); a `tf.data.Dataset` is sharded (unless a JAX
    distribution with auto-sharding does it); anything else (a `PyDataset` such as
    `LatentDataset`, a generator, a `DataLoader`) is taken to yield this
    process's slice already, in an order of its own: Keras' shuffle, which
    would order a `PyDataset`'s batches differently in each process, is off.
    """
    from keras_sit.validation import in_memory

    leaves = keras.tree.flatten(x)
    if leaves and all(in_memory(leaf) for leaf in leaves):
        if batch_size is None:
            batch_size = 32  # Keras' default
        feed = ProcessSlices((x, y) if y is not None else x, batch_size, shuffle=shuffle, seed=seed)
        return feed, None, None, False
    if _is_tf_dataset(x) and not _keras_shards_datasets():
        return shard_dataset(x), y, batch_size, shuffle
    if isinstance(x, keras.utils.PyDataset):
        # Keras would shuffle its batches with each process's own random order.
        return x, y, batch_size, False
    return x, y, batch_size, shuffle


def _keras_shards_datasets():
    """Whether Keras' own `DataParallel` auto-sharding (JAX) shards a `tf.data.Dataset` by process."""
    current = keras.distribution.distribution() if keras.backend.backend() == "jax" else None
    return bool(getattr(current, "auto_shard_dataset", False))


def _is_tf_dataset(x):
    import sys

    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(x, tf.data.Dataset)
