"""The builders of a SiT's compiled sampling programs, for any registered sampler.

Each builder takes `(model, settings)` and returns a pure function of
tensors for `backend.compile_inference`. They bind the model's guided fields
and time interval into a `Problem` and leave the method to the sampler
object, so a new sampler needs no change here.
"""

from keras_sit.sampling.guidance import guide, guided_average_velocity, guided_drift, guided_velocity_and_score
from keras_sit.sampling.likelihood import log_likelihood
from keras_sit.sampling.registry import Problem


def bind(model, settings, labels, reverse=False):
    """The `Problem` of sampling `model` (noise to data), or of encoding with `reverse` (data to noise)."""
    lo, hi = model.transport.interval(model.transport.sample_eps)
    t_start, t_end = (lo, hi) if reverse else (hi, lo)
    return Problem(
        drift=guided_drift(model, settings, labels),
        t_start=t_start,
        t_end=t_end,
        num_steps=settings.num_steps,
        settings=settings,
        velocity_and_score=guided_velocity_and_score(model, settings, labels),
        transport=model.transport,
        average_velocity=guided_average_velocity(model, settings, labels)
        if model.backbone.interval_embedding
        else None,
    )


def generate_loop(model, settings):
    """`generate` as one program: `fn(x, noise, labels) -> x`, `noise` the SDE's increments (or None)."""
    sampler = settings.method

    def run(x, noise, labels):
        problem = bind(model, settings, labels)
        x, _ = sampler.solve(problem, x, noise)
        return sampler.finish(problem, x)

    return run


def generate_step(model, settings):
    """One step (segment) of `generate`: `fn(carry, z, labels, i, n) -> (carry, nfe)`, `carry = (x, state)`."""
    sampler = settings.method

    def step(carry, z, labels, i, n):
        return sampler.advance(bind(model, settings, labels), carry, z, i, n)

    return step


def generate_finish(model, settings):
    """The sampler's step after the last one (the SDE's last step): `fn(x, labels) -> x`."""
    sampler = settings.method

    def finish(x, labels):
        return sampler.finish(bind(model, settings, labels), x)

    return finish


def encode_loop(model, settings):
    """The probability-flow ODE from data (`t = lo`) to noise (`t = hi`): `fn(x, labels) -> x`."""
    sampler = settings.method

    def run(x, labels):
        return sampler.solve(bind(model, settings, labels, reverse=True), x, None)[0]

    return run


def likelihood_loop(model, settings):
    """`log p(x)` by the unguided probability-flow ODE: `fn(x, labels, probes)`, exact when `probes` is None."""
    lo, hi = model.transport.interval(model.transport.sample_eps)

    def run(x, labels, probes):
        def velocity(z, t):
            return model.transport.to_velocity(guide(model, z, t, labels, 1.0), z, t)

        probe_list = None if probes is None else [probes[k] for k in range(probes.shape[0])]
        return log_likelihood(
            velocity, x, settings.num_steps, settings.sampler, probe_list, lo, hi, settings.adaptive_control
        )[0]

    return run
