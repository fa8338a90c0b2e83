"""`SamplingMixin`: the sampling methods of `SiT` (`guided_output`, `velocity`, `generate`, `encode`, `log_likelihood`).

Each call validates its arguments into a `SamplingSettings`, the key of the
model's cache of compiled loops: a setting compiles once (`jax.jit`, an XLA
`tf.function`, or eager `torch.no_grad` on PyTorch, see
`backend.compile_inference`) and is reused across calls, also after further
training, because the weights are inputs of the compiled program.
"""

import contextlib

import keras
import numpy as np
from keras import ops

from keras_sit import backend, distribution
from keras_sit.backend import processes
from keras_sit.paths import time_vector
from keras_sit.sampling import loops
from keras_sit.sampling.guidance import guide
from keras_sit.sampling.likelihood import PROBES, draw_probes
from keras_sit.sampling.sde import draw_sde_noise
from keras_sit.sampling.settings import ENCODE, GENERATE, LOG_LIKELIHOOD, SamplingSettings, sampling_options
from keras_sit.training import ema
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

DIVERGENCES = ("auto", "exact", "hutchinson")
EXACT_DIVERGENCE_MAX_DIM = 64  # beyond, "auto" estimates: one vector-Jacobian product per dimension is slow


class SamplingMixin:
    """The sampling methods of `SiT`.

    The host model provides `network`, `transport`, `backbone`, `objectives`, `data_shape`,
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
        return guide(self, x_t, t, labels, cfg_scale, guidance_channels, guidance_interval)

    def velocity(self, x_t, t, labels=None, cfg_scale=1.0, **guidance):
        """The velocity field `v(x_t, t)` (probability-flow ODE drift), with guidance.

        The network's prediction (velocity, score or noise) is guided as in
        `guided_output`, then converted by the transport.
        """
        output = self.guided_output(x_t, t, labels, cfg_scale, **guidance)
        x_t = ops.convert_to_tensor(x_t)
        return self.transport.to_velocity(output, x_t, time_vector(ops.convert_to_tensor(t), x_t))

    @sampling_options(GENERATE)
    def generate(
        self, num_samples, labels=None, *, seed=None, noise=None, verbose="auto", return_trajectory=False, use_ema=None,
        **options,
    ):  # fmt: skip
        """Draw samples, from noise at `t = 1` to data at `t = 0`.

        Args:
            num_samples: how many samples.
            labels: class of each sample (an int, or ints of shape
                `[num_samples]`) for a conditional model. None samples a
                conditional model unconditionally through its null class.
            seed: int for reproducible samples; None continues the model's
                own sampling stream.
            noise: the initial state at `t = 1`, `[num_samples, *data_shape]`
                (e.g. from `encode`); None draws it from `seed`.
            verbose: `"auto"` (the default) is 1, as in Keras' `predict`: a
                `keras.utils.Progbar` over the steps with the running NFE; 2
                prints one line at the end; 0 shows nothing and runs the
                whole loop as one compiled call, the fastest way.
            return_trajectory: also return the states along the way.
            use_ema: sample with the EMA of the weights (see `ema_weights`):
                None (default) when the model has one, True requires it,
                False uses the training weights.
            **options: the sampling options below, keyword-only.

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
        default_sampler = self.objectives[0].default_sampler
        if default_sampler is not None:
            options.setdefault("sampler", default_sampler)
        settings = SamplingSettings.for_call(GENERATE, options)
        if settings.method.average_velocity and not self.backbone.interval_embedding:
            raise ValueError(
                f"`sampler={settings.sampler!r}` steps with the average velocity of a network trained with "
                "`keras_sit.objectives.MeanFlow` (interval_embedding=True); this SiT predicts a velocity: "
                "use an ODE or SDE sampler."
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
        seed = self.sampling_seed_generator if seed is None else backend.seed_generator(seed)
        if noise is None:
            x = keras.random.normal((num_samples, *self.data_shape), seed=seed)
        else:
            x = ops.convert_to_tensor(np.asarray(noise, "float32"))
        sde = settings.method.kind == "sde"
        increments = draw_sde_noise(settings.num_steps, tuple(x.shape), seed) if sde else None
        x, labels = distribution.shard_batch(x, labels)
        with weights:
            if not (verbose or return_trajectory):
                run = self._compiled(loops.generate_loop, settings, labels is None)
                return backend.to_numpy(run(x, increments, labels))
            return self._generate_stepwise(settings, x, increments, labels, verbose, return_trajectory)

    @sampling_options(ENCODE)
    def encode(self, x, labels=None, *, use_ema=None, **options):
        """Map data to noise: the probability-flow ODE run from `t = 0` to `t = 1`.

        The inverse of `generate` with an ODE sampler: `generate(len(x),
        labels, noise=encode(x, labels))` gives back `x` up to solver error.
        `sampler` is a reversible one: a fixed-step ODE method or `"dopri5"`
        (with `atol`, `rtol`, `adaptive_control`); the other options and
        `use_ema` as in `generate` (like it, this uses the EMA weights when
        there are some). Returns a NumPy array shaped like `x`.
        """
        check_data(x, self.data_shape, "x")
        check_finite(x, "x")  # NaN would flow through the ODE into a NaN result
        settings = SamplingSettings.for_call(ENCODE, options)
        x = ops.convert_to_tensor(np.asarray(x, "float32"))
        labels = self._sampling_labels(labels, x.shape[0], settings)
        with self._sampling_weights(use_ema):
            return backend.to_numpy(self._compiled(loops.encode_loop, settings, labels is None)(x, labels))

    @sampling_options(LOG_LIKELIHOOD)
    def log_likelihood(
        self, x, labels=None, *, divergence="auto", probe="rademacher", num_probes=1, seed=None, use_ema=None,
        **options,
    ):  # fmt: skip
        """Log-density of data under the model's probability-flow ODE.

        Integrates from data (`t = 0`) to noise (`t = 1`) with the divergence
        of the velocity, so `log p(x) = log N(x_1; 0, I) + int div v dt`.

        Args:
            x: data `[B, *data_shape]`; labels: class per example for a
                conditional model (None uses the null class).
            divergence: `"exact"` (one vector-Jacobian product per dimension),
                `"hutchinson"`, or `"auto"` (exact up to 64 dimensions).
            probe, num_probes, seed: Hutchinson probes (`"rademacher"` or
                `"gaussian"`), drawn once per call and fixed for the solve.
            use_ema: as in `generate`: the EMA weights when there are some.
            **options: the sampling options below, keyword-only (`"dopri5"`
                at its default tolerances; `adaptive_control="example"` makes
                each `log_p` independent of the rest of the batch).

        Returns:
            `(log_p, bits_per_dim)`: NumPy arrays `[B]`, log p in nats per
            example and `-log_p / (D ln 2)`.
        """
        check_data(x, self.data_shape, "x")
        check_finite(x, "x")
        settings = SamplingSettings.for_call(LOG_LIKELIHOOD, options)
        check_choice("divergence", divergence, DIVERGENCES)
        check_choice("probe", probe, PROBES)
        check_positive_int("num_probes", num_probes)
        check_seed(seed)
        weights = self._sampling_weights(use_ema)
        x = ops.convert_to_tensor(np.asarray(x, "float32"))
        dim = int(np.prod(self.data_shape))
        labels = self._sampling_labels(labels, x.shape[0], settings)
        probes = None
        if divergence == "hutchinson" or (divergence == "auto" and dim > EXACT_DIVERGENCE_MAX_DIM):
            generator = self.sampling_seed_generator if seed is None else backend.seed_generator(seed)
            probes = draw_probes(probe, num_probes, tuple(x.shape), generator)
        run = self._compiled(loops.likelihood_loop, settings, labels is None, probes is None)
        with weights:
            log_p = backend.to_numpy(run(x, labels, probes))
        return log_p, -log_p / (dim * np.log(2.0))

    # --- helpers ---------------------------------------------------------------------------

    def _compiled(self, builder, settings, *flags):
        """`builder(self, settings)`, compiled once per `(builder, settings, sampler, flags)`.

        `flags` are whatever else changes the traced program, e.g. whether
        there are labels; the sampler object is in the key in case its name
        is registered anew.
        """
        key = (builder, settings, settings.method, *flags)
        if key not in self._compiled_loops:
            self._compiled_loops[key] = backend.compile_inference(self, builder(self, settings))
        return self._compiled_loops[key]

    def _generate_stepwise(self, settings, x, noise, labels, verbose, return_trajectory):
        """`generate` one compiled step at a time, for a progress bar or the trajectory."""
        sampler = settings.method
        num_steps = sampler.segments(settings.num_steps, return_trajectory)
        step = self._compiled(loops.generate_step, settings, labels is None)
        # Every process of a job runs this same loop (on JAX it is one program); the chief shows it.
        shown = verbose if processes.process_index() == 0 else 0
        progress = keras.utils.Progbar(num_steps, verbose=shown, stateful_metrics=["nfe"], unit_name="step")
        trajectory = [backend.to_numpy(x)] if return_trajectory else None
        nfe = 0
        segments = ops.convert_to_tensor(num_steps, "int32")
        carry = (x, sampler.init_state(x))
        for i in range(num_steps):
            z = None if noise is None else noise[i]
            carry, calls = step(carry, z, labels, ops.convert_to_tensor(i, "int32"), segments)
            nfe += int(ops.convert_to_numpy(calls))
            if return_trajectory:
                trajectory.append(backend.to_numpy(carry[0]))
            progress.update(i + 1, values=[("nfe", nfe)])
        x = carry[0]
        if sampler.has_last_step(settings):
            x = self._compiled(loops.generate_finish, settings, labels is None)(x, labels)
            if return_trajectory:
                trajectory.append(backend.to_numpy(x))
        samples = backend.to_numpy(x)
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
