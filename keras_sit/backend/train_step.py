"""SiT's training step on each backend: Keras' own, with the update applied only when it is finite.

Keras has no hook between the gradients and their application, and a bad
batch (NaN, Inf, a label outside the table) must not reach the weights
(`keras_sit.training.step_guard`). So `SiT.train_step` is Keras' train step
of the backend, restated here with one change: the optimizer's update is
applied only if every gradient is finite (`apply_if`), and whether it was
is handed to `compute_metrics` as `y_pred["applied"]`. The optimizer is the
user's, untouched.

Keras documents overriding `train_step` per backend ("Customizing what
happens in `fit()`"); the steps below follow Keras 3.15's and read its private
`_compute_loss`, `_loss_tracker`, (JAX) `_update_metrics_variables` and
(TensorFlow) `_symbolic_build`, and writes `_initial_epoch` (`set_initial_epoch`);
on JAX, `values_kept_on_error` reads and restores the variables' `_value` and
Keras' `_jax_state`. These are the only such uses in keras_sit's training.
In a job of several processes, the PyTorch step averages the gradients over
the processes (as DDP), and two steps of Keras' TensorFlow trainer that fail
under the multi-worker strategy are restated (`per_worker_logs`,
`symbolic_build`). `tests/test_step_guard.py` checks
that good training gives the same weights as Keras' own step.
"""

import contextlib

import keras

from keras_sit.backend import all_replicas, apply_if, fused, processes


def guarded_train_step(model, *args):
    """`model`'s train step on this backend: `(state, data)` on JAX, `(data,)` on the others."""
    name = keras.backend.backend()
    if name == "jax":
        return _jax_train_step(model, *args)
    if name == "tensorflow":
        return _tensorflow_train_step(model, *args)
    return _torch_train_step(model, *args)


def update_is_finite(gradients):
    """Whether every gradient is finite, agreed by every replica."""
    return all_replicas(fused.all_finite([g for g in gradients if g is not None]))


def _batch_size(x):
    return keras.ops.shape(next(i for i in keras.tree.flatten(x) if i is not None))[0]


def _jax_train_step(model, state, data):
    import jax

    trainable, non_trainable, optimizer_variables, metrics_variables = state
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    grad_fn = jax.value_and_grad(model.compute_loss_and_updates, has_aux=True)
    (_, aux), gradients = grad_fn(
        trainable,
        non_trainable,
        metrics_variables,
        x,
        y,
        sample_weight,
        training=True,
        optimizer_variables=optimizer_variables,
    )
    unscaled_loss, y_pred, non_trainable, metrics_variables = aux
    applied = update_is_finite(gradients)
    new_trainable, new_optimizer = model.optimizer.stateless_apply(optimizer_variables, gradients, trainable)
    # A compiled JAX branch cannot update state: compute the update, keep the old values if it is bad.
    trainable = [keras.ops.where(applied, new, old) for new, old in zip(new_trainable, trainable)]
    optimizer_variables = [keras.ops.where(applied, new, old) for new, old in zip(new_optimizer, optimizer_variables)]
    logs, metrics_variables = model._update_metrics_variables(
        metrics_variables, unscaled_loss, x, y, {**y_pred, "applied": applied}, sample_weight
    )
    return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)


def _tensorflow_train_step(model, data):
    import tensorflow as tf
    from keras.src.losses.loss import unscale_loss_for_distribution

    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
        model._loss_tracker.update_state(unscale_loss_for_distribution(loss), sample_weight=_batch_size(x))
        loss = model.optimizer.scale_loss(loss)
    variables = model.trainable_weights
    gradients = tape.gradient(loss, variables)
    applied = _apply_if_finite(model.optimizer, gradients, variables)
    return per_worker_logs(model.compute_metrics(x, y, {**y_pred, "applied": applied}, sample_weight=sample_weight))


def per_worker_logs(logs):
    """Under TensorFlow's multi-worker strategy, each log as a `[1]` tensor.

    Keras 3.15 averages a step's logs across workers with
    `strategy.reduce("MEAN", value, axis=0)`, which fails on the scalars a
    step returns; a one-element vector averages to the scalar it should be.
    """
    if processes.tensorflow_multi_worker() is None:
        return logs
    return {name: keras.ops.reshape(value, (1,)) for name, value in logs.items()}


def symbolic_build(model, keras_build, iterator=None, data_batch=None):
    """Keras' TensorFlow `_maybe_symbolic_build`, which builds the model on a first batch before `fit`.

    Under the multi-worker strategy Keras 3.15 takes that batch by averaging
    it across workers, which fails on a structure of values; the build only
    needs shapes, so this takes this worker's own batch.
    """
    strategy = processes.tensorflow_multi_worker()
    if strategy is None or iterator is None:
        return keras_build(iterator=iterator, data_batch=data_batch)
    import tensorflow as tf

    for _, _, batches in iterator:
        data_batch = next(batches)
        break
    local = keras.tree.map_structure(
        lambda v: strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v,
        data_batch,
    )
    with strategy.scope():
        model._symbolic_build(data_batch=local)


def set_initial_epoch(model, epoch):
    """Make a `fit` that has begun start at `epoch`, as `keras.callbacks.BackupAndRestore` does.

    Keras' `fit` reads `model._initial_epoch` after the callbacks' `on_train_begin`.
    """
    model._initial_epoch = int(epoch)


def _torch_train_step(model, data):
    import torch

    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    y_pred = model(x, training=True)
    model.zero_grad()
    loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
    # The loss of the global batch: the mean over the processes of their equal slices' means.
    model._loss_tracker.update_state(processes.mean_over_processes(loss), sample_weight=_batch_size(x))
    model.optimizer.scale_loss(loss).backward()
    variables = model.trainable_weights[:]
    gradients = [v.value.grad for v in variables]
    processes.average_gradients(gradients)  # as DDP, in a job of several processes
    with torch.no_grad():
        applied = _apply_if_finite(model.optimizer, gradients, variables)
    return model.compute_metrics(x, y, {**y_pred, "applied": applied}, sample_weight=sample_weight)


def _apply_if_finite(optimizer, gradients, variables):
    """`optimizer.apply(gradients, variables)` if every gradient is finite; returns whether it was."""
    if not optimizer.built:  # its variables must exist outside the conditional branch
        optimizer.build(variables)
    applied = update_is_finite(gradients)
    apply_if(applied, optimizer.apply, (list(gradients), variables), list(variables) + list(optimizer.variables))
    return applied


@contextlib.contextmanager
def values_kept_on_error(model):
    """A `fit`/`evaluate` that raises leaves the model, and what it shares, able to sample, save and train.

    - Keras' JAX trainer moves every value (the model's, an autoencoder's
      that it holds, the optimizer's and the metrics') into the jitted state
      at the first step and reattaches them when the epoch ends. An error in
      between, such as a batch refused while the step is traced, would leave
      the model, and any layer it shares with another model, without values.
      So the optimizer is built first, as `fit` would, and the values at
      the start are kept by reference (JAX arrays are immutable; a step that
      runs donates them, and Keras then holds the newer state, which wins);
      a metric made during the call restarts from zero.
    - On every backend a call that raises drops the traced step functions:
      TensorFlow refuses to create the optimizer's variables in a
      `tf.function` whose first trace raised.
    """
    jax = keras.backend.backend() == "jax"
    optimizer = getattr(model, "optimizer", None)
    if jax and optimizer is not None and not optimizer.built:  # elsewhere Keras builds it in its strategy's scope
        optimizer.build(model.trainable_variables)
    kept = {id(variable): variable._value for variable in _jax_state_variables(model)} if jax else {}
    try:
        yield
    except BaseException:
        model.train_function = model.test_function = None
        if jax:
            _reattach(model, kept)
        raise


def _reattach(model, kept):
    """Give the variables Keras' JAX trainer detached their latest values, else those in `kept`."""
    import jax.numpy as jnp

    if getattr(model, "_jax_state", None) and not getattr(model, "_jax_state_synced", True):
        model.jax_state_sync()
    for variable in _jax_state_variables(model):
        if variable._value is None:
            value = kept.get(id(variable))
            usable = value is not None and not value.is_deleted()
            variable._value = value if usable else jnp.zeros(variable.shape, variable.dtype)


def _jax_state_variables(model):
    """The variables whose values Keras' JAX trainer moves into its state: model, optimizer, metrics."""
    optimizer = getattr(model, "optimizer", None)
    optimizer_variables = optimizer.variables if optimizer is not None else []
    return list({id(v): v for v in [*model.variables, *optimizer_variables, *model.metrics_variables]}.values())
