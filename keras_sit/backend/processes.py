"""The processes of a multi-process job, on each backend's own engine.

JAX: `jax.distributed`, from the variables `keras.distribution.initialize`
reads, one program over a global mesh. PyTorch: `torch.distributed` as `torchrun`
sets it up, one program per process, gradients averaged by this module
(`average_gradients`), as DDP does. TensorFlow: `MultiWorkerMirroredStrategy`
from `TF_CONFIG`, one replica per worker. Everything that differs between
them (joining, counting, waiting, agreeing on a value) is here;
`keras_sit.distribution` is the public face.
"""

import contextlib
import datetime
import json
import os

import keras
import numpy as np

from keras_sit.validation import check_bool, check_number

# The TensorFlow strategy `initialize` made, so that `barrier` and `broadcast` run on it.
_STATE = {"strategy": None}

DEFAULT_TIMEOUT_SECONDS = 600.0


def initialize(timeout_seconds=DEFAULT_TIMEOUT_SECONDS, auto_detect=False):
    """Join this process to its job, from the launcher's environment; a lone process is left as it is.

    See `keras_sit.distribution.initialize`.
    """
    check_number("timeout_seconds", timeout_seconds, low=0.0, include_low=False)
    check_bool("auto_detect", auto_detect)
    name = keras.backend.backend()
    if name == "jax":
        _initialize_jax(timeout_seconds, auto_detect)
    elif name == "torch":
        _initialize_torch(timeout_seconds)
    elif name == "tensorflow":
        _initialize_tensorflow(timeout_seconds)
    return process_count()


def _initialize_jax(timeout_seconds, auto_detect):
    import jax

    addresses = os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES")
    count = _check_environment_int("KERAS_DISTRIBUTION_NUM_PROCESSES")
    if not jax.distributed.is_initialized() and (addresses or count or auto_detect):
        # `keras.distribution.initialize` reads the same variables, but cannot pass the heartbeat
        # timeout, which bounds how long the others wait for a process that stopped.
        options = {"heartbeat_timeout_seconds": max(1, int(timeout_seconds))}
        if addresses or count:
            if not addresses or count is None or "KERAS_DISTRIBUTION_PROCESS_ID" not in os.environ:
                raise ValueError(
                    "A JAX job of several processes needs KERAS_DISTRIBUTION_JOB_ADDRESSES (the coordinator's "
                    "host:port first), KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID."
                )
            options.update(
                coordinator_address=addresses.split(",")[0],
                num_processes=count,
                process_id=_check_environment_int("KERAS_DISTRIBUTION_PROCESS_ID"),
            )
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # collectives between CPU processes
        jax.distributed.initialize(**options)  # without an address, JAX finds the cluster (TPU, SLURM, MPI)
        # One seed for every process, so that unseeded layers start alike (Keras' initialize does the same).
        keras.utils.set_random_seed(broadcast(np.random.randint(2**31 - 1)))
    if keras.distribution.distribution() is None and len(keras.distribution.list_devices()) > 1:
        # One global mesh: every device of every process holds a replica and a slice of each batch.
        # Each process feeds its own slice (`keras_sit.distribution.feeds`), arrays included, which
        # Keras' auto-sharding (of `tf.data` only) would refuse.
        data_parallel = keras.distribution.DataParallel(
            devices=keras.distribution.list_devices(), auto_shard_dataset=False
        )
        keras.distribution.set_distribution(data_parallel)


def _initialize_torch(timeout_seconds):
    import torch
    import torch.distributed as dist

    world = _check_environment_int("WORLD_SIZE")
    if world is None or world < 2 or dist.is_initialized():
        return
    for variable in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if variable not in os.environ:
            raise ValueError(f"WORLD_SIZE is {world} but {variable} is not set: launch the script with `torchrun`.")
    if torch.cuda.is_available():
        torch.cuda.set_device(_check_environment_int("LOCAL_RANK") or 0)
    dist.init_process_group(
        backend="nccl" if torch.cuda.is_available() else "gloo",
        timeout=datetime.timedelta(seconds=timeout_seconds),
    )


def _initialize_tensorflow(timeout_seconds):
    import tensorflow as tf

    if _STATE["strategy"] is not None or "TF_CONFIG" not in os.environ:
        return
    try:
        config = json.loads(os.environ["TF_CONFIG"])
        cluster = config["cluster"]
        size = sum(len(cluster.get(kind, ())) for kind in ("chief", "worker"))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(
            'TF_CONFIG must be JSON like {"cluster": {"worker": ["host:port", ...]}, '
            f'"task": {{"type": "worker", "index": 0}}}}; got {os.environ["TF_CONFIG"]!r} ({error}).'
        ) from None
    if size < 2:
        return
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_seconds)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    # As if the whole script ran in `strategy.scope()`: models, optimizers and `fit` use it.
    tf.distribute.experimental_set_strategy(strategy)
    _STATE["strategy"] = strategy


def _check_environment_int(variable):
    value = os.environ.get(variable)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"The environment variable {variable} must be an integer; got {value!r}.") from None


def process_count():
    """How many processes the job has (1 unless `initialize` joined several)."""
    return _rank_and_size()[1]


def process_index():
    """This process's rank, 0 to `process_count() - 1`; 0 is the chief, which writes files."""
    return _rank_and_size()[0]


def _rank_and_size():
    """`(process index, process count)` on this backend's engine."""
    name = keras.backend.backend()
    if name == "jax":
        import jax

        return jax.process_index(), jax.process_count()
    if name == "torch":
        return torch_group() or (0, 1)
    return _tensorflow_rank_and_size()


def _tensorflow_rank_and_size():
    """The chief (if any) first, then the workers, as `TF_CONFIG` lists them."""
    strategy = _STATE["strategy"]
    if strategy is None:
        return 0, 1
    resolver = strategy.cluster_resolver
    cluster = resolver.cluster_spec().as_dict()
    chiefs = len(cluster.get("chief", ()))
    rank = resolver.task_id + (0 if resolver.task_type == "chief" else chiefs)
    return rank, chiefs + len(cluster.get("worker", ()))


def torch_group():
    """`(rank, world size)` of a PyTorch job of several processes, else None."""
    if keras.backend.backend() != "torch":
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return dist.get_rank(), dist.get_world_size()


def barrier():
    """Wait until every process of the job gets here."""
    if process_count() < 2:
        return
    name = keras.backend.backend()
    if name == "jax":
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("keras_sit.barrier")
    elif name == "torch":
        import torch.distributed as dist

        dist.barrier()
    else:
        _tensorflow_sum(0)


def broadcast(value):
    """The chief's int `value`, on every process (e.g. a seed one process drew)."""
    if process_count() < 2:
        return int(value)
    name = keras.backend.backend()
    if name == "jax":
        from jax.experimental import multihost_utils

        return int(multihost_utils.broadcast_one_to_all(np.asarray(value, "int64")))
    if name == "torch":
        import torch.distributed as dist

        holder = [int(value)]
        dist.broadcast_object_list(holder, src=0)
        return int(holder[0])
    return int(_tensorflow_sum(int(value) if process_index() == 0 else 0))


def _tensorflow_sum(value):
    """The sum of an int over the workers, as int64: a collective, so also a barrier."""
    import tensorflow as tf

    strategy = _STATE["strategy"]
    per_replica = strategy.run(lambda: tf.constant(value, "int64"))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()


def lost_peer(error):
    """Whether `error` is how this backend reports that another process of the job stopped or is unreachable.

    PyTorch's gloo and NCCL raise a `RuntimeError` naming them; JAX's gloo
    collectives a `ValueError` naming gloo, its coordinator a missed
    heartbeat; TensorFlow's collectives `UnavailableError` or, after the
    timeout, `DeadlineExceededError`.
    """
    if process_count() < 2:
        return False
    name = keras.backend.backend()
    text = str(error)
    if name == "tensorflow":
        import tensorflow as tf

        return isinstance(error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError))
    if name == "torch":
        return isinstance(error, RuntimeError) and any(word in text for word in ("gloo", "NCCL", "Connection"))
    return isinstance(error, (ValueError, RuntimeError)) and any(word in text for word in ("Gloo", "heartbeat"))


def average_gradients(gradients):
    """On a PyTorch job of several processes, replace each gradient by its mean over the processes.

    What DDP does after `backward`: one all-reduce over the gradients
    flattened into a single buffer (one message, not one per weight).
    Every process feeds an equal slice of the global batch, so the mean of
    their mean-loss gradients is the gradient of the global batch's mean loss.
    """
    group = torch_group()
    present = [g for g in gradients if g is not None]
    if group is None or not present:
        return
    import torch
    import torch.distributed as dist

    flat = torch.cat([g.reshape(-1) for g in present])
    dist.all_reduce(flat)
    flat /= group[1]
    offset = 0
    for gradient in present:
        gradient.copy_(flat[offset : offset + gradient.numel()].view_as(gradient))
        offset += gradient.numel()


def mean_over_processes(value):
    """A PyTorch scalar's mean over the processes of the job (itself in a lone process)."""
    group = torch_group()
    if group is None:
        return value
    import torch.distributed as dist

    total = value.detach().clone()
    dist.all_reduce(total)
    return total / group[1]


def all_processes(flag):
    """A PyTorch boolean and-ed over the processes of the job (itself in a lone process)."""
    group = torch_group()
    if group is None:
        return flag
    import torch
    import torch.distributed as dist

    failed = torch.logical_not(torch.as_tensor(flag)).to(torch.int32).reshape(())
    dist.all_reduce(failed)
    return failed == 0


def synchronize_variables(variables):
    """On a PyTorch job of several processes, give every process the chief's values of `variables`.

    DDP's start: the processes may have initialised their weights (and seed
    states) differently, and must train the same model.
    """
    if torch_group() is None:
        return
    import torch.distributed as dist

    for variable in variables:
        value = variable.value
        dist.broadcast(value.data, src=0)


@contextlib.contextmanager
def outside_strategy():
    """Variables created here belong to this process only, also under TensorFlow's multi-worker strategy.

    There, creating a variable is a collective whose initial value comes
    from the chief: a variable seeded differently on each worker (a sampling
    seed) would silently take the chief's value, and one created on some
    workers only would pair with another. Elsewhere this does nothing.
    """
    strategy = tensorflow_multi_worker()
    if strategy is None:
        yield
        return
    import tensorflow as tf

    tf.distribute.experimental_set_strategy(None)
    try:
        yield
    finally:
        tf.distribute.experimental_set_strategy(strategy)


@contextlib.contextmanager
def local():
    """Models created here are this process's own: no JAX distribution, no TensorFlow strategy."""
    if keras.backend.backend() != "jax":
        with outside_strategy():
            yield
        return
    current = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(current)


def check_process_local(model, name):
    """Raise unless `model` can compute on this process alone (its JAX variables are not spread over processes).

    In a JAX job a model created under the job's distribution holds global
    arrays, which every process must compute on together, on the same inputs.
    """
    if keras.backend.backend() != "jax" or process_count() < 2:
        return
    spread = [v.path for v in model.variables if not getattr(v.value, "is_fully_addressable", True)]
    if spread:
        raise ValueError(
            f"`{name}` holds variables spread over the processes of this JAX job ({spread[0]}, ...), but each "
            f"process computes its own part here: create or load it under `keras_sit.distribution.local()`."
        )


def tensorflow_multi_worker():
    """The `MultiWorkerMirroredStrategy` of a TensorFlow job of several workers, else None."""
    return _STATE["strategy"] if keras.backend.backend() == "tensorflow" else None
