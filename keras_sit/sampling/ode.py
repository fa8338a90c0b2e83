"""Fixed-step ODE methods and their loop, over `keras.ops`, for any drift `f(x, t)`.

`drift(x, t)` is any callable returning `dx/dt`, with `t` a `[B]` tensor.
The library's time runs from `t = 1` (noise) to `t = 0` (data), so sampling
integrates with `t_start=1, t_end=0`; swapping them maps data to noise
(encoding). The loop is an `ops.fori_loop`: a compiled `lax.fori_loop` on
JAX, a `tf.while_loop` on TensorFlow, a Python loop on PyTorch.

A method is a `FixedStepSampler`: `update` for a one-step method, or
`init_state` and `step` for one that carries state (e.g. `AdamsBashforth2`).
A method whose steps differ along the grid (e.g. `HeunEulerLast`, whose last
step is Euler) overrides `grid_step`, `integrate` and `nfe` instead.
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

    def nfe(self, num_steps):
        """Drift evaluations of a whole `num_steps`-step solve."""
        return self.calls_per_step * num_steps

    def grid_step(self, drift, carry, i, num_steps, t_start, t_end):
        """Step `i` (an int or int tensor) of the `num_steps`-step grid: `carry = (x, state)` after it."""
        x, state = carry
        h = (t_end - t_start) / num_steps
        t = time_vector(t_start + ops.cast(i, "float32") * h, x)
        return self.step(drift, x, state, t, h, i)

    def integrate(self, drift, x, num_steps, t_start, t_end):
        """`x` after all `num_steps` steps from `t_start` to `t_end`, as one `ops.fori_loop`."""

        def body(i, carry):
            return self.grid_step(drift, carry, i, num_steps, t_start, t_end)

        return ops.fori_loop(0, num_steps, body, (x, self.init_state(x)))[0]

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


class HeunEulerLast(FixedStepSampler):
    """Heun on every step but the last, which is Euler: `2 N - 1` model calls for `N` steps.

    REPA's ODE sampler with `--heun` (its `euler_sampler(heun=True)`): as in
    EDM, whose drift is undefined at the data end, the last step keeps the
    predictor alone, so no model call is made at `t = 0`.
    As in REPA, classifier-free guidance of a step's corrector is decided by
    the step's start time `t` rather than by `t + h`: a drift marked
    `takes_guidance_time` (the model's guided drift) is called as
    `drift(x, t + h, guidance_t=t)`; any other drift as `drift(x, t + h)`.
    """

    name, order, calls_per_step = "heun-euler-last", 2, 2

    def update(self, drift, x, t, h):
        """One Heun step; its corrector is guided (or not) as at `t`."""
        k1 = drift(x, t)
        x_euler = x + h * k1
        if getattr(drift, "takes_guidance_time", False):
            k2 = drift(x_euler, t + h, guidance_t=t)
        else:
            k2 = drift(x_euler, t + h)
        return x + 0.5 * h * (k1 + k2)

    def euler(self, drift, x, t, h):
        """The last step: Euler, one drift evaluation."""
        return x + h * drift(x, t)

    def nfe(self, num_steps):
        return 2 * num_steps - 1

    def grid_step(self, drift, carry, i, num_steps, t_start, t_end):
        (x, state), h = carry, (t_end - t_start) / num_steps
        t = time_vector(t_start + ops.cast(i, "float32") * h, x)
        last = ops.equal(i, num_steps - 1)
        x = ops.cond(last, lambda: self.euler(drift, x, t, h), lambda: self.update(drift, x, t, h))
        return x, state

    def integrate(self, drift, x, num_steps, t_start, t_end):
        h = (t_end - t_start) / num_steps

        def body(i, x):
            return self.update(drift, x, time_vector(t_start + ops.cast(i, "float32") * h, x), h)

        x = ops.fori_loop(0, num_steps - 1, body, x)
        return self.euler(drift, x, time_vector(t_start + ops.cast(num_steps - 1, "float32") * h, x), h)

    def advance(self, problem, carry, z, i, n):
        carry = ode_step(problem.drift, carry, i, problem.num_steps, self, problem.t_start, problem.t_end)
        return carry, 2 - ops.cast(ops.equal(i, problem.num_steps - 1), "int32")


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
    return sampler.nfe(num_steps)


def ode_step(drift, carry, i, num_steps, method="euler", t_start=1.0, t_end=0.0):
    """Step `i` (an int or int tensor) of `integrate_ode`'s grid: `carry = (x, state)` after it.

    Exposed so that a caller can run the same grid one compiled step at a
    time, e.g. to show progress or keep the trajectory; the first carry is
    `(x, sampler.init_state(x))`.
    """
    return fixed_step_sampler(method).grid_step(drift, carry, i, num_steps, t_start, t_end)


def integrate_ode(drift, x, num_steps, method="euler", t_start=1.0, t_end=0.0, reverse=False):
    """Fixed-step solve of `dx/dt = drift(x, t)` from `t_start` to `t_end`.

    `method` is a registered fixed-step method (`"euler"`, `"midpoint"`,
    `"heun"`, `"heun-euler-last"`, `"rk4"`, `"ab2"`, ...) or a `FixedStepSampler`; the cost is
    `ode_nfe(method, num_steps)` drift evaluations. `reverse=True` runs from
    `t_end` to `t_start` instead: with the defaults, data to noise (encoding).
    """
    sampler = fixed_step_sampler(method)
    check_positive_int("num_steps", num_steps)
    t_start, t_end = interval(t_start, t_end, reverse)
    return sampler.integrate(drift, ops.convert_to_tensor(x), num_steps, t_start, t_end)


def interval(t_start, t_end, reverse):
    """`(t_start, t_end)`, swapped if `reverse`."""
    return (t_end, t_start) if reverse else (t_start, t_end)


for _sampler in (Euler(), Midpoint(), Heun(), RK4(), AdamsBashforth2(), HeunEulerLast()):
    register_sampler(_sampler)
