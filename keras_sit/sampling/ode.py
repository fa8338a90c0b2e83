"""Fixed-step ODE methods and their loop, over `keras.ops`, for any drift `f(x, t)`.

`drift(x, t)` is any callable returning `dx/dt`, with `t` a `[B]` tensor.
The library's time runs from `t = 1` (noise) to `t = 0` (data), so sampling
integrates with `t_start=1, t_end=0`; swapping them maps data to noise
(encoding). The loop is an `ops.fori_loop`: a compiled `lax.fori_loop` on
JAX, a `tf.while_loop` on TensorFlow, a Python loop on PyTorch.

A method is a `FixedStepSampler`: `update` for a one-step method, or
`init_state` and `step` for one that carries state (e.g. `AdamsBashforth2`).
"""

from keras import ops

from keras_sit.paths import time_vector
from keras_sit.sampling.registry import Sampler, get_sampler, register_sampler
from keras_sit.validation import check_positive_int


class FixedStepSampler(Sampler):
    """An ODE method on the uniform grid `t_i = t_start + i h`, `h = (t_end - t_start) / num_steps`."""

    kind = "ode"

    def update(self, drift, x, t, h):
        """`x` at `t + h` from `x` at `t` (a one-step method); `t` is `[B]`, `h` a signed scalar."""
        raise NotImplementedError

    def step(self, drift, x, state, t, h, i):
        """Step `i`: `(x, state)` at `t + h`. One-step methods keep `state` as it is."""
        return self.update(drift, x, t, h), state

    def solve(self, problem, x, noise):
        x = integrate_ode(problem.drift, x, problem.num_steps, self, problem.t_start, problem.t_end)
        return x, ops.convert_to_tensor(ode_nfe(self, problem.num_steps), "int32")

    def advance(self, problem, carry, z, i, n):
        carry = ode_step(problem.drift, carry, i, problem.num_steps, self, problem.t_start, problem.t_end)
        return carry, ops.convert_to_tensor(self.calls_per_step, "int32")


class Euler(FixedStepSampler):
    name, order, calls_per_step = "euler", 1, 1

    def update(self, drift, x, t, h):
        return x + h * drift(x, t)


class Midpoint(FixedStepSampler):
    name, order, calls_per_step = "midpoint", 2, 2

    def update(self, drift, x, t, h):
        return x + h * drift(x + 0.5 * h * drift(x, t), t + 0.5 * h)


class Heun(FixedStepSampler):
    name, order, calls_per_step = "heun", 2, 2

    def update(self, drift, x, t, h):
        k1 = drift(x, t)
        k2 = drift(x + h * k1, t + h)
        return x + 0.5 * h * (k1 + k2)


class RK4(FixedStepSampler):
    """Classic fourth-order Runge-Kutta (torchdiffeq's `rk4` is the 3/8 rule)."""

    name, order, calls_per_step = "rk4", 4, 4

    def update(self, drift, x, t, h):
        k1 = drift(x, t)
        k2 = drift(x + 0.5 * h * k1, t + 0.5 * h)
        k3 = drift(x + 0.5 * h * k2, t + 0.5 * h)
        k4 = drift(x + h * k3, t + h)
        return x + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


class AdamsBashforth2(FixedStepSampler):
    """Two-step Adams-Bashforth: `x + h (3/2 f_i - 1/2 f_(i-1))`, one model call per step.

    The state is the previous drift evaluation. The first step, which has
    none, is Euler: its local error is O(h^2), so the global order stays 2.
    """

    name, order, calls_per_step, stateful = "ab2", 2, 1, True

    def init_state(self, x):
        return ops.zeros_like(x)  # weighted by 0 in the first step

    def step(self, drift, x, previous, t, h, i):
        k = ops.cast(drift(x, t), previous.dtype)
        c = 0.5 * ops.cast(ops.greater(i, 0), x.dtype)  # 0 on the first step: Euler
        return x + h * ((1.0 + c) * k - c * previous), k


def fixed_step_sampler(method):
    """`method` as a `FixedStepSampler`: an instance, or the name of a registered one."""
    if isinstance(method, FixedStepSampler):
        return method
    return get_sampler(method, "method", kind="ode", adaptive=False, average_velocity=False)


def ode_nfe(method, num_steps):
    """Number of drift evaluations of a fixed-step ODE solve."""
    sampler = fixed_step_sampler(method)
    check_positive_int("num_steps", num_steps)
    return sampler.calls_per_step * num_steps


def ode_step(drift, carry, i, num_steps, method="euler", t_start=1.0, t_end=0.0):
    """Step `i` (an int or int tensor) of `integrate_ode`'s grid: `carry = (x, state)` after it.

    Exposed so that a caller can run the same grid one compiled step at a
    time, e.g. to show progress or keep the trajectory; the first carry is
    `(x, sampler.init_state(x))`.
    """
    sampler = fixed_step_sampler(method)
    x, state = carry
    h = (t_end - t_start) / num_steps
    t = time_vector(t_start + ops.cast(i, "float32") * h, x)
    return sampler.step(drift, x, state, t, h, i)


def integrate_ode(drift, x, num_steps, method="euler", t_start=1.0, t_end=0.0, reverse=False):
    """Fixed-step solve of `dx/dt = drift(x, t)` from `t_start` to `t_end`.

    `method` is a registered fixed-step method (`"euler"`, `"midpoint"`,
    `"heun"`, `"rk4"`, `"ab2"`, ...) or a `FixedStepSampler`; the cost is
    `ode_nfe(method, num_steps)` drift evaluations. `reverse=True` runs from
    `t_end` to `t_start` instead: with the defaults, data to noise (encoding).
    """
    sampler = fixed_step_sampler(method)
    check_positive_int("num_steps", num_steps)
    t_start, t_end = interval(t_start, t_end, reverse)
    x = ops.convert_to_tensor(x)

    def body(i, carry):
        return ode_step(drift, carry, i, num_steps, sampler, t_start, t_end)

    return ops.fori_loop(0, num_steps, body, (x, sampler.init_state(x)))[0]


def interval(t_start, t_end, reverse):
    """`(t_start, t_end)`, swapped if `reverse`."""
    return (t_end, t_start) if reverse else (t_start, t_end)


for _sampler in (Euler(), Midpoint(), Heun(), RK4(), AdamsBashforth2()):
    register_sampler(_sampler)
