"""The exponential moving average of the weights that Keras' optimizers keep.

Keras' `use_ema` keeps the averages inside the optimizer, in a private list
aligned with the optimizer's variables, and has no public accessor (its own
`keras.callbacks.SwapEMAWeights` reads the list too). This module is the one
place in keras_sit that reads that private state; everything else asks it.
"""

import contextlib

import keras
from keras import ops

from keras_sit import backend


def ema_optimizer(optimizer):
    """The optimizer that holds the EMA (a `LossScaleOptimizer`'s inner one), or None."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    return optimizer if getattr(optimizer, "use_ema", False) else None


def has_ema(optimizer):
    """Whether `optimizer` holds an EMA: `use_ema` and at least one step taken."""
    optimizer = ema_optimizer(optimizer)
    return optimizer is not None and optimizer.built and int(ops.convert_to_numpy(optimizer.iterations)) > 0


def moving_averages(optimizer, variables):
    """`(variable, average)` for each of `variables` that has an average in `optimizer`."""
    optimizer = ema_optimizer(optimizer)
    averages = [optimizer._model_variables_moving_average[optimizer._get_variable_index(v)] for v in variables]
    return [(v, a) for v, a in zip(variables, averages) if a is not None]


def ema_pairs(optimizer, what):
    """`(weight, average)` for every trainable weight the optimizer averages.

    Raises a `ValueError` naming `what` needed the EMA when there is none.
    """
    if not has_ema(optimizer):
        raise ValueError(
            f"{what} needs an EMA of the weights, and this model has none: compile with `use_ema=True` "
            "(or an optimizer built with `use_ema=True`) and train at least one step."
        )
    return moving_averages(optimizer, ema_optimizer(optimizer)._trainable_variables)


@contextlib.contextmanager
def swapped_in(pairs):
    """Context in which each weight holds its average; the weights are put back bit for bit."""
    with backend.no_grad():
        saved = [ops.copy(variable.value) for variable, _ in pairs]
        for variable, average in pairs:
            variable.assign(average)
    try:
        yield
    finally:
        with backend.no_grad():
            for (variable, _), value in zip(pairs, saved):
                variable.assign(value)


def copy_in(pairs):
    """Overwrite each weight with its average, for good."""
    with backend.no_grad():
        for variable, average in pairs:
            variable.assign(average)


class KeepTrainingWeights(keras.callbacks.Callback):
    """Undo the EMA overwrite that ends Keras' `fit`, so that a second `fit` continues exactly.

    On every backend Keras' trainer ends `fit` with
    `optimizer.finalize_variable_values`, which copies the averages into the
    weights, then calls `on_train_end`. This callback, last in `SiT.fit`'s
    list, copies the training weights aside at the end of the last epoch
    (once every other callback has decided whether training stops); its
    `restorer`, first in the list, puts them back in `on_train_end`, before
    any other callback (e.g. `EarlyStopping(restore_best_weights=True)`)
    sees the weights. A `fit` that ends in an exception keeps Keras'
    behaviour: the weights hold the EMA.
    """

    def __init__(self):
        super().__init__()
        self.saved = None
        self.restorer = keras.callbacks.LambdaCallback(on_train_end=lambda logs: self.restore())

    def on_epoch_end(self, epoch, logs=None):
        if ema_optimizer(self.model.optimizer) is None:
            return
        if self.model.stop_training or epoch + 1 >= self.params.get("epochs", epoch + 1):
            with backend.no_grad():
                self.saved = [(v, ops.copy(v.value)) for v in self.model.trainable_variables]

    def restore(self):
        """Put the training weights saved at the end of the last epoch back, if any."""
        if self.saved is None:
            return
        with backend.no_grad():
            for variable, value in self.saved:
                variable.assign(value)
        self.saved = None
