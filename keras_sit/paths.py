"""Interpolation paths `I(t) = alpha(t) x + beta(t) eps`.

Time convention (fixed for the whole library): `t = 0` is data and `t = 1` is
noise, so sampling integrates from `t = 1` down to `t = 0`. The official SiT
code runs the other way; its `alpha_t`/`sigma_t` at time `1 - t` are our
`alpha(t)`/`beta(t)`, and its velocities have the opposite sign.

A path only knows its coefficients; `interpolate` and `velocity` are the one
place where they meet the data, and the training step, the seed's functions
(`keras_sit.functions`) and the samplers all go through them.
"""

import math

import keras
from keras import ops

from keras_sit.validation import check_number, check_per_example, check_same_shape


def per_example(values, x):
    """Per-example values `[B]` reshaped to `[B, 1, ..., 1]`, to broadcast against `x`."""
    return ops.reshape(values, (-1,) + (1,) * (len(x.shape) - 1))


def broadcast_time(t, x):
    """Per-example times `[B]` (or one scalar time) as `[B, 1, ..., 1]` in `x`'s dtype."""
    check_per_example("t", t, x.shape[0])
    return per_example(ops.cast(t, x.dtype), x)


def time_vector(t, x):
    """A time for each example of `x`, `[B]` in `x`'s dtype.

    `t` is a scalar (Python or tensor: one time for the whole batch) or
    already `[B]`.
    """
    if len(getattr(t, "shape", ())) == 0:
        return ops.cast(t, x.dtype) * ops.ones((ops.shape(x)[0],), x.dtype)
    check_per_example("t", t, x.shape[0])
    return ops.cast(t, x.dtype)


@keras.saving.register_keras_serializable(package="keras_sit")
class Path:
    """Base class: subclass it and define `alpha`, `beta`, `d_alpha`, `d_beta`.

    Each takes a tensor `t` and returns a tensor of the same shape. Register a
    subclass with `keras.saving.register_keras_serializable` (and give it a
    `get_config` if it has arguments) so that models using it save and load.
    """

    def alpha(self, t):
        raise NotImplementedError

    def beta(self, t):
        raise NotImplementedError

    def d_alpha(self, t):
        raise NotImplementedError

    def d_beta(self, t):
        raise NotImplementedError

    def interpolate(self, x, noise, t):
        """`x_t = alpha(t) x + beta(t) noise`, with `t` of shape `[B]`."""
        check_same_shape("noise", noise, "x", x)
        t = broadcast_time(t, x)
        return ops.add(ops.multiply(self.alpha(t), x), ops.multiply(self.beta(t), noise))

    def velocity(self, x, noise, t):
        """`d x_t / dt = alpha'(t) x + beta'(t) noise`: the velocity target."""
        check_same_shape("noise", noise, "x", x)
        t = broadcast_time(t, x)
        return ops.add(ops.multiply(self.d_alpha(t), x), ops.multiply(self.d_beta(t), noise))

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __repr__(self):
        return f"{type(self).__name__}()"


@keras.saving.register_keras_serializable(package="keras_sit")
class LinearPath(Path):
    """`x_t = (1 - t) x + t eps`; velocity `eps - x` (official `Linear`/ICPlan)."""

    def alpha(self, t):
        return 1.0 - t

    def beta(self, t):
        return t

    def d_alpha(self, t):
        return ops.full_like(t, -1.0)

    def d_beta(self, t):
        return ops.ones_like(t)


@keras.saving.register_keras_serializable(package="keras_sit")
class CosinePath(Path):
    """`x_t = cos(pi t / 2) x + sin(pi t / 2) eps` (official `GVP`), variance preserving."""

    def alpha(self, t):
        return ops.cos(t * (math.pi / 2))

    def beta(self, t):
        return ops.sin(t * (math.pi / 2))

    def d_alpha(self, t):
        return -(math.pi / 2) * ops.sin(t * (math.pi / 2))

    def d_beta(self, t):
        return (math.pi / 2) * ops.cos(t * (math.pi / 2))


@keras.saving.register_keras_serializable(package="keras_sit")
class VPPath(Path):
    """Variance-preserving path of the VP-SDE (Song et al.), official `VP`.

    `log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2` and
    `beta = sqrt(1 - alpha^2)`, i.e. `d log alpha / dt = -b(t) / 2` with
    `b(t) = beta_min + t (beta_max - beta_min)`. Upstream names the two
    constants `sigma_min`/`sigma_max`; they are beta_min/beta_max. At `t = 1`
    alpha is exp(-5.025) = 6.6e-3, not exactly 0.
    """

    def __init__(self, beta_min=0.1, beta_max=20.0):
        self.beta_min = check_number("beta_min", beta_min, low=0.0)
        self.beta_max = check_number("beta_max", beta_max, low=self.beta_min, include_low=False)

    def _rate(self, t):
        return ops.add(self.beta_min, ops.multiply(t, self.beta_max - self.beta_min))

    def alpha(self, t):
        t = ops.convert_to_tensor(t)
        return ops.exp(-0.25 * t * t * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min)

    def beta(self, t):
        return ops.sqrt(1.0 - ops.square(self.alpha(t)))

    def d_alpha(self, t):
        return ops.multiply(-0.5 * self._rate(t), self.alpha(t))

    def d_beta(self, t):
        alpha = self.alpha(t)
        return ops.multiply(0.5 * self._rate(t), ops.square(alpha) / ops.sqrt(1.0 - ops.square(alpha)))

    def get_config(self):
        return {"beta_min": self.beta_min, "beta_max": self.beta_max}

    def __repr__(self):
        return f"VPPath(beta_min={self.beta_min}, beta_max={self.beta_max})"


PATHS = {"linear": LinearPath, "cosine": CosinePath, "vp": VPPath}


def get_path(path):
    """A `Path` from a name in `PATHS`, a `Path` instance, or a serialized config."""
    if isinstance(path, Path):
        return path
    if isinstance(path, dict):
        return keras.saving.deserialize_keras_object(path)
    if isinstance(path, str) and path.lower() in PATHS:
        return PATHS[path.lower()]()
    raise ValueError(f"`path` must be one of {sorted(PATHS)} or a `keras_sit.Path` instance; got {path!r}.")
