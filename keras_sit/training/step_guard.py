"""Training never corrupts the weights: a bad batch's update is not applied.

Streamed data (generators, `PyDataset`, `DataLoader`, `tf.data` values)
cannot be checked before `fit`, and a single batch with NaN, Inf or a label
outside the embedding table would turn every weight into NaN (or crash the
embedding gather). So every training step checks itself, inside the
compiled step, on every backend:

- `SiT.call` clamps the labels before the gather; `SiT.compute_loss` turns
  the loss into NaN when they were not all in `[0, num_classes)`, or when an
  earlier step of this `fit` was bad.
- SiT's train step (`keras_sit.backend.train_step`) applies the optimizer's
  update only when every gradient is finite; weights, slots, EMA and the
  iteration count stay as they were otherwise. It hands whether it applied
  the update to `compute_metrics` as `y_pred["applied"]`.
- `StepRecord` (a metric, so that its state is threaded through the
  compiled step like Keras' own) keeps the first bad step and why.
- `StopOnBadStep` stops `fit` at the end of the batch whose loss is not
  finite, and `SiT.fit` then raises the recorded error.

Once one step is bad, every later step of the same `fit` is skipped too
(its loss is NaN), so with `steps_per_execution > 1` the steps that follow
the bad one in the same execution change nothing either.
"""

import contextlib
import math

import keras
from keras import ops

# Reasons a step is skipped, as stored in `StepRecord.reason`.
LABELS_OUT_OF_RANGE = 1
NON_FINITE_LOSS = 2
NON_FINITE_GRADIENTS = 3


class StepRecord(keras.metrics.Metric):
    """The first step of a `fit` (or `evaluate`) call whose batch was bad, and why.

    A record, not an average: Keras resets metrics at every epoch, this one
    only on `restart()`, so a bad step is still known after the epoch ends.
    Its `result()` is empty, so it adds nothing to the logs.
    """

    def __init__(self, name="step_record", **kwargs):
        super().__init__(name=name, **kwargs)
        # Every replica agrees on these values (the flags are all-reduced), so keep one copy.
        variable = {"shape": (), "initializer": "zeros", "dtype": "int32", "aggregation": "only_first_replica"}
        self.steps = self.add_variable(name="steps", **variable)
        self.bad_step = self.add_variable(name="bad_step", **variable)  # 1-based; 0: none
        self.reason = self.add_variable(name="reason", **variable)

    def update_state(self, applied, labels_valid, outputs_finite):
        step = self.steps.value + 1
        newly_bad = ops.logical_and(ops.logical_not(applied), ops.equal(self.bad_step.value, 0))
        reason = ops.where(
            labels_valid, ops.where(outputs_finite, NON_FINITE_GRADIENTS, NON_FINITE_LOSS), LABELS_OUT_OF_RANGE
        )
        self.steps.assign(step)
        self.bad_step.assign(ops.where(newly_bad, step, self.bad_step.value))
        self.reason.assign(ops.where(newly_bad, ops.cast(reason, "int32"), self.reason.value))

    @property
    def halted(self):
        return ops.greater(self.bad_step, 0)

    def reset_state(self):
        pass  # see the class docstring

    def restart(self):
        for variable in self.variables:
            variable.assign(ops.zeros((), "int32"))

    def result(self):
        return {}

    @contextlib.contextmanager
    def checking(self, what):
        """Record afresh for the call `what` (`"fit"`, ...) in the block; on leaving it, raise the
        `ValueError` describing its first bad step, if there was one."""
        self.restart()
        yield
        error = self.error(what)
        if error is not None:
            raise error

    def error(self, what):
        """A `ValueError` describing the recorded bad step of `what`, or None."""
        bad_step = int(ops.convert_to_numpy(self.bad_step))
        if bad_step == 0:
            return None
        reason = int(ops.convert_to_numpy(self.reason))
        problem = {
            LABELS_OUT_OF_RANGE: "its labels are not all in [0, num_classes)",
            NON_FINITE_LOSS: "its loss is NaN or Inf (the batch holds NaN or Inf, or the network's output overflowed)",
            NON_FINITE_GRADIENTS: "its gradients hold NaN or Inf",
        }[reason]
        if what == "fit":
            return ValueError(
                f"`fit` stopped at training step {bad_step} of this call: {problem}. That step and the ones after "
                "it were not applied, so the weights and the optimizer state are those before it: fix the data "
                "and call `fit` again."
            )
        if what == "train_on_batch":
            return ValueError(f"`train_on_batch`: the batch is bad, so it was not applied: {problem}.")
        return ValueError(f"`{what}`: batch {bad_step} is bad: {problem}.")


class StopOnBadStep(keras.callbacks.Callback):
    """Stops `fit` at the end of a batch whose loss is not finite (a bad step)."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True
