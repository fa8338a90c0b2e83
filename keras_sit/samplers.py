"""ODE and SDE integrators over `keras.ops`, usable with any drift `f(x, t)`.

Keras ships no ODE/SDE solvers, so they are written here. They know nothing
about SiT: `drift(x, t)` is any callable returning `dx/dt`, with `t` passed as
a `[B]` tensor. The library's time runs from `t = 1` (noise) to `t = 0` (data),
so sampling integrates with `t_start=1, t_end=0`; swapping them maps data to
noise (encoding).

Every loop is an `ops.fori_loop`: a compiled `lax.fori_loop` on JAX, a
`tf.while_loop` on TensorFlow, a Python loop on PyTorch. SDE noise is drawn for
all steps before the loop, because a `SeedGenerator` cannot be used inside a
JAX loop body.
"""

import math

import keras
from keras import ops

from keras_sit import backend  # the likelihood's vector-Jacobian product
from keras_sit.paths import per_example, time_vector
from keras_sit.validation import check_choice, check_positive_int


def _euler_step(drift, x, t, h):
    return x + h * drift(x, t)


def _midpoint_step(drift, x, t, h):
    return x + h * drift(x + 0.5 * h * drift(x, t), t + 0.5 * h)


def _heun_step(drift, x, t, h):
    k1 = drift(x, t)
    k2 = drift(x + h * k1, t + h)
    return x + 0.5 * h * (k1 + k2)


def _rk4_step(drift, x, t, h):
    """Classic fourth-order Runge-Kutta (torchdiffeq's `rk4` is the 3/8 rule)."""
    k1 = drift(x, t)
    k2 = drift(x + 0.5 * h * k1, t + 0.5 * h)
    k3 = drift(x + 0.5 * h * k2, t + 0.5 * h)
    k4 = drift(x + h * k3, t + h)
    return x + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


# name -> (step, model evaluations per step)
ODE_METHODS = {
    "euler": (_euler_step, 1),
    "midpoint": (_midpoint_step, 2),
    "heun": (_heun_step, 2),
    "rk4": (_rk4_step, 4),
}


def ode_nfe(method, num_steps):
    """Number of drift evaluations of a fixed-step ODE solve."""
    check_ode_method(method)
    check_positive_int("num_steps", num_steps)
    return ODE_METHODS[method][1] * num_steps


def _ode_interval(t_start, t_end, reverse):
    return (t_end, t_start) if reverse else (t_start, t_end)


def check_ode_method(method):
    if method not in ODE_METHODS:
        raise ValueError(f"`method` must be one of {sorted(ODE_METHODS)}; got {method!r}.")


def ode_step(drift, x, i, num_steps, method="euler", t_start=1.0, t_end=0.0):
    """Step `i` (an int or int tensor) of `integrate_ode`'s grid.

    Exposed so that a caller can run the same grid one compiled step at a
    time, e.g. to show progress or keep the trajectory.
    """
    check_ode_method(method)
    step, _ = ODE_METHODS[method]
    h = (t_end - t_start) / num_steps
    t = time_vector(t_start + ops.cast(i, "float32") * h, x)
    return step(drift, x, t, h)


def integrate_ode(drift, x, num_steps, method="euler", t_start=1.0, t_end=0.0, reverse=False):
    """Fixed-step solve of `dx/dt = drift(x, t)` from `t_start` to `t_end`.

    `method` is one of `ODE_METHODS` ("euler", "midpoint", "heun", "rk4");
    the cost is `ode_nfe(method, num_steps)` drift evaluations. `reverse=True`
    runs from `t_end` to `t_start` instead: with the defaults, data to noise
    (encoding).
    """
    check_ode_method(method)
    check_positive_int("num_steps", num_steps)
    t_start, t_end = _ode_interval(t_start, t_end, reverse)
    x = ops.convert_to_tensor(x)
    return ops.fori_loop(0, num_steps, lambda i, x: ode_step(drift, x, i, num_steps, method, t_start, t_end), x)


def euler(drift, x, num_steps, t_start=1.0, t_end=0.0, reverse=False):
    """Fixed-step Euler; see `integrate_ode`."""
    return integrate_ode(drift, x, num_steps, "euler", t_start, t_end, reverse)


# Dormand-Prince 5(4) tableau: nodes, stage weights, 5th-order weights, 5th-minus-4th weights.
_DOPRI_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_DOPRI_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_DOPRI_ERROR = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


DOPRI5_CONTROLS = ("batch", "example")


def dopri5(
    drift,
    x,
    t_start=1.0,
    t_end=0.0,
    atol=1e-6,
    rtol=1e-3,
    first_step=None,
    max_steps=1000,
    reverse=False,
    direction=None,
    control="batch",
):
    """Adaptive Dormand-Prince 5(4) from `t_start` to `t_end`.

    The error norm is the RMS of `err / (atol + rtol * max(|x|, |x_new|))`; a
    step is accepted when it is at most 1, and the next step is
    `h * clip(0.9 * norm^(-1/5), 0.2, 10)` (never shorter after an accepted
    step), as in `torchdiffeq`. `control` says over what the RMS is taken:

    - `"batch"` (upstream's `torchdiffeq.odeint`): over the whole batch, so
      the batch shares one time and step size and is accepted or rejected
      together; a sample then depends (within the tolerance) on its
      batch-mates.
    - `"example"`: over each example, each with its own time and step size;
      the loop runs until the slowest example has arrived, the others stand
      still. A sample does not depend on its batch-mates, at the price of
      drift evaluations for the whole batch at every attempt of any example.

    The last stage of an accepted step is the first of the next (FSAL), so
    an attempt costs 6 drift evaluations, plus 1 at the start.
    `first_step=None` picks the first step from the drift (Hairer's
    algorithm, as `torchdiffeq` does; 1 more evaluation). Returns `(x, nfe)`,
    `nfe` the drift evaluations (batched). `reverse=True` swaps `t_start` and
    `t_end`. The ends may be scalar tensors (one compilation for many
    intervals) if `direction` (+1 forward, -1 backward in time) is given.
    """
    check_choice("control", control, DOPRI5_CONTROLS)
    t_start, t_end = _ode_interval(t_start, t_end, reverse)
    x = ops.convert_to_tensor(x)
    if direction is None:
        direction = 1.0 if t_end > t_start else -1.0
    elif reverse:
        direction = -direction
    batch = ops.shape(x)[0]

    def rms(values):  # [B]: per example, or the batch's one value repeated
        mean_square = ops.mean(ops.reshape(ops.square(values), (batch, -1)), axis=1)
        if control == "batch":
            mean_square = ops.mean(mean_square) * ops.ones_like(mean_square)
        return ops.sqrt(mean_square)

    t = time_vector(t_start, x)
    k1 = drift(x, t)
    if first_step is None:
        h, nfe = _initial_step(drift, x, t, k1, direction, atol, rtol, rms), 2
    else:
        h, nfe = time_vector(direction * first_step, x), 1

    def cond(i, x, t, h, k1, nfe):
        remaining = ops.any(direction * (t_end - t) > 1e-7)
        return ops.logical_and(remaining, i < max_steps)

    def body(i, x, t, h, k1, nfe):
        h = direction * ops.minimum(direction * h, direction * (t_end - t))  # land on t_end
        hb = per_example(h, x)
        stages = [k1]
        for c, a in zip(_DOPRI_C[1:], _DOPRI_A[1:]):
            xi = x + hb * sum(aj * kj for aj, kj in zip(a, stages) if aj)
            stages.append(drift(xi, t + c * h))
        x_new = xi  # the last stage is taken at the 5th-order solution
        error = hb * sum(e * k for e, k in zip(_DOPRI_ERROR, stages) if e)
        norm = rms(error / (atol + rtol * ops.maximum(ops.abs(x), ops.abs(x_new))))
        active = direction * (t_end - t) > 1e-7
        accept = ops.logical_and(active, norm <= 1.0)
        x = ops.where(per_example(accept, x), x_new, x)
        k1 = ops.where(per_example(accept, x), stages[-1], k1)
        t = ops.where(accept, t + h, t)
        shrink = ops.where(norm <= 1.0, 1.0, 0.2)  # an accepted step is never followed by a shorter one
        factor = ops.clip(0.9 * ops.power(ops.maximum(norm, 1e-10), -0.2), shrink, 10.0)
        return i + 1, x, t, h * factor, k1, nfe + 6

    _, x, _, _, _, nfe = ops.while_loop(cond, body, (0, x, t, h, k1, nfe))
    return x, nfe


def _initial_step(drift, x, t, k1, direction, atol, rtol, rms):
    """Hairer's first step (Solving ODEs I, II.4), as `torchdiffeq`'s `_select_initial_step` for order 5."""
    scale = atol + rtol * ops.abs(x)
    d0, d1 = rms(x / scale), rms(k1 / scale)
    h0 = ops.where(ops.logical_or(d0 < 1e-5, d1 < 1e-5), 1e-6, 0.01 * d0 / ops.maximum(d1, 1e-30))
    k2 = drift(x + per_example(direction * h0, x) * k1, t + direction * h0)
    d2 = rms((k2 - k1) / scale) / h0
    largest = ops.maximum(d1, d2)
    h1 = ops.where(largest <= 1e-15, ops.maximum(1e-6, h0 * 1e-3), ops.power(0.01 / ops.maximum(largest, 1e-30), 1 / 5))
    return direction * ops.minimum(100 * h0, h1)


# --- likelihood ---------------------------------------------------------------------------


def log_likelihood(velocity, x, num_steps=50, method="rk4", probes=None, t_start=0.0, t_end=1.0, control="batch"):
    """`log p(x)` in nats per example under the probability-flow ODE.

    Integrates `dx/dt = v(x, t)` from data (`t_start`) to noise (`t_end`)
    together with `d delta / dt = div v`, then
    `log p(x) = log N(x(t_end); 0, I) + delta(t_end)`. The divergence is exact
    (one vector-Jacobian product per dimension) when `probes` is None, else
    Hutchinson's estimate `mean_k z_k^T J z_k` with the given probes
    `[K, B, *data]`, fixed for the whole solve so the ODE stays deterministic.
    `method` is a fixed-step method or `"dopri5"` (with `dopri5`'s `control`);
    returns `(log_p, nfe)`.
    """
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
    if method == "dopri5":
        state, nfe = dopri5(augmented, state, t_start, t_end, control=control)
    else:
        state, nfe = integrate_ode(augmented, state, num_steps, method, t_start, t_end), ode_nfe(method, num_steps)
    z, delta = state[:, :dim], state[:, dim]
    prior = -0.5 * ops.sum(ops.square(z), axis=1) - 0.5 * dim * math.log(2 * math.pi)
    return prior + delta, nfe


def draw_probes(kind, num_probes, shape, seed):
    """Hutchinson probes `[K, *shape]`: `"rademacher"` (+-1) or `"gaussian"`."""
    if kind == "gaussian":
        return keras.random.normal((num_probes, *shape), seed=seed)
    if kind == "rademacher":
        return 2.0 * ops.cast(keras.random.uniform((num_probes, *shape), seed=seed) < 0.5, "float32") - 1.0
    raise ValueError(f"`probe` must be 'rademacher' or 'gaussian'; got {kind!r}.")


# --- SDE ------------------------------------------------------------------------------------

DIFFUSIONS = ("constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing")
SDE_METHODS = ("euler", "heun")
LAST_STEPS = (None, "mean", "tweedie", "euler")


def diffusion_coefficient(form, t, transport, norm=1.0):
    """`w(t)` of the reverse SDE, the official `compute_diffusion` in our time.

    Official time is `1 - t`; e.g. official `linear` `n (1 - t_off)` is `n t`
    here, and `decreasing` `(n cos(pi t_off) + 1)^2 / 4` is
    `(1 - n cos(pi t))^2 / 4`.
    """
    if form == "constant":
        return norm * ops.ones_like(t)
    if form == "SBDM":
        return norm * transport.drift_var(t)
    if form == "sigma":
        return norm * transport.path.beta(t)
    if form == "linear":
        return norm * t
    if form == "decreasing":
        return 0.25 * ops.square(1.0 - norm * ops.cos(math.pi * t))
    if form == "increasing-decreasing":
        return norm * ops.square(ops.sin(math.pi * t))
    raise ValueError(f"`diffusion` must be one of {DIFFUSIONS}; got {form!r}.")


def integrate_sde(velocity_and_score, x, noise, t_start, t_end, diffusion, method="euler"):
    """Reverse-time SDE from `t_start` down to `t_end` in `len(noise)` steps.

    With step `h > 0` (time decreasing), `F = -v + w s`:
        euler: `x <- x + F(x, t) h + sqrt(2 w h) z`
        heun:  `x_hat = x + sqrt(2 w h) z`, then one Heun step of `F` from `x_hat`
    `velocity_and_score(x, t)` returns `(v, s)` from ONE model call (upstream
    makes two). `diffusion(t)` is `w(t)` per example. `noise` is `[steps, B, ...]`.
    """
    if method not in SDE_METHODS:
        raise ValueError(f"`method` must be one of {SDE_METHODS}; got {method!r}.")
    x, noise = ops.convert_to_tensor(x), ops.convert_to_tensor(noise)
    num_steps = noise.shape[0]

    def body(i, x):
        return sde_step(velocity_and_score, x, noise[i], i, num_steps, t_start, t_end, diffusion, method)

    return ops.fori_loop(0, num_steps, body, x)


def sde_step(velocity_and_score, x, z, i, num_steps, t_start, t_end, diffusion, method="euler"):
    """Step `i` of `integrate_sde`'s grid with the Gaussian increment `z`."""
    h = (t_start - t_end) / num_steps
    t = time_vector(t_start - ops.cast(i, "float32") * h, x)

    def spread(t):
        return per_example(diffusion(t), x)

    def denoising_drift(x, t):
        v, s = velocity_and_score(x, t)
        return spread(t) * s - v

    kick = ops.sqrt(2.0 * spread(t) * h) * ops.cast(z, x.dtype)
    if method == "euler":
        return x + h * denoising_drift(x, t) + kick
    x_hat = x + kick
    k1 = denoising_drift(x_hat, t)
    k2 = denoising_drift(x_hat + h * k1, t - h)
    return x_hat + 0.5 * h * (k1 + k2)


def sde_last_step(kind, velocity_and_score, x, t, h, diffusion, path):
    """The noiseless final step at time `t` (per example) of size `h`.

    `"mean"`: `x + h (w s - v)` (upstream default); `"euler"`: `x - h v` (ODE
    drift only); `"tweedie"`: `(x + b^2 s) / a`, the clean-data estimate;
    None: `x` unchanged.
    """
    if kind is None:
        return x
    if kind not in LAST_STEPS:
        raise ValueError(f"`last_step` must be one of {LAST_STEPS}; got {kind!r}.")
    v, s = velocity_and_score(x, t)
    if kind == "euler":
        return x - h * v
    if kind == "mean":
        return x + h * (per_example(diffusion(t), x) * s - v)
    a, b = (per_example(f(t), x) for f in (path.alpha, path.beta))
    return (x + ops.square(b) * s) / a


def draw_sde_noise(num_steps, shape, seed):
    """All the Gaussian increments of an SDE solve, drawn before the loop."""
    return keras.random.normal((num_steps, *shape), seed=seed)
