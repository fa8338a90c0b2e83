"""`InterpolantLoss`: the SiT objective, the network's prediction regressed on the path's target."""

import keras
from keras import ops

from keras_sit import backend
from keras_sit.functions import sit_loss
from keras_sit.objectives.base import Objective


@keras.saving.register_keras_serializable(package="keras_sit")
class InterpolantLoss(Objective):
    """Mean squared error of the prediction against the interpolant's target.

    The primary objective of every SiT that is not given another. Its
    forward pass draws `t` and the noise, builds `x_t` on the model's path
    and runs the network; the target (velocity, score or noise) and the
    per-example weight come from the model's `keras_sit.Transport`. Its term
    is `keras_sit.functions.sit_loss` over them: the loss the official SiT
    trains.
    """

    primary = True

    def __init__(self, weight=1.0, name="interpolant_loss", **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)

    def forward(self, model, x, labels, training=False):
        transport, batch = model.transport, ops.shape(x)[0]
        # Under tf.distribute, this replica's slice of the draws for the global batch.
        t = backend.per_replica_draw(batch, lambda n: transport.sample_time(n, seed=model.seed_generator))
        noise = backend.per_replica_draw(
            batch, lambda n: keras.random.normal((n, *ops.shape(x)[1:]), seed=model.seed_generator)
        )
        x_t = transport.path.interpolate(x, noise, t)
        inputs = {"x_t": x_t, "t": t}
        if labels is not None:
            inputs["labels"] = model.drop_labels(labels) if training else labels
        pred, tokens = model.network(inputs, training=training, token_depths=model.token_depths)
        outputs = {"pred": pred, "target": transport.target(x, noise, t), "t": t, "noise": noise, "x_t": x_t}
        weight = transport.example_weight(t)
        if weight is not None:
            outputs["weight"] = weight
        if tokens:
            outputs["tokens"] = tokens
        return outputs

    def term(self, batch, forward, training=False):
        return sit_loss(forward["pred"], forward["target"], forward.get("weight"))
