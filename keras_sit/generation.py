"""Sampling a trained SiT: settings, guidance and the compiled loops.

`SamplingMixin` gives `SiT` its sampling methods (`guided_output`,
`velocity`, `generate`, `encode`, `log_likelihood`). Each call validates its
arguments into a `SamplingSettings`, an immutable value that is also the key
of the model's cache of compiled loops: a setting compiles once (`jax.jit`,
an XLA `tf.function`, or eager `torch.no_grad` on PyTorch, see
`backend.compile_inference`) and is reused across calls, also after further
training, because the weights are inputs of the compiled program.

The loops themselves are built by the named functions below from
`keras_sit.samplers`, which know nothing about SiT: each returns a pure
function of tensors for `backend.compile_inference`.
"""

import contextlib
import dataclasses

import keras
import numpy as np
from keras import ops

from keras_sit import backend, distribution, ema, samplers
from keras_sit.paths import per_example, time_vector
from keras_sit.validation import (
    check_bool,
    check_choice,
    check_data,
    check_finite,
    check_label_values,
    check_labels,
    check_number,
    check_pair,
    check_positive_int,
    check_seed,
    in_memory,
    sampling_labels,
)

ODE_SAMPLERS = (*samplers.ODE_METHODS, "dopri5")
SDE_SAMPLERS = ("sde-euler", "sde-heun")
SAMPLERS = ODE_SAMPLERS + SDE_SAMPLERS


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """Everything a compiled sampling loop depends on besides its tensor inputs.

    Validated on construction and immutable, so that it is also the key of
    the compiled-loop cache. The fields are `SiT.generate`'s arguments of the
    same names; `guidance_channels` is checked against the model's channels
    by the model.
    """

    sampler: str = "euler"
    num_steps: int = 50
    cfg_scale: float = 1.0
    guidance_channels: int | None = None
    guidance_interval: tuple | None = None
    diffusion: str = "sigma"
    diffusion_norm: float = 1.0
    last_step: str | None = "mean"
    last_step_size: float = 0.04
    atol: float = 1e-6
    rtol: float = 1e-3
    clip_data: tuple | None = None
    adaptive_control: str = "batch"

    def __post_init__(self):
        def normalise(name, value):
            object.__setattr__(self, name, value)

        check_choice("sampler", self.sampler, SAMPLERS)
        check_positive_int("num_steps", self.num_steps)
        normalise("num_steps", int(self.num_steps))
        normalise("cfg_scale", check_number("cfg_scale", self.cfg_scale))
        check_positive_int("guidance_channels", self.guidance_channels, allow_none=True)
        if self.guidance_interval is not None:
            normalise("guidance_interval", check_pair("guidance_interval", self.guidance_interval, 0, 1))
        if self.clip_data is not None:
            normalise("clip_data", check_pair("clip_data", self.clip_data, strict=True))
        normalise("atol", check_number("atol", self.atol, low=0.0, include_low=False))
        normalise("rtol", check_number("rtol", self.rtol, low=0.0, include_low=False))
        check_choice("adaptive_control", self.adaptive_control, samplers.DOPRI5_CONTROLS)
        check_choice("diffusion", self.diffusion, samplers.DIFFUSIONS)
        normalise("diffusion_norm", check_number("diffusion_norm", self.diffusion_norm, low=0.0))
        check_choice("last_step", self.last_step, samplers.LAST_STEPS)
        normalise("last_step_size", check_number("last_step_size", self.last_step_size, 0.0, 1.0))

    @property
    def is_ode(self):
        return self.sampler in ODE_SAMPLERS


# --- the pieces of a loop -----------------------------------------------------------------


def _guided_output(model, settings, labels, x, t):
    return model._guide(x, t, labels, settings.cfg_scale, settings.guidance_channels, settings.guidance_interval)


def guided_drift(model, settings, labels):
    """The probability-flow drift `v(x, t)`, guided as `settings` say."""

    def drift(x, t):
        return model.transport.to_velocity(_guided_output(model, settings, labels, x, t), x, t, settings.clip_data)

    return drift


def guided_velocity_and_score(model, settings, labels):
    """`(v, s)` at `(x, t)` from one network call, for the SDE."""

    def velocity_and_score(x, t):
        output, transport = _guided_output(model, settings, labels, x, t), model.transport
        return transport.to_velocity(output, x, t, settings.clip_data), transport.to_score(output, x, t)

    return velocity_and_score


@dataclasses.dataclass(frozen=True)
class SDESchedule:
    """The reverse SDE's interval `[lo, hi]`, its diffusion `w(t)` and its noiseless last step."""

    hi: float
    lo: float
    last_step_size: float
    transport: object
    settings: SamplingSettings

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
        return samplers.diffusion_coefficient(self.settings.diffusion, t, self.transport, self.settings.diffusion_norm)

    def last_step(self, velocity_and_score, x):
        t_last = self.lo * ops.ones((x.shape[0],), x.dtype)
        return samplers.sde_last_step(
            self.settings.last_step,
            velocity_and_score,
            x,
            t_last,
            self.last_step_size,
            self.diffusion,
            self.transport.path,
        )


# --- whole loops: `fn(x, noise, labels)` ----------------------------------------------------


def ode_loop(model, settings):
    lo, hi = model.transport.interval(model.transport.sample_eps)

    def run(x, noise, labels):
        return samplers.integrate_ode(
            guided_drift(model, settings, labels), x, settings.num_steps, settings.sampler, hi, lo
        )

    return run


def dopri5_loop(model, settings):
    lo, hi = model.transport.interval(model.transport.sample_eps)

    def run(x, noise, labels):
        drift = guided_drift(model, settings, labels)
        return samplers.dopri5(drift, x, hi, lo, settings.atol, settings.rtol, control=settings.adaptive_control)[0]

    return run


def sde_loop(model, settings):
    schedule = SDESchedule.of(model.transport, settings)

    def run(x, noise, labels):
        velocity_and_score = guided_velocity_and_score(model, settings, labels)
        x = samplers.integrate_sde(
            velocity_and_score, x, noise, schedule.hi, schedule.lo, schedule.diffusion, settings.sampler[len("sde-") :]
        )
        return schedule.last_step(velocity_and_score, x)

    return run


# --- one step at a time: `fn(x, z, labels, i, n) -> (x, nfe)` -------------------------------


def ode_step(model, settings):
    lo, hi = model.transport.interval(model.transport.sample_eps)
    nfe = samplers.ode_nfe(settings.sampler, 1)

    def step(x, z, labels, i, n):
        x = samplers.ode_step(guided_drift(model, settings, labels), x, i, settings.num_steps, settings.sampler, hi, lo)
        return x, ops.convert_to_tensor(nfe, "int32")

    return step


def dopri5_segment(model, settings):
    """Segment `i` of `n` equal segments of the interval, solved adaptively."""
    lo, hi = model.transport.interval(model.transport.sample_eps)

    def step(x, z, labels, i, n):
        width = (hi - lo) / ops.cast(n, "float32")
        t0 = hi - ops.cast(i, "float32") * width
        drift = guided_drift(model, settings, labels)
        return samplers.dopri5(
            drift, x, t0, t0 - width, settings.atol, settings.rtol, direction=-1.0, control=settings.adaptive_control
        )

    return step


def sde_step(model, settings):
    schedule = SDESchedule.of(model.transport, settings)
    nfe = 2 if settings.sampler == "sde-heun" else 1

    def step(x, z, labels, i, n):
        velocity_and_score = guided_velocity_and_score(model, settings, labels)
        x = samplers.sde_step(
            velocity_and_score,
            x,
            z,
            i,
            settings.num_steps,
            schedule.hi,
            schedule.lo,
            schedule.diffusion,
            settings.sampler[len("sde-") :],
        )
        return x, ops.convert_to_tensor(nfe, "int32")

    return step


def sde_last_step(model, settings):
    schedule = SDESchedule.of(model.transport, settings)

    def finish(x, labels):
        return schedule.last_step(guided_velocity_and_score(model, settings, labels), x)

    return finish


def sampling_builders(settings):
    """The builders of `generate`'s whole loop and of its single step for `settings`."""
    if settings.sampler == "dopri5":
        return dopri5_loop, dopri5_segment
    return (ode_loop, ode_step) if settings.is_ode else (sde_loop, sde_step)


# --- the other direction: `fn(x, labels)` and `fn(x, labels, probes)` -------------------------


def encode_loop(model, settings):
    """The probability-flow ODE from data (`t = lo`) to noise (`t = hi`)."""
    lo, hi = model.transport.interval(model.transport.sample_eps)

    def run(x, labels):
        drift = guided_drift(model, settings, labels)
        if settings.sampler == "dopri5":
            return samplers.dopri5(
                drift, x, hi, lo, settings.atol, settings.rtol, reverse=True, control=settings.adaptive_control
            )[0]
        return samplers.integrate_ode(drift, x, settings.num_steps, settings.sampler, hi, lo, reverse=True)

    return run


def likelihood_loop(model, settings):
    """`log p(x)` by the probability-flow ODE with its divergence (exact when `probes` is None)."""
    lo, hi = model.transport.interval(model.transport.sample_eps)

    def run(x, labels, probes):
        def velocity(z, t):
            return model.transport.to_velocity(model._guide(z, t, labels, 1.0), z, t)

        probe_list = None if probes is None else [probes[k] for k in range(probes.shape[0])]
        return samplers.log_likelihood(
            velocity, x, settings.num_steps, settings.sampler, probe_list, lo, hi, settings.adaptive_control
        )[0]

    return run


class SamplingMixin:
    """The sampling methods of `SiT`.

    The host model provides `network`, `transport`, `backbone`, `data_shape`,
    `num_classes`, `sampling_seed_generator`, `has_ema`, `optimizer` (once
    compiled) and a dict `_compiled_loops`.
    """

    def guided_output(self, x_t, t, labels=None, cfg_scale=1.0, guidance_channels=None, guidance_interval=None):
        """The network's raw prediction at `(x_t, t)`, with classifier-free guidance.

        `labels` are class indices in `[0, num_classes)`; None on a
        class-conditional model asks for its unconditional prediction (the
        null class). With `cfg_scale != 1` the batch is doubled with the null
        class and `out = uncond + cfg_scale * (cond - uncond)`, on every
        channel, or on the first `guidance_channels` only (upstream guides 3
        of 4 latent channels; the rest keep the conditional output).
        `guidance_interval` `(lo, hi)` guides only examples whose `t` lies in
        it. Guidance acts on the prediction before any conversion, as upstream.
        """
        check_data(x_t, self.data_shape, "x_t")
        cfg_scale = check_number("cfg_scale", cfg_scale)
        check_positive_int("guidance_channels", guidance_channels, allow_none=True)
        if guidance_interval is not None:
            guidance_interval = check_pair("guidance_interval", guidance_interval, 0, 1)
        x_t = ops.convert_to_tensor(x_t)
        if labels is None and self.num_classes is not None:
            labels = sampling_labels(None, x_t.shape[0], self.num_classes, self.backbone.null_class)
        elif labels is not None:
            if self.num_classes is None:
                raise ValueError("`labels` are not accepted: this SiT is unconditional (num_classes=None).")
            check_labels(labels, x_t.shape[0])
            if in_memory(labels):
                check_label_values(labels, self.num_classes)
        return self._guide(x_t, t, labels, cfg_scale, guidance_channels, guidance_interval)

    def _guide(self, x_t, t, labels, cfg_scale, guidance_channels=None, guidance_interval=None):
        """`guided_output` on checked arguments; `labels` may hold the null class (the loops' unconditional case)."""
        t = time_vector(ops.convert_to_tensor(t), x_t)
        if labels is None:
            return self.network({"x_t": x_t, "t": t})
        labels = ops.convert_to_tensor(labels)
        if cfg_scale == 1.0:
            return self.network({"x_t": x_t, "t": t, "labels": labels})
        if self.backbone.null_class is None:
            raise ValueError(
                "`cfg_scale` != 1 needs a model with a null class (num_classes set and class_dropout_prob > 0)."
            )
        null = ops.full_like(labels, self.backbone.null_class)
        both = self.network(
            {
                "x_t": ops.concatenate([x_t, x_t], axis=0),
                "t": ops.concatenate([t, t], axis=0),
                "labels": ops.concatenate([labels, null], axis=0),
            }
        )
        cond, uncond = ops.split(both, 2, axis=0)
        guided = ops.add(uncond, ops.multiply(cfg_scale, ops.subtract(cond, uncond)))
        if guidance_channels is not None:
            guided = ops.concatenate([guided[..., :guidance_channels], cond[..., guidance_channels:]], axis=-1)
        if guidance_interval is not None:
            lo, hi = guidance_interval
            inside = ops.logical_and(t >= lo, t <= hi)
            guided = ops.where(per_example(inside, guided), guided, cond)
        return guided

    def velocity(self, x_t, t, labels=None, cfg_scale=1.0, **guidance):
        """The velocity field `v(x_t, t)` (probability-flow ODE drift), with guidance.

        The network's prediction (velocity, score or noise) is guided as in
        `guided_output`, then converted by the transport.
        """
        output = self.guided_output(x_t, t, labels, cfg_scale, **guidance)
        x_t = ops.convert_to_tensor(x_t)
        return self.transport.to_velocity(output, x_t, time_vector(ops.convert_to_tensor(t), x_t))

    def generate(
        self,
        num_samples,
        labels=None,
        num_steps=50,
        cfg_scale=1.0,
        seed=None,
        sampler="euler",
        guidance_channels=None,
        guidance_interval=None,
        diffusion="sigma",
        diffusion_norm=1.0,
        last_step="mean",
        last_step_size=0.04,
        atol=1e-6,
        rtol=1e-3,
        adaptive_control="batch",
        verbose="auto",
        return_trajectory=False,
        noise=None,
        clip_data=None,
        use_ema=None,
    ):
        """Draw samples, from noise at `t = 1` to data at `t = 0`.

        Args:
            num_samples: how many samples.
            labels: class of each sample (an int, or ints of shape
                `[num_samples]`) for a conditional model. None samples a
                conditional model unconditionally through its null class.
            num_steps: solver steps (ODE: `samplers.ode_nfe(sampler, num_steps)`
                model calls; SDE: one per step, two for `"sde-heun"`, plus the
                last step).
            cfg_scale: classifier-free guidance scale; 1 disables guidance.
            seed: int for reproducible samples; None continues the model's
                own sampling stream.
            sampler: ODE `"euler"`, `"midpoint"`, `"heun"`, `"rk4"`, adaptive
                `"dopri5"` (with `atol`, `rtol`; `num_steps` is then unused),
                or SDE `"sde-euler"` (Euler-Maruyama), `"sde-heun"`.
            adaptive_control: `"dopri5"`'s step-size control (see
                `samplers.dopri5`): `"batch"` (default, upstream's) shares one
                step size across the batch and needs the fewest model calls;
                `"example"` gives each sample its own, so a sample does not
                depend on the others in its batch.
            guidance_channels, guidance_interval: see `guided_output`.
            diffusion, diffusion_norm: SDE diffusion `w(t)`, one of
                `samplers.DIFFUSIONS` (upstream's CLI default `"sigma"`).
            last_step, last_step_size: the SDE's noiseless final step (None,
                `"mean"`, `"tweedie"`, `"euler"`) and its size.
            verbose: `"auto"` (the default) is 1, as in Keras' `predict`: a
                `keras.utils.Progbar` over the steps with the running NFE; 2
                prints one line at the end; 0 shows nothing and runs the
                whole loop as one compiled call, the fastest way.
            return_trajectory: also return the states along the way.
            noise: the initial state at `t = 1`, `[num_samples, *data_shape]`
                (e.g. from `encode`); None draws it from `seed`.
            clip_data: `(lo, hi)`, the data's range: each drift evaluation
                clips the clean-data estimate to it (see
                `Transport.to_velocity`). Noise and score models on the linear
                and cosine paths need it; None uses the raw estimate.
            use_ema: sample with the EMA of the weights (see `ema_weights`):
                None (default) when the model has one, True requires it,
                False uses the training weights.

        With `verbose=0` and no `return_trajectory`, the whole loop is one
        compiled call. Otherwise one compiled step is called per step (the
        same grid, so the same samples up to float rounding), and `"dopri5"`
        solves `num_steps` equal segments when keeping the trajectory (one
        otherwise).

        Returns:
            A NumPy array `[num_samples, *data_shape]` in data space, or with
            `return_trajectory`, `(samples, trajectory)`: the trajectory is
            `[T, num_samples, *data_shape]`, the initial noise then the state
            after every step (and after the SDE's last step), its last entry
            equal to `samples`.
        """
        check_positive_int("num_samples", num_samples)
        settings = SamplingSettings(
            sampler,
            num_steps,
            cfg_scale,
            guidance_channels,
            guidance_interval,
            diffusion,
            diffusion_norm,
            last_step,
            last_step_size,
            atol,
            rtol,
            clip_data,
            adaptive_control,
        )
        check_seed(seed)
        check_choice("verbose", verbose, ("auto", 0, 1, 2))
        verbose = 1 if verbose == "auto" else verbose
        check_bool("return_trajectory", return_trajectory)
        labels = self._sampling_labels(labels, num_samples, settings)
        if noise is not None:
            check_data(noise, self.data_shape, "noise")
            if noise.shape[0] != num_samples:
                raise ValueError(f"`noise` must hold `num_samples`={num_samples} states; got shape {noise.shape}.")
        weights = self._sampling_weights(use_ema)
        seed = self.sampling_seed_generator if seed is None else keras.random.SeedGenerator(seed)
        if noise is None:
            x = keras.random.normal((num_samples, *self.data_shape), seed=seed)
        else:
            x = ops.convert_to_tensor(np.asarray(noise, "float32"))
        increments = None if settings.is_ode else samplers.draw_sde_noise(settings.num_steps, tuple(x.shape), seed)
        x, labels = distribution.shard_batch(x, labels)
        with weights:
            if not (verbose or return_trajectory):
                run = self._compiled(sampling_builders(settings)[0], settings, labels is None)
                return ops.convert_to_numpy(run(x, increments, labels))
            return self._generate_stepwise(settings, x, increments, labels, verbose, return_trajectory)

    def encode(
        self,
        x,
        labels=None,
        num_steps=50,
        sampler="euler",
        cfg_scale=1.0,
        guidance_channels=None,
        guidance_interval=None,
        atol=1e-6,
        rtol=1e-3,
        adaptive_control="batch",
        use_ema=None,
    ):
        """Map data to noise: the probability-flow ODE run from `t = 0` to `t = 1`.

        The inverse of `generate` with an ODE sampler: `generate(len(x),
        labels, noise=encode(x, labels))` gives back `x` up to solver error.
        `sampler` is a fixed-step ODE method or `"dopri5"` (with `atol`,
        `rtol`, `adaptive_control`); other arguments as in `generate` (like
        it, this uses the EMA weights when there are some). Returns a NumPy
        array shaped like `x`.
        """
        check_data(x, self.data_shape, "x")
        check_finite(x, "x")  # NaN would flow through the ODE into a NaN result
        check_choice("sampler", sampler, ODE_SAMPLERS)
        settings = SamplingSettings(
            sampler,
            num_steps,
            cfg_scale,
            guidance_channels,
            guidance_interval,
            atol=atol,
            rtol=rtol,
            adaptive_control=adaptive_control,
        )
        x = ops.convert_to_tensor(np.asarray(x, "float32"))
        labels = self._sampling_labels(labels, x.shape[0], settings)
        with self._sampling_weights(use_ema):
            return ops.convert_to_numpy(self._compiled(encode_loop, settings, labels is None)(x, labels))

    def log_likelihood(
        self,
        x,
        labels=None,
        num_steps=50,
        sampler="rk4",
        divergence="auto",
        probe="rademacher",
        num_probes=1,
        seed=None,
        adaptive_control="batch",
        use_ema=None,
    ):
        """Log-density of data under the model's probability-flow ODE.

        Integrates from data (`t = 0`) to noise (`t = 1`) with the divergence
        of the velocity, so `log p(x) = log N(x_1; 0, I) + int div v dt`.

        Args:
            x: data `[B, *data_shape]`; labels: class per example for a
                conditional model (None uses the null class).
            num_steps, sampler: a fixed-step ODE method and its steps, or
                `"dopri5"` (at `atol=1e-6`, `rtol=1e-3`).
            adaptive_control: `"dopri5"`'s step-size control, as in
                `generate`; `"example"` makes each `log_p` independent of the
                rest of the batch.
            divergence: `"exact"` (one vector-Jacobian product per dimension),
                `"hutchinson"`, or `"auto"` (exact up to 64 dimensions).
            probe, num_probes, seed: Hutchinson probes (`"rademacher"` or
                `"gaussian"`), drawn once per call and fixed for the solve.
            use_ema: as in `generate`: the EMA weights when there are some.

        Returns:
            `(log_p, bits_per_dim)`: NumPy arrays `[B]`, log p in nats per
            example and `-log_p / (D ln 2)`.
        """
        check_data(x, self.data_shape, "x")
        check_finite(x, "x")
        check_choice("sampler", sampler, ODE_SAMPLERS)
        settings = SamplingSettings(sampler, num_steps, adaptive_control=adaptive_control)
        check_choice("divergence", divergence, ("auto", "exact", "hutchinson"))
        check_choice("probe", probe, ("rademacher", "gaussian"))
        check_positive_int("num_probes", num_probes)
        check_seed(seed)
        weights = self._sampling_weights(use_ema)
        x = ops.convert_to_tensor(np.asarray(x, "float32"))
        dim = int(np.prod(self.data_shape))
        labels = self._sampling_labels(labels, x.shape[0], settings)
        probes = None
        if divergence == "hutchinson" or (divergence == "auto" and dim > 64):
            generator = self.sampling_seed_generator if seed is None else keras.random.SeedGenerator(seed)
            probes = samplers.draw_probes(probe, num_probes, tuple(x.shape), generator)
        run = self._compiled(likelihood_loop, settings, labels is None, probes is None)
        with weights:
            log_p = ops.convert_to_numpy(run(x, labels, probes))
        return log_p, -log_p / (dim * np.log(2.0))

    # --- helpers ---------------------------------------------------------------------------

    def _compiled(self, builder, settings, *flags):
        """`builder(self, settings)`, compiled once per `(builder, settings, flags)`.

        `flags` are whatever else changes the traced program, e.g. whether
        there are labels.
        """
        key = (builder, settings, *flags)
        if key not in self._compiled_loops:
            self._compiled_loops[key] = backend.compile_inference(self, builder(self, settings))
        return self._compiled_loops[key]

    def _generate_stepwise(self, settings, x, noise, labels, verbose, return_trajectory):
        """`generate` one compiled step at a time, for a progress bar or the trajectory."""
        num_steps = settings.num_steps
        if settings.sampler == "dopri5" and not return_trajectory:
            num_steps = 1
        step = self._compiled(sampling_builders(settings)[1], settings, labels is None)
        progress = keras.utils.Progbar(num_steps, verbose=verbose, stateful_metrics=["nfe"], unit_name="step")
        trajectory = [ops.convert_to_numpy(x)] if return_trajectory else None
        nfe = 0
        segments = ops.convert_to_tensor(num_steps, "int32")
        for i in range(num_steps):
            z = None if noise is None else noise[i]
            x, calls = step(x, z, labels, ops.convert_to_tensor(i, "int32"), segments)
            nfe += int(ops.convert_to_numpy(calls))
            if return_trajectory:
                trajectory.append(ops.convert_to_numpy(x))
            progress.update(i + 1, values=[("nfe", nfe)])
        if noise is not None and settings.last_step is not None:  # the SDE's last step
            x = self._compiled(sde_last_step, settings, labels is None)(x, labels)
            if return_trajectory:
                trajectory.append(ops.convert_to_numpy(x))
        samples = ops.convert_to_numpy(x)
        return (samples, np.stack(trajectory)) if return_trajectory else samples

    def _sampling_labels(self, labels, num_samples, settings):
        """Checked labels as a tensor (or None), and the guidance that `settings` ask of them."""
        labels = sampling_labels(labels, num_samples, self.num_classes, self.backbone.null_class)
        if settings.cfg_scale != 1.0 and (labels is None or self.backbone.null_class is None):
            raise ValueError(
                "`cfg_scale` != 1 needs labels and a model with a null class (num_classes set and "
                "class_dropout_prob > 0)."
            )
        channels = self.data_shape[-1]
        if settings.guidance_channels is not None and settings.guidance_channels > channels:
            raise ValueError(
                f"`guidance_channels` must be an int in [1, {channels}]; got {settings.guidance_channels}."
            )
        return None if labels is None else ops.convert_to_tensor(labels)

    def _sampling_weights(self, use_ema):
        """The weights to sample with: `use_ema` None means the EMA if there is one."""
        if use_ema is not None:
            check_bool("use_ema", use_ema)
        if use_ema is False or (use_ema is None and not self.has_ema):
            return contextlib.nullcontext()
        # Raises now, before any noise is drawn, if there is no EMA.
        return ema.swapped_in(ema.ema_pairs(getattr(self, "optimizer", None), "`use_ema=True`"))
