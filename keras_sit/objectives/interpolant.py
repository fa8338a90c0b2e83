"""`InterpolantLoss`: the SiT objective, the network's prediction regressed on the path's target."""

import keras

from keras_sit.functions import sit_loss
from keras_sit.objectives.base import Objective


@keras.saving.register_keras_serializable(package="keras_sit")
class InterpolantLoss(Objective):
    """Mean squared error of the prediction against the interpolant's target.

    The target (velocity, score or noise) and the per-example weight come
    from the model's `keras_sit.Transport`, in the forward pass; this is
    `keras_sit.functions.sit_loss` over them. `SiT` owns one, first among its
    objectives; its term is the loss the official SiT trains.
    """

    def __init__(self, weight=1.0, name="interpolant_loss", **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)

    def term(self, batch, forward, training=False):
        return sit_loss(forward["pred"], forward["target"], forward.get("weight"))
