"""The reverse-time SDE: diffusion coefficients, Euler-Maruyama and stochastic Heun, the last step.

With step `h > 0` (time decreasing) and `F = -v + w s`, a step adds the
Gaussian kick `sqrt(2 w h) z` and follows `F`. The increments `z` are drawn
for all steps before the loop, because a `SeedGenerator` cannot be used
inside a JAX loop body.
"""

import dataclasses
import math

import keras
from keras import ops

from keras_sit.paths import per_example, time_vector
from keras_sit.sampling.registry import Sampler, get_sampler, register_sampler

DIFFUSIONS = ("constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing")
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


class SDESampler(Sampler):
    """A reverse-SDE method: `update` takes one step of the denoising drift `F` with its kick."""

    kind, reversible = "sde", False

    def update(self, denoising_drift, x, kick, t, h):
        """`x` at `t - h` from `x` at `t`, with the Gaussian kick `sqrt(2 w(t) h) z`."""
        raise NotImplementedError

    def solve(self, problem, x, noise):
        schedule = SDESchedule.of(problem.transport, problem.settings)
        x = integrate_sde(problem.velocity_and_score, x, noise, schedule.hi, schedule.lo, schedule.diffusion, self)
        return x, ops.convert_to_tensor(self.calls_per_step * noise.shape[0], "int32")

    def advance(self, problem, carry, z, i, n):
        (x, state), schedule = carry, SDESchedule.of(problem.transport, problem.settings)
        x = sde_step(
            problem.velocity_and_score, x, z, i, problem.num_steps, schedule.hi, schedule.lo, schedule.diffusion, self
        )
        return (x, state), ops.convert_to_tensor(self.calls_per_step, "int32")

    def has_last_step(self, settings):
        return settings.last_step is not None

    def finish(self, problem, x):
        return SDESchedule.of(problem.transport, problem.settings).last_step(problem.velocity_and_score, x)


class EulerMaruyama(SDESampler):
    """`x + F(x, t) h + sqrt(2 w h) z`."""

    name, order, calls_per_step = "sde-euler", 1, 1

    def update(self, denoising_drift, x, kick, t, h):
        return x + h * denoising_drift(x, t) + kick


class StochasticHeun(SDESampler):
    """`x_hat = x + sqrt(2 w h) z`, then one Heun step of `F` from `x_hat`."""

    name, order, calls_per_step = "sde-heun", 1, 2

    def update(self, denoising_drift, x, kick, t, h):
        x_hat = x + kick
        k1 = denoising_drift(x_hat, t)
        k2 = denoising_drift(x_hat + h * k1, t - h)
        return x_hat + 0.5 * h * (k1 + k2)


def sde_sampler(method):
    """`method` as an `SDESampler`: an instance, or the name of a registered one."""
    return method if isinstance(method, SDESampler) else get_sampler(method, "method", kind="sde")


def integrate_sde(velocity_and_score, x, noise, t_start, t_end, diffusion, method="sde-euler"):
    """Reverse-time SDE from `t_start` down to `t_end` in `len(noise)` steps.

    `velocity_and_score(x, t)` returns `(v, s)` from ONE model call (upstream
    makes two). `diffusion(t)` is `w(t)` per example. `noise` is
    `[steps, B, ...]`. `method` is a registered SDE sampler (`"sde-euler"`,
    `"sde-heun"`) or an `SDESampler`.
    """
    sampler = sde_sampler(method)
    x, noise = ops.convert_to_tensor(x), ops.convert_to_tensor(noise)
    num_steps = noise.shape[0]

    def body(i, x):
        return sde_step(velocity_and_score, x, noise[i], i, num_steps, t_start, t_end, diffusion, sampler)

    return ops.fori_loop(0, num_steps, body, x)


def sde_step(velocity_and_score, x, z, i, num_steps, t_start, t_end, diffusion, method="sde-euler"):
    """Step `i` of `integrate_sde`'s grid with the Gaussian increment `z`."""
    sampler = sde_sampler(method)
    h = (t_start - t_end) / num_steps
    t = time_vector(t_start - ops.cast(i, "float32") * h, x)

    def spread(t):
        return per_example(diffusion(t), x)

    def denoising_drift(x, t):
        v, s = velocity_and_score(x, t)
        return spread(t) * s - v

    kick = ops.sqrt(2.0 * spread(t) * h) * ops.cast(z, x.dtype)
    return sampler.update(denoising_drift, x, kick, t, h)


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


@dataclasses.dataclass(frozen=True)
class SDESchedule:
    """The reverse SDE's interval `[lo, hi]`, its diffusion `w(t)` and its noiseless last step."""

    hi: float
    lo: float
    last_step_size: float
    transport: object
    settings: object  # a SamplingSettings

    @classmethod
    def of(cls, transport, settings):
        eps = transport.sample_eps
        if eps == 0.0 and not transport.is_vp:
            # On linear/cosine the score is infinite at t = 0, and SBDM's w = D(t) at
            # t = 1 (upstream samples NaN there): stop short of both ends.
            eps = 1e-3
        velocity = transport.prediction == "velocity"
        hi = 1.0 if transport.is_vp or (settings.diffusion != "SBDM" and velocity) else 1.0 - eps
        h_last = settings.last_step_size if settings.last_step is not None else 0.0
        return cls(hi, h_last if h_last > 0 else eps, h_last, transport, settings)

    def diffusion(self, t):
        return diffusion_coefficient(self.settings.diffusion, t, self.transport, self.settings.diffusion_norm)

    def last_step(self, velocity_and_score, x):
        t_last = time_vector(self.lo, x)  # the batch size may be unknown while tracing
        return sde_last_step(
            self.settings.last_step,
            velocity_and_score,
            x,
            t_last,
            self.last_step_size,
            self.diffusion,
            self.transport.path,
        )


for _sampler in (EulerMaruyama(), StochasticHeun()):
    register_sampler(_sampler)
