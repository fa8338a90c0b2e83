"""`Objective`: one term of SiT's training loss.

SiT's loss is a weighted sum of objectives that the model owns: one primary
objective, first, which draws the training forward pass (`InterpolantLoss`
unless another is given, e.g. `MeanFlow`), and any further terms added with
`SiT(objectives=[...])`. Each objective is a Keras layer, so it can own
trainable layers (a projector), which `fit` trains and `save` stores with
the model. It declares what it reads:

- `extra_inputs`: per-example inputs it needs besides `x` and `labels`,
  which the batch then carries as keys of a dict
  (`fit({"x": x, "features": f}, labels)`);
- `token_depths`: the backbone blocks whose output tokens it reads (depth
  `k` is the output of the k-th block), which the backbone returns from the
  same forward pass (`SiTBackbone.call_with_tokens`).

`SiT.compute_loss` adds `weight * objective.term(...)` for each, and every
objective but the primary one is logged apart under its name.

A primary objective (`primary = True`) also implements `forward`: what
`SiT.call` returns, i.e. the draws of the step (times, noise, label drops),
the network's prediction and its target. A network that also takes the
start `r` of a time interval is asked for with `interval_embedding = True`,
and `default_sampler` names the sampler that `generate` then uses by default.
"""

import keras

from keras_sit.validation import check_number


class Objective(keras.layers.Layer):
    """Base class of SiT's loss terms; subclass it and override `term`.

    Args:
        weight: the term's factor in the total loss.
        **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`).

    `build(token_shape)` is called once by the model with `(num_tokens,
    hidden_size)` of the backbone's tokens, before training: create the
    objective's layers there.
    """

    extra_inputs = ()
    token_depths = ()
    primary = False
    interval_embedding = False
    default_sampler = None

    def __init__(self, weight=1.0, **kwargs):
        super().__init__(**kwargs)
        self.weight = check_number("weight", weight, low=0.0)

    def build(self, token_shape=None):
        self.built = True

    def check_model(self, model):
        """Raise a ValueError if this objective cannot train `model` (called when the model is built)."""

    def forward(self, model, x, labels, training=False):
        """The training forward pass of `model` on float32 `x` and int32 `labels` (or None).

        Only a primary objective implements it; it returns the dict that
        `term` receives as `forward` (see there), and must draw its
        randomness from `model.seed_generator`.
        """
        raise NotImplementedError(f"{type(self).__name__} is not a primary objective.")

    def term(self, batch, forward, training=False):
        """This objective's loss (a scalar, before `weight`).

        Args:
            batch: dict of the batch's per-example inputs: `"x"` (float32
                data), `"labels"` (or None) and every key of `extra_inputs`.
            forward: dict of the training forward pass: `"t"` `[B]`, `"noise"`
                and `"x_t"` like `x`, the backbone's prediction `"pred"` (in
                keras_sit's time), the interpolant's `"target"` and
                per-example `"weight"` (or None), and `"tokens"`, a dict from
                each of `token_depths` to the tokens `[B, N, hidden_size]`.
            training: whether this is a training step.
        """
        raise NotImplementedError(f"{type(self).__name__} must override `term`.")

    def get_config(self):
        return {**super().get_config(), "weight": self.weight}
