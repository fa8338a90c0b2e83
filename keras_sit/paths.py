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


def _broadcast_time(t, x):
    """Reshape per-example times `[B]` to `[B, 1, ..., 1]` in `x`'s dtype."""
    t = ops.cast(t, x.dtype)
    return ops.reshape(t, (-1,) + (1,) * (len(x.shape) - 1))


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
        t = _broadcast_time(t, x)
        return ops.add(ops.multiply(self.alpha(t), x), ops.multiply(self.beta(t), noise))

    def velocity(self, x, noise, t):
        """`d x_t / dt = alpha'(t) x + beta'(t) noise`: the velocity target."""
        t = _broadcast_time(t, x)
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


PATHS = {"linear": LinearPath, "cosine": CosinePath}


def get_path(path):
    """A `Path` from a name in `PATHS`, a `Path` instance, or a serialized config."""
    if isinstance(path, Path):
        return path
    if isinstance(path, dict):
        return keras.saving.deserialize_keras_object(path)
    if isinstance(path, str) and path.lower() in PATHS:
        return PATHS[path.lower()]()
    raise ValueError(f"`path` must be one of {sorted(PATHS)} or a `keras_sit.Path` instance; got {path!r}.")
