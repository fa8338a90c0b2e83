"""Samplers as objects that declare what they are, and the one registry of them by name.

The loops never branch on a sampler's name: they ask the sampler object for
its kind, its model calls per step, whether it carries state, and call its
step methods. A new method is one `Sampler` subclass and one
`register_sampler` call.
"""

import dataclasses
from collections.abc import Callable

from keras_sit.validation import check_choice


@dataclasses.dataclass(frozen=True)
class Problem:
    """What a sampler solves, with no model in it: the fields, the interval and the options.

    `drift(x, t)` is the probability-flow velocity; `velocity_and_score(x, t)`
    returns `(v, s)` from one model call (SDE samplers only);
    `average_velocity(x, r, t)` is the average velocity over `[r, t]` of a
    network with an interval embedding (MeanFlow), else None. The interval runs
    from `t_start` to `t_end` in `num_steps` steps. `settings` (a
    `SamplingSettings`) and `transport` give the options and the path that
    adaptive and SDE samplers read.
    """

    drift: Callable
    t_start: float
    t_end: float
    num_steps: int
    settings: object = None
    velocity_and_score: Callable | None = None
    transport: object = None
    average_velocity: Callable | None = None


class Sampler:
    """A sampling method: what it is (class attributes) and how it steps (methods).

    - `name`: its registry name, e.g. `"heun"`.
    - `kind`: `"ode"` (deterministic) or `"sde"` (draws Gaussian increments).
    - `adaptive`: chooses its own step sizes (`num_steps` then splits only
      the step-by-step run into segments).
    - `order`: convergence order (weak order for SDE samplers).
    - `calls_per_step`: model calls per step (per attempted step if adaptive).
    - `reversible`: can run data to noise, for `encode` and `log_likelihood`.
    - `stateful`: carries state between steps (e.g. a multistep method).
    - `average_velocity`: steps with the network's average velocity over
      each step (`Problem.average_velocity`), so it needs a network with an
      interval embedding (MeanFlow).

    The loops call `init_state`, `solve`, `advance`, `has_last_step` and
    `finish`; the carry of a step-by-step run is `(x, state)`.
    """

    name: str = None
    kind: str = "ode"
    adaptive: bool = False
    order: int = 1
    calls_per_step: int = 1
    reversible: bool = True
    stateful: bool = False
    average_velocity: bool = False

    def init_state(self, x):
        """The state carried with `x` into the first step: `()` for a stateless method."""
        return ()

    def solve(self, problem, x, noise):
        """The whole solve from `problem.t_start` to `problem.t_end`: `(x, nfe)`."""
        raise NotImplementedError

    def advance(self, problem, carry, z, i, n):
        """Segment `i` (a tensor) of `n` of a step-by-step run: `(carry, nfe)`, `carry = (x, state)`.

        `z` is the step's Gaussian increment (SDE samplers), else None.
        """
        raise NotImplementedError

    def segments(self, num_steps, keep_trajectory):
        """How many `advance` calls a step-by-step run makes."""
        return num_steps

    def has_last_step(self, settings):
        """Whether `finish` changes `x` (it then adds a state to the trajectory)."""
        return False

    def finish(self, problem, x):
        """The step after the last one (an SDE's noiseless last step); `x` unchanged by default."""
        return x

    def __repr__(self):
        return (
            f"<{type(self).__name__} {self.name!r}: {self.kind}, order {self.order}, {self.calls_per_step} calls/step>"
        )


_SAMPLERS = {}  # name -> Sampler, in registration order


def register_sampler(sampler):
    """Make `sampler` (a `Sampler` instance) available by its `name`; returns it.

    A name is registered once, so that a name means one method (it is part of
    the key of the compiled-loop cache); `unregister_sampler` frees it.
    """
    if not isinstance(sampler, Sampler):
        raise TypeError(f"`sampler` must be a keras_sit.sampling.Sampler instance; got {sampler!r}.")
    if not isinstance(sampler.name, str) or not sampler.name:
        raise ValueError(f"`sampler.name` must be a non-empty str; got {sampler.name!r}.")
    check_choice("kind", sampler.kind, ("ode", "sde"))
    if sampler.name in _SAMPLERS:
        raise ValueError(f"A sampler named {sampler.name!r} is registered already: {_SAMPLERS[sampler.name]!r}.")
    _SAMPLERS[sampler.name] = sampler
    return sampler


def unregister_sampler(name):
    """Remove the sampler registered as `name` (e.g. to register another under it)."""
    get_sampler(name)
    del _SAMPLERS[name]


def sampler_names(kind=None, adaptive=None, reversible=None, average_velocity=None):
    """The registered names, in registration order, optionally only those with the given attributes."""
    wanted = {"kind": kind, "adaptive": adaptive, "reversible": reversible, "average_velocity": average_velocity}
    return tuple(
        name
        for name, sampler in _SAMPLERS.items()
        if all(value is None or getattr(sampler, key) == value for key, value in wanted.items())
    )


def get_sampler(name, argument="sampler", **attributes):
    """The sampler registered as `name`; a ValueError lists the registered names when there is none.

    `attributes` (e.g. `reversible=True`) narrow the names accepted, for calls
    that need such a sampler; `argument` is the name of the caller's argument.
    """
    if isinstance(name, Sampler) and name.name in _SAMPLERS and _SAMPLERS[name.name] is name:
        name = name.name
    check_choice(argument, name, sampler_names(**attributes))
    return _SAMPLERS[name]
