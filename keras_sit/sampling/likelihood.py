"""`log p(x)` under the probability-flow ODE, with an exact or Hutchinson divergence."""

import math

import keras
from keras import ops

from keras_sit import backend  # the divergence's vector-Jacobian product
from keras_sit.sampling.registry import Problem, get_sampler
from keras_sit.sampling.settings import LOG_LIKELIHOOD, SamplingSettings, call_defaults

_DEFAULTS = call_defaults(LOG_LIKELIHOOD)


def log_likelihood(
    velocity,
    x,
    num_steps=_DEFAULTS["num_steps"],
    method=_DEFAULTS["sampler"],
    probes=None,
    t_start=0.0,
    t_end=1.0,
    control=_DEFAULTS["adaptive_control"],
):
    """`log p(x)` in nats per example under the probability-flow ODE.

    Integrates `dx/dt = v(x, t)` from data (`t_start`) to noise (`t_end`)
    together with `d delta / dt = div v`, then
    `log p(x) = log N(x(t_end); 0, I) + delta(t_end)`. The divergence is exact
    (one vector-Jacobian product per dimension) when `probes` is None, else
    Hutchinson's estimate `mean_k z_k^T J z_k` with the given probes
    `[K, B, *data]`, fixed for the whole solve so the ODE stays deterministic.
    `method` is a reversible sampler's name (a fixed-step method or
    `"dopri5"`, with `dopri5`'s `control`); returns `(log_p, nfe)`.
    """
    options = {"sampler": method, "num_steps": num_steps, "adaptive_control": control}
    settings = SamplingSettings.for_call(LOG_LIKELIHOOD, options)
    x = ops.cast(ops.convert_to_tensor(x), "float32")
    batch, data_shape = x.shape[0], tuple(x.shape[1:])
    dim = int(math.prod(data_shape))
    if probes is None:
        eye = ops.eye(dim, dtype=x.dtype)
        probes = [ops.broadcast_to(ops.reshape(eye[i], (1, *data_shape)), x.shape) for i in range(dim)]
        scale = 1.0
    else:
        probes = [ops.convert_to_tensor(p, x.dtype) for p in probes]
        scale = 1.0 / len(probes)

    def augmented(state, t):
        z = ops.reshape(state[:, :dim], x.shape)
        total = 0.0
        for probe in probes:
            v, pulled = backend.vjp(lambda z: velocity(z, t), z, probe)
            total = total + ops.sum(ops.reshape(pulled * probe, (batch, -1)), axis=1)
        return ops.concatenate([ops.reshape(v, (batch, dim)), scale * total[:, None]], axis=1)

    state = ops.concatenate([ops.reshape(x, (batch, dim)), ops.zeros((batch, 1), x.dtype)], axis=1)
    problem = Problem(augmented, t_start, t_end, settings.num_steps, settings)
    state, nfe = get_sampler(settings.sampler).solve(problem, state, None)
    z, delta = state[:, :dim], state[:, dim]
    prior = -0.5 * ops.sum(ops.square(z), axis=1) - 0.5 * dim * math.log(2 * math.pi)
    return prior + delta, nfe


PROBES = ("rademacher", "gaussian")


def draw_probes(kind, num_probes, shape, seed):
    """Hutchinson probes `[K, *shape]`: `"rademacher"` (+-1) or `"gaussian"`."""
    if kind == "gaussian":
        return keras.random.normal((num_probes, *shape), seed=seed)
    if kind == "rademacher":
        return 2.0 * ops.cast(keras.random.uniform((num_probes, *shape), seed=seed) < 0.5, "float32") - 1.0
    raise ValueError(f"`probe` must be 'rademacher' or 'gaussian'; got {kind!r}.")
