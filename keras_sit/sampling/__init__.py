"""Sampling: the registry of samplers, their solvers over `keras.ops`, the settings and `SiT`'s sampling methods.

- `registry`: `Sampler` (what a method is and how it steps), `Problem`, and
  `register_sampler` / `get_sampler` / `sampler_names`.
- `ode`: the fixed-step methods (`euler`, `midpoint`, `heun`, `rk4`, `ab2`,
  `heun-euler-last`) and `integrate_ode`; `adaptive`: `dopri5`; `sde`: the reverse SDE;
  `mean_flow`: `mean-flow`, MeanFlow's one- or few-step jumps.
- `likelihood`: `log_likelihood` under the probability-flow ODE.
- `settings`: `SamplingSettings`, the one declaration of the options.
- `guidance`, `loops`, `methods`: how a SiT is sampled (`SamplingMixin`).

The solvers know nothing about SiT: `drift(x, t)` is any callable that
returns `dx/dt`, with `t` a `[B]` tensor.
"""

from keras_sit.sampling.adaptive import DOPRI5_ATOL, DOPRI5_CONTROLS, DOPRI5_RTOL, Dopri5, dopri5
from keras_sit.sampling.likelihood import draw_probes, log_likelihood
from keras_sit.sampling.mean_flow import MeanFlowSampler
from keras_sit.sampling.ode import (
    RK4,
    AdamsBashforth2,
    Euler,
    FixedStepSampler,
    Heun,
    HeunEulerLast,
    Midpoint,
    integrate_ode,
    ode_nfe,
    ode_step,
)
from keras_sit.sampling.registry import (
    Problem,
    Sampler,
    get_sampler,
    register_sampler,
    sampler_names,
    unregister_sampler,
)
from keras_sit.sampling.sde import (
    DIFFUSIONS,
    LAST_STEPS,
    EulerMaruyama,
    SDESampler,
    StochasticHeun,
    diffusion_coefficient,
    draw_sde_noise,
    integrate_sde,
    sde_last_step,
    sde_step,
)
from keras_sit.sampling.settings import SamplingSettings

__all__ = [
    "DIFFUSIONS",
    "DOPRI5_ATOL",
    "DOPRI5_CONTROLS",
    "DOPRI5_RTOL",
    "LAST_STEPS",
    "RK4",
    "AdamsBashforth2",
    "Dopri5",
    "Euler",
    "EulerMaruyama",
    "FixedStepSampler",
    "Heun",
    "HeunEulerLast",
    "MeanFlowSampler",
    "Midpoint",
    "Problem",
    "SDESampler",
    "Sampler",
    "SamplingSettings",
    "StochasticHeun",
    "diffusion_coefficient",
    "dopri5",
    "draw_probes",
    "draw_sde_noise",
    "get_sampler",
    "integrate_ode",
    "integrate_sde",
    "log_likelihood",
    "ode_nfe",
    "ode_step",
    "register_sampler",
    "sampler_names",
    "sde_last_step",
    "sde_step",
    "unregister_sampler",
]
