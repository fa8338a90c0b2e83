"""`Objective`: one term of SiT's training loss.

SiT's loss is a weighted sum of objectives that the model owns: the
interpolant loss (`InterpolantLoss`, always first) and any added with
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
objective but the interpolant loss is logged apart under its name.
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

    def __init__(self, weight=1.0, **kwargs):
        super().__init__(**kwargs)
        self.weight = check_number("weight", weight, low=0.0)

    def build(self, token_shape=None):
        self.built = True

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
