"""Training on many devices and processes, on each backend's own engine.

One call at the top of a script, and the same script runs as one process or
as many, launched by the backend's own tool:

    import keras_sit
    keras_sit.distribution.initialize()
    model = keras_sit.SiT(...)
    model.compile()
    model.fit(x, y, batch_size=256)  # the global batch, whatever the process count

- JAX: one process per host with `KERAS_DISTRIBUTION_*` set (or
  `auto_detect`); `jax.distributed`, one global `DataParallel` mesh.
- PyTorch: `torchrun --nproc_per_node N`; `torch.distributed` (NCCL on
  GPUs, gloo on CPUs), gradients averaged in `fit`'s step as DDP does.
- TensorFlow: one process per worker with `TF_CONFIG` set;
  `tf.distribute.MultiWorkerMirroredStrategy`.

`batch_size` is the global batch and every process trains on its slice
(`feeds`); the processes draw between them the `t`, noise and label drops
one process draws for that batch, so N processes compute what one does.
Only the chief (`is_chief()`) writes files. Work that each process does on
its own (encoding its shards of a latent cache, drawing its chunks of
evaluation samples) needs models of its own: create or load them under
`local()` (on JAX a model created under the job's distribution is spread
over every process). `layouts` holds the JAX mesh
layouts of SiT (data and model parallelism). docs/distribution.md has the
launch commands and what is tested.
"""

from keras_sit.backend.processes import (
    DEFAULT_TIMEOUT_SECONDS,
    barrier,
    broadcast,
    local,
    process_count,
    process_index,
)
from keras_sit.distribution.feeds import ProcessSlices
from keras_sit.distribution.layouts import data_parallel, model_parallel, shard_batch, sit_layout_map


def initialize(timeout_seconds=DEFAULT_TIMEOUT_SECONDS, auto_detect=False):
    """Join this process to its job from the launcher's environment, on this backend's engine.

    With nothing set (one process) it changes nothing, except that on JAX
    with several local devices it sets a `DataParallel` distribution over
    them. Call it at the top of the script, before any model is created.

    - JAX: with `KERAS_DISTRIBUTION_JOB_ADDRESSES` (the coordinator's
      `host:port` first), `KERAS_DISTRIBUTION_NUM_PROCESSES` and
      `KERAS_DISTRIBUTION_PROCESS_ID`, as `keras.distribution.initialize`
      reads them, or with `auto_detect=True` on a Cloud TPU pod, SLURM or
      Open MPI, it calls `jax.distributed.initialize` and sets a
      `DataParallel` distribution over the devices of every process (unless
      a distribution is set already).
    - PyTorch: with `torchrun`'s `WORLD_SIZE` > 1, `RANK`, `MASTER_ADDR` and
      `MASTER_PORT`, it starts `torch.distributed` (NCCL on GPUs, each
      process on GPU `LOCAL_RANK`; gloo on CPUs).
    - TensorFlow: with a `TF_CONFIG` of several workers, it creates a
      `MultiWorkerMirroredStrategy` and makes it the current strategy, as if
      the script ran in its `scope()`.

    Args:
        timeout_seconds: how long a process waits for the others (a
            collective, the JAX heartbeat) before it fails: a process that
            dies makes the others raise within about this time, not hang.
        auto_detect: JAX only: let JAX find the cluster without
            `KERAS_DISTRIBUTION_*` variables.

    Returns:
        The number of processes in the job.
    """
    from keras_sit.backend import processes

    return processes.initialize(timeout_seconds=timeout_seconds, auto_detect=auto_detect)


def is_chief():
    """Whether this is process 0, the one that writes checkpoints, logs and pictures."""
    return process_index() == 0


__all__ = [
    "ProcessSlices",
    "barrier",
    "broadcast",
    "data_parallel",
    "initialize",
    "is_chief",
    "local",
    "model_parallel",
    "process_count",
    "process_index",
    "shard_batch",
    "sit_layout_map",
]
