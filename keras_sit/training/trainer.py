"""`TrainingMixin`: SiT's side of `compile`, `fit` and `evaluate`.

Keras' `fit` drives training; this mixin gives it SiT's defaults (the
official AdamW, XLA where it is faster, an EMA on request), moves the labels
into the forward pass's inputs, runs the guarded train step
(`keras_sit.backend.train_step`) and records a bad step
(`keras_sit.training.step_guard`), and keeps the EMA in the optimizer rather
than in the weights (`keras_sit.training.ema`).

The host model provides `_check_inputs`, `_labels_in_range`, `num_classes`,
`extra_inputs`, `training_record` and `evaluation_record`.
"""

import contextlib

import keras
import numpy as np
from keras import ops

from keras_sit import backend
from keras_sit.backend import fused, processes
from keras_sit.backend.train_step import guarded_train_step, per_worker_logs, symbolic_build, values_kept_on_error
from keras_sit.distribution import feeds
from keras_sit.training import ema, step_guard
from keras_sit.training.optimizers import AdamW
from keras_sit.validation import (
    check_bool,
    check_finite,
    check_label_values,
    check_number,
    element_spec_inputs,
    in_memory,
)

EMA_DECAY = 0.9999  # the official SiT's EMA decay


class TrainingMixin:
    """The training methods of `SiT` (see the module docstring)."""

    def compile(self, optimizer=None, loss=None, jit_compile="auto", use_ema=False, ema_decay=None, **kwargs):
        """Like `keras.Model.compile`; the optimizer defaults to the official
        AdamW (learning rate 1e-4, no weight decay) as `keras_sit.AdamW`:
        Keras' AdamW with fused kernels on PyTorch. The loss is SiT's own.

        `jit_compile="auto"` compiles the step with XLA on JAX and TensorFlow
        and runs it eager on PyTorch. Keras' own "auto" leaves XLA off for
        TensorFlow on a CPU-only machine, where XLA trains SiT about 1.6x
        faster in float32 (docs/performance.md). A model computing in
        bfloat16 on a CPU trains on TensorFlow without XLA: oneDNN's graph
        kernels use the CPU's bf16 instructions, XLA's do not. Under a
        `tf.distribute` strategy with several replicas "auto" stays Keras' choice.

        `use_ema=True` makes the default optimizer keep an exponential moving
        average of the weights (Keras' `use_ema`, `ema_momentum=ema_decay`,
        default 0.9999 as the official SiT); `generate`, `encode` and
        `log_likelihood` then sample with it. A custom optimizer takes these
        options itself: `keras_sit.AdamW(..., use_ema=True, ema_momentum=0.9999)`.
        """
        if loss is not None:
            raise ValueError("`loss` must be None: SiT computes its own objective (see `SiT.compute_loss`).")
        check_bool("use_ema", use_ema)
        if ema_decay is not None and not use_ema:
            raise ValueError(f"`ema_decay` ({ema_decay!r}) needs `use_ema=True`.")
        decay = check_number("ema_decay", EMA_DECAY if ema_decay is None else ema_decay, 0.0, 1.0)
        if use_ema and optimizer is not None:
            raise ValueError(
                "`use_ema` configures the default optimizer only; pass it to your optimizer instead, e.g. "
                f"`keras_sit.AdamW(1e-4, weight_decay=0.0, use_ema=True, ema_momentum={decay})`."
            )
        if optimizer is None:
            optimizer = AdamW(
                learning_rate=1e-4, weight_decay=0.0, **({"use_ema": True, "ema_momentum": decay} if use_ema else {})
            )
        resolved = backend.auto_jit_compile(self.dtype_policy.compute_dtype) if jit_compile == "auto" else jit_compile
        super().compile(optimizer=optimizer, jit_compile=resolved, **kwargs)
        self._jit_compile_argument = jit_compile

    def get_compile_config(self):
        config = super().get_compile_config()
        if not config:  # not compiled
            return config
        # Keras saves the value "auto" resolved to on this backend (True on JAX); keep the
        # argument, so that a model saved under JAX does not switch on torch.compile when
        # loaded under PyTorch.
        config = {**config, "jit_compile": getattr(self, "_jit_compile_argument", config.get("jit_compile"))}
        return _portable_compile_config(config)

    def compile_from_config(self, config):
        # Keras skips this for models that override `compile`; a loaded SiT
        # must come back compiled, with its optimizer state.
        self.compile(**keras.saving.deserialize_keras_object(_portable_compile_config(config)))
        self.optimizer.build(self.trainable_variables)

    def fit(self, x=None, y=None, *args, validation_data=None, **kwargs):
        """`keras.Model.fit`, except that with an EMA the training weights stay.

        Keras' `fit` ends by overwriting the weights with their EMA
        (`optimizer.finalize_variable_values`), so a second `fit` would
        silently restart from the average. SiT keeps the training weights (a
        second `fit` continues exactly) and the EMA in the optimizer, where
        `generate` finds it; `apply_ema()` copies it into the weights
        (`keras_sit.training.ema.KeepTrainingWeights`).

        In a job of several processes (`keras_sit.distribution.initialize`),
        `batch_size` is the global batch and each process trains on its
        slice of it (`keras_sit.distribution.feeds`); on PyTorch the
        processes first take the chief's weights, as DDP does. Only the
        chief shows a progress bar unless `verbose` is given.
        """
        self._check_fit_data(x, y)
        if isinstance(validation_data, (tuple, list)) and validation_data:
            self._check_fit_data(validation_data[0], validation_data[1] if len(validation_data) > 1 else None)
        elif validation_data is not None:
            self._check_fit_data(validation_data, None)
        if feeds.slices_by_process():
            x, y, kwargs, validation_data = self._process_feeds(x, y, args, kwargs, validation_data)
            args = ()
        if processes.process_index() > 0 and len(args) < 3 and "verbose" not in kwargs:
            kwargs["verbose"] = 0  # one progress bar per job: the chief's
        processes.synchronize_variables(self.variables)
        keeper = ema.KeepTrainingWeights()
        callbacks = [keeper.restorer, step_guard.StopOnBadStep(), *(kwargs.pop("callbacks", None) or []), keeper]
        with self.training_record.checking("fit"), _lost_peers_named(), values_kept_on_error(self):
            return super().fit(x, y, *args, validation_data=validation_data, callbacks=callbacks, **kwargs)

    def _process_feeds(self, x, y, args, kwargs, validation_data):
        """`fit`'s inputs as this process's slices of the global batches (`keras_sit.distribution.feeds`)."""
        kwargs = {**dict(zip(feeds.FIT_POSITIONAL, args)), **kwargs}
        if kwargs.get("validation_split"):
            raise ValueError(
                "`validation_split` is not supported in a job of several processes; pass `validation_data`."
            )
        seed = processes.broadcast(np.random.randint(2**31 - 1))  # one order of examples for every process
        batch_size = kwargs.pop("batch_size", None)
        x, y, batch_size, shuffle = feeds.process_feed(x, y, batch_size, kwargs.pop("shuffle", True), seed)
        kwargs.update(batch_size=batch_size, shuffle=shuffle)
        if validation_data is not None:
            if isinstance(validation_data, (tuple, list)):
                validation = feeds.process_feed(*validation_data[:2], kwargs.pop("validation_batch_size", None)
                                                or batch_size or 32, False, seed)  # fmt: skip
            else:
                validation = feeds.process_feed(validation_data, None, None, False, seed)
            validation_data = validation[0] if validation[1] is None else validation[:2]
            kwargs["validation_batch_size"] = validation[2]
        return x, y, kwargs, validation_data

    def train_on_batch(self, x, y=None, *args, **kwargs):
        """`keras.Model.train_on_batch`; a bad batch is not applied and raises a `ValueError`."""
        with self.training_record.checking("train_on_batch"):
            return super().train_on_batch(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate`; a batch with NaN, Inf or labels outside
        `[0, num_classes)` raises a `ValueError` naming it."""
        self._check_fit_data(x, y)
        with self.evaluation_record.checking("evaluate"), values_kept_on_error(self):
            return super().evaluate(x, y, *args, **kwargs)

    def _check_fit_data(self, x, y):
        """Check arrays, tensors and `tf.data` element specs before Keras starts.

        Bad data is best refused before Keras starts. Other inputs
        (generators, `PyDataset`, `DataLoader`) are checked in the step
        itself; on JAX, `values_kept_on_error` then gives the
        variables back the values Keras detached for the step.
        """
        x, y = element_spec_inputs(x, y, self.extra_inputs)
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            self._check_inputs(x, y)
            if x.shape[0] == 0:
                raise ValueError(f"`x` must hold at least one example; got shape {tuple(x.shape)}.")
            # In-memory data can be checked by value too: NaN or Inf would turn every weight into
            # NaN, and a label outside the table would read past it (NaN on JAX, a crash elsewhere).
            check_finite(x, "x")
            if y is not None and self.num_classes is not None and in_memory(y):
                check_label_values(y, self.num_classes, "labels")

    def _labels_into_x(self, data):
        """Keras hands labels over as `y`; the forward pass needs them in `x`."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if y is not None:
            x = {**x, "labels": y} if isinstance(x, dict) else {"x": x, "labels": y}
        return (x, None, sample_weight)

    def train_step(self, *args):
        # One method for every backend: JAX passes `(state, data)`, the others `(data,)`.
        return guarded_train_step(self, *args[:-1], self._labels_into_x(args[-1]))

    def test_step(self, *args):
        return per_worker_logs(super().test_step(*args[:-1], self._labels_into_x(args[-1])))

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Called by Keras' TensorFlow trainer only.
        return symbolic_build(self, super()._maybe_symbolic_build, iterator=iterator, data_batch=data_batch)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # Record the step: a train step says whether it applied its update (`y_pred["applied"]`).
        labels_valid = backend.all_replicas(self._labels_in_range(x))
        outputs_finite = backend.all_replicas(fused.all_finite([y_pred["pred"], y_pred["target"]]))
        if "applied" in y_pred:
            self.training_record.update_state(y_pred["applied"], labels_valid, outputs_finite)
        else:
            applied = ops.logical_and(labels_valid, outputs_finite)
            self.evaluation_record.update_state(applied, labels_valid, outputs_finite)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    @property
    def has_ema(self):
        """Whether the optimizer holds an EMA of the weights (`use_ema` and at least one step)."""
        return ema.has_ema(getattr(self, "optimizer", None))

    def ema_weights(self):
        """Context in which the trainable weights hold their EMA.

        The training weights are copied aside and put back bit for bit on
        exit. `generate`, `encode` and `log_likelihood` use it by default;
        use it for anything else that should see the EMA, e.g.
        `with model.ema_weights(): model.evaluate(x)`.
        """
        return ema.swapped_in(ema.ema_pairs(getattr(self, "optimizer", None), "`ema_weights()`"))

    def apply_ema(self):
        """Overwrite the training weights with their EMA, for good.

        What Keras' `fit` does at its end (SiT's `fit` does not, see `fit`):
        e.g. before exporting the weights, or to keep training from the EMA.
        """
        ema.copy_in(ema.ema_pairs(getattr(self, "optimizer", None), "`apply_ema()`"))


@contextlib.contextmanager
def _lost_peers_named():
    """Re-raise a backend's report of a process of the job that stopped as one clear `RuntimeError`."""
    try:
        yield
    except Exception as error:
        if not processes.lost_peer(error):
            raise
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RuntimeError(
            f"Process {processes.process_index()} of {processes.process_count()}: another process of the job "
            f"stopped or cannot be reached, so `fit` cannot go on ({type(error).__name__}: {first_line[:300]}). "
            "Restart every process of the job; `keras_sit.callbacks.BackupAndRestore` resumes from its last backup."
        ) from error


def _portable_compile_config(config):
    """Name the optimizer by its public class, not the backend's subclass.

    Under PyTorch, `keras.optimizers.Adam()` is an instance of a torch
    subclass whose module Keras saves; loaded under JAX or TensorFlow it
    would run torch code.
    """
    optimizer = config.get("optimizer")
    if isinstance(optimizer, dict) and str(optimizer.get("module", "")).startswith("keras.src.backend."):
        config = {**config, "optimizer": {**optimizer, "module": "keras.optimizers", "registered_name": None}}
    return config
