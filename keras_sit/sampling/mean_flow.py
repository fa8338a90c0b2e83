"""MeanFlow's sampler: jump over each interval with the network's average velocity.

A network trained with `keras_sit.objectives.MeanFlow` predicts `u(z, r,
t)`, the average velocity over `[r, t]`, so `z_r = z_t - (t - r) u(z_t, r,
t)` is exact for a perfect network, whatever the interval. One step (`t =
1` to `r = 0`) is one network call; more steps split `[0, 1]` into equal
intervals. Guidance folded in at training (`MeanFlow(omega=..., kappa=...)`)
comes with the network; `cfg_scale` guides the average velocity on top.
"""

from keras import ops

from keras_sit.paths import time_vector
from keras_sit.sampling.registry import Sampler, register_sampler


class MeanFlowSampler(Sampler):
    """`z_r = z_t - (t - r) u(z_t, r, t)` on the uniform grid from `t_start` to `t_end`, one call a step."""

    name, kind, order, calls_per_step = "mean-flow", "ode", 1, 1
    reversible = False  # `u` is evaluated at the interval's end `t`: running it backwards would be implicit
    average_velocity = True

    def solve(self, problem, x, noise):
        def body(i, x):
            return self._step(problem, x, i)

        x = ops.fori_loop(0, problem.num_steps, body, ops.convert_to_tensor(x))
        return x, ops.convert_to_tensor(problem.num_steps, "int32")

    def advance(self, problem, carry, z, i, n):
        x, state = carry
        return (self._step(problem, x, i), state), ops.convert_to_tensor(1, "int32")

    def _step(self, problem, x, i):
        h = (problem.t_end - problem.t_start) / problem.num_steps
        t = time_vector(problem.t_start + ops.cast(i, "float32") * h, x)
        return x + h * problem.average_velocity(x, t + h, t)


register_sampler(MeanFlowSampler())
