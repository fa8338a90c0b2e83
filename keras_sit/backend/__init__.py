"""Portability shims: what Keras does not abstract across backends.

Everything else in keras_sit is written against `keras.ops` and runs unchanged
on JAX, TensorFlow and PyTorch. Compiling a sampling loop, the likelihood's
vector-Jacobian product, MeanFlow's Jacobian-vector product, stopping autograd in inference and the per-replica
loss differ by backend and live here. PyTorch-only fused kernels, which only
make eager PyTorch faster, are apart in `keras_sit.fused`.
"""

import contextlib

import keras
import numpy as np

import keras_sit.backend.processes as processes  # this package's submodule, imported by its full name
from keras_sit.validation import check_positive_int


def compile_inference(model, fn):
    """`fn(*tensors)` compiled once per input signature, reading `model`'s weights.

    JAX: `jax.jit` with the model's variable values passed in and mapped onto
    the variables by a `keras.StatelessScope`, so the weights are inputs rather
    than constants baked into the program, and a later call after training
    reuses the compilation. TensorFlow: a `tf.function` compiled with XLA.
    PyTorch: eager, under `torch.no_grad`.
    """
    name = keras.backend.backend()
    if name == "jax":
        import jax

        variables = model.variables

        def pure(values, *args):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return fn(*args)

        jitted = jax.jit(pure)
        return lambda *args: jitted([v.value for v in variables], *args)
    if name == "tensorflow":
        import tensorflow as tf

        # XLA, as Keras' train step: it fuses the sampler's elementwise work into the
        # network's and runs the loop without a host round trip per op.
        return tf.function(fn, reduce_retracing=True, jit_compile=True)

    def run(*args):
        with no_grad():
            return fn(*args)

    return run


def to_numpy(x):
    """`keras.ops.convert_to_numpy(x)`, also for a JAX array split over the processes of a job.

    Under a `keras.distribution` spanning processes, `generate` splits its
    batch over every device, so each process holds part of the result; every
    process gets the whole (a collective: all of them call this).
    """
    if keras.backend.backend() == "jax" and not getattr(x, "is_fully_addressable", True):
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return keras.ops.convert_to_numpy(x)


def seed_generator(seed):
    """`keras.random.SeedGenerator(seed)`, this process's own (`processes.outside_strategy`).

    For the generators a sampling call seeds from its `seed` argument, which
    may differ between the processes of a job.
    """
    with processes.outside_strategy():
        return keras.random.SeedGenerator(seed)


def per_replica_loss(loss):
    """`loss / replicas` under a TensorFlow `tf.distribute` strategy, else `loss`.

    Each replica's gradients are summed across replicas, so a custom
    `compute_loss` must divide by their number (Keras' own does); JAX and
    PyTorch run one program over the global batch and need nothing.
    """
    context = _replica_context()
    return loss if context is None else loss / context.num_replicas_in_sync


def per_replica_draw(batch, draw):
    """`draw(batch)`, or this replica's slice of `draw(replicas * batch)` where each replica runs its own program.

    `draw(n)` draws random values for `n` examples from a seed generator.
    Under a TensorFlow `tf.distribute` strategy, and in a PyTorch job of
    several processes, every replica holds the same seed state and a
    contiguous slice of the global batch (replica 0 first), so drawing for
    the global batch and keeping its own slice gives each replica different
    values, the ones one device draws for that batch. JAX runs one program
    over the global batch, on one host or many, and draws it whole.
    """
    replica = _replica_index_and_count()
    if replica is None:
        return draw(batch)
    index, count = replica
    return keras.ops.take(draw(count * batch), index * batch + keras.ops.arange(batch), axis=0)


def all_replicas(flag):
    """`flag` and-ed over the replicas of a TensorFlow strategy or the processes of a PyTorch job, else `flag`.

    A step must be applied or skipped on every replica alike: each holds
    the gradients of its own slice of the batch until the optimizer sums them.
    """
    if processes.torch_group() is not None:
        return processes.all_processes(flag)
    context = _replica_context()
    if context is None:
        return flag
    import tensorflow as tf

    bad = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(flag), "float32"))
    return tf.equal(bad, 0.0)


def apply_if(condition, function, args, variables):
    """Run `function(*args)`, which updates `variables`, only if the scalar `condition` holds.

    JAX: run it and select the old or the new values, as a compiled branch
    cannot update variables there. TensorFlow: a `tf.cond`, taken in the
    cross-replica context under a `tf.distribute` strategy (where an update
    is a merge call, which a replica-context branch may not make). PyTorch:
    a Python branch, as the update is in place.
    """
    name = keras.backend.backend()
    if name == "jax":
        old = [variable.value for variable in variables]
        function(*args)
        for variable, value in zip(variables, old):
            variable.assign(keras.ops.where(condition, variable.value, value))
        return
    if name == "tensorflow":
        import tensorflow as tf

        context = _replica_context()
        if context is not None:

            def in_cross_replica_context(strategy, condition, args):
                condition = strategy.experimental_local_results(condition)[0]  # equal on every replica
                tf.cond(condition, lambda: strategy.extended.call_for_each_replica(function, args=args), lambda: None)

            context.merge_call(in_cross_replica_context, args=(condition, args))
            return
        tf.cond(condition, lambda: function(*args), lambda: None)
        return
    if bool(condition):
        function(*args)


def auto_jit_compile(compute_dtype="float32"):
    """What SiT's `compile(jit_compile="auto")` passes to Keras, for the model's compute dtype.

    On TensorFlow with one replica: True (XLA), which Keras' "auto" leaves
    off on a CPU-only machine although XLA trains SiT in float32 faster
    there; but False (a `tf.function` graph) for a 16-bit compute dtype on a
    CPU, where XLA's CPU backend computes bf16 dots without the bf16 matrix
    instructions (AVX512-BF16, AMX) and TensorFlow's oneDNN kernels use them:
    1.8x XLA's bf16 step, 1.5x the float32 one (`docs/performance.md`). Keras
    still turns XLA off where the model or op determinism does not support
    it. Under a strategy with several replicas, and on JAX and PyTorch,
    Keras' "auto".
    """
    if keras.backend.backend() != "tensorflow":
        return "auto"
    import tensorflow as tf

    # Outside any strategy scope `get_strategy()` is the default strategy, with one replica.
    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        return "auto"
    sixteen_bit = keras.backend.standardize_dtype(compute_dtype) in ("bfloat16", "float16")
    return not (sixteen_bit and not tf.config.list_physical_devices("GPU"))


def _replica_index_and_count():
    """`(index, count)` of this replica where each replica runs its own program, else None."""
    group = processes.torch_group()
    if group is not None:
        return group
    context = _replica_context()
    return None if context is None else (context.replica_id_in_sync_group, context.num_replicas_in_sync)


def _replica_context():
    """The replica context of a TensorFlow `tf.distribute` strategy with more than one replica, else None.

    None in a cross-replica context too, and always on JAX and PyTorch, which run one program
    over the global batch.
    """
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    return context if context is not None and context.num_replicas_in_sync > 1 else None


def vjp(fn, x, cotangent):
    """`(fn(x), J^T cotangent)` for `J` the Jacobian of `fn` at `x`.

    Keras has no backend-neutral autodiff outside training, and the
    likelihood's divergence needs one vector-Jacobian product per probe.
    """
    name = keras.backend.backend()
    if name == "jax":
        import jax

        y, pullback = jax.vjp(fn, x)
        return y, pullback(cotangent)[0]
    if name == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        return y, tape.gradient(y, x, output_gradients=cotangent)
    import torch

    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        y = fn(x)
        (grad,) = torch.autograd.grad(y, x, grad_outputs=cotangent)
    return y.detach(), grad


def jvp(fn, primals, tangents):
    """`keras.ops.jvp(fn, primals, tangents)`: `(fn(*primals), J tangents)`, forward mode.

    On PyTorch, `scaled_dot_product_attention`'s fused CPU and GPU kernels
    have no forward-mode derivative, so inside `fn` it takes its math path
    (the same attention as plain matmuls and a softmax).
    """
    if keras.backend.backend() == "torch":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            return keras.ops.jvp(fn, primals, tangents)
    return keras.ops.jvp(fn, primals, tangents)


def no_grad():
    """Context for inference loops: on PyTorch, stop autograd from recording.

    Without it, a sampling loop over a model whose variables require grad
    builds a graph through every step and grows memory with the step count.
    JAX and TensorFlow record nothing outside their gradient transforms.
    """
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def inference_in_chunks(function, x, batch_size=None):
    """`function(x)` without autograd, or with `batch_size`, concatenated over batches of that size.

    For the autoencoder's and the Inception network's inference calls: on
    PyTorch no graph is recorded (`no_grad`), so memory is bounded by one
    chunk's activations. `function` may return a tensor or a structure of them.
    """
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
    with no_grad():
        if batch_size is None:
            return function(x)
        total = x.shape[0]
        if total is None:
            raise ValueError("`batch_size` needs inputs with a known batch size.")
        parts = [function(x[start : start + batch_size]) for start in range(0, total, batch_size)]
        return keras.tree.map_structure(lambda *chunks: keras.ops.concatenate(chunks, axis=0), *parts)
