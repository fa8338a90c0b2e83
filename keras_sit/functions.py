"""The seed's functional API, one function each, with the seed's names.

These are thin, documented entry points to the formulas that the model itself
uses: `SiT`'s training step calls `sample_interpolant_time`, the path's
`interpolate`/`velocity` (which `linear_*`/`cosine_*` below also call) and
`sit_loss`, so each formula lives in exactly one place.
"""

import keras
from keras import ops

from keras_sit.paths import CosinePath, LinearPath
from keras_sit.validation import (
    check_bool,
    check_image_shape,
    check_per_example,
    check_positive_int,
    check_same_shape,
    check_seed,
    shape_of,
)

_LINEAR = LinearPath()
_COSINE = CosinePath()


def linear_interpolant(x, noise, t):
    """`(1 - t) x + t noise`; `t` has shape `[B]`."""
    return _LINEAR.interpolate(x, noise, t)


def linear_velocity(x, noise):
    """Velocity of the linear path, `noise - x` (independent of `t`)."""
    return _LINEAR.velocity(x, noise, ops.zeros((ops.shape(x)[0],), dtype=x.dtype))


def cosine_interpolant(x, noise, t):
    """`cos(pi t / 2) x + sin(pi t / 2) noise`; `t` has shape `[B]`."""
    return _COSINE.interpolate(x, noise, t)


def cosine_velocity(x, noise, t):
    """`-(pi/2) sin(pi t / 2) x + (pi/2) cos(pi t / 2) noise`."""
    return _COSINE.velocity(x, noise, t)


def sample_interpolant_time(batch_size, seed=None, dtype="float32"):
    """One `t ~ U(0, 1)` per example, shape `[batch_size]`.

    `seed` is an int, a `keras.random.SeedGenerator` (use one under `jit`, so
    every step draws fresh values) or None.
    """
    if not ops.is_tensor(batch_size):  # a dynamic batch size (a tensor) has no value to check here
        check_positive_int("batch_size", batch_size)
    check_seed(seed, allow_generator=True)
    return keras.random.uniform((batch_size,), minval=0.0, maxval=1.0, dtype=dtype, seed=seed)


def sit_loss(pred_velocity, target_velocity, weight=None):
    """Mean squared error over every value, computed in float32.

    The same as the official per-example `mean_flat` followed by the batch
    mean, since every example has the same size. `weight` (shape `[B]`)
    weights each example's mean, for score/noise objectives.
    """
    check_same_shape("target_velocity", target_velocity, "pred_velocity", pred_velocity)
    if weight is not None:
        check_per_example("weight", weight, shape_of(pred_velocity)[0])
    error = ops.square(ops.subtract(ops.cast(pred_velocity, "float32"), ops.cast(target_velocity, "float32")))
    if weight is None:
        return ops.mean(error)
    per_example = ops.mean(ops.reshape(error, (ops.shape(error)[0], -1)), axis=1)
    return ops.mean(ops.cast(weight, "float32") * per_example)


def output_size(input_shape=None, input_dim=None, patch_size=2, learn_sigma=False):
    """Values the final layer produces per token.

    `p * p * C` for images `(H, W, C)`, `p` for vectors; doubled with
    `learn_sigma` (the official layout, whose second half is discarded).
    """
    if (input_shape is None) == (input_dim is None):
        raise ValueError("Give exactly one of `input_shape` (H, W, C) and `input_dim` (int).")
    check_positive_int("patch_size", patch_size)
    check_bool("learn_sigma", learn_sigma)
    if input_shape is None:
        check_positive_int("input_dim", input_dim)
    else:
        check_image_shape("input_shape", input_shape)
    per_token = patch_size * patch_size * input_shape[-1] if input_shape is not None else patch_size
    return per_token * (2 if learn_sigma else 1)
