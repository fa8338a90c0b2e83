"""Adaptive Dormand-Prince 5(4) over `keras.ops`, for any drift `f(x, t)`, and its sampler.

The loop is an `ops.while_loop` (compiled on JAX and TensorFlow), so the
whole solve, step-size control included, runs without a host round trip.
"""

from keras import ops

from keras_sit.paths import per_example, time_vector
from keras_sit.sampling.ode import interval
from keras_sit.sampling.registry import Sampler, register_sampler
from keras_sit.validation import check_choice

# The tolerances' defaults, here and in `SamplingSettings` (upstream's `torchdiffeq` defaults).
DOPRI5_ATOL, DOPRI5_RTOL = 1e-6, 1e-3
DOPRI5_CONTROLS = ("batch", "example")

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


def dopri5(
    drift,
    x,
    t_start=1.0,
    t_end=0.0,
    atol=DOPRI5_ATOL,
    rtol=DOPRI5_RTOL,
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
    t_start, t_end = interval(t_start, t_end, reverse)
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


class Dopri5(Sampler):
    """`dopri5` with the settings' `atol`, `rtol` and `adaptive_control`.

    Step by step, it solves `n` equal segments of the interval, each adaptively.
    """

    name, adaptive, order, calls_per_step = "dopri5", True, 5, 6

    def solve(self, problem, x, noise):
        settings = problem.settings
        return dopri5(
            problem.drift,
            x,
            problem.t_start,
            problem.t_end,
            settings.atol,
            settings.rtol,
            control=settings.adaptive_control,
        )

    def advance(self, problem, carry, z, i, n):
        (x, state), settings = carry, problem.settings
        width = (problem.t_end - problem.t_start) / ops.cast(n, "float32")
        t0 = problem.t_start + ops.cast(i, "float32") * width
        direction = 1.0 if problem.t_end > problem.t_start else -1.0
        x, nfe = dopri5(
            problem.drift,
            x,
            t0,
            t0 + width,
            settings.atol,
            settings.rtol,
            direction=direction,
            control=settings.adaptive_control,
        )
        return (x, state), nfe

    def segments(self, num_steps, keep_trajectory):
        return num_steps if keep_trajectory else 1  # segments only to record the states between them


register_sampler(Dopri5())
