"""`MeanFlow`: train the network on the average velocity over a time interval, for 1-2 step sampling.

MeanFlow (Geng et al., 2025, "Mean Flows for One-step Generative
Modeling") trains `u(z_t, r, t)`, the average of the path's velocity over
`[r, t]`, from the identity `u = v - (t - r) du/dt`, where `du/dt` is the
total derivative along the flow (`dz/dt = v`, `dt/dt = 1`, `dr/dt = 0`),
taken with one forward-mode product (`keras.ops.jvp`) and held fixed as the
target. A sample is then `z_r = z_t - (t - r) u(z_t, r, t)` over as few
intervals as one (`generate(..., sampler="mean-flow")`). The time
convention is keras_sit's and the paper's alike: data at `t = 0`, noise at
`t = 1`.

This follows the official JAX code (github Gsunshine/meanflow,
`meanflow.py`) step for step: its draws of `(t, r)`, its label drops (the
first examples of the batch), its guided target and its adaptive weight, so
that the defaults are the paper's.
"""

import keras
from keras import ops

from keras_sit import backend
from keras_sit.objectives.base import Objective
from keras_sit.paths import broadcast_time, per_example
from keras_sit.sampling.guidance import conditional_and_unconditional
from keras_sit.validation import check_choice, check_number, check_pair

TIME_SAMPLERS = ("logit_normal", "uniform")


@keras.saving.register_keras_serializable(package="keras_sit")
class MeanFlow(Objective):
    """The MeanFlow objective: the primary objective of a one-step SiT.

    `SiT(objectives=[MeanFlow()])` gives the network a second time `r`
    (`interval_embedding`: an embedding of `t - r`, as the paper's best
    variant) and trains it on MeanFlow's target; `generate(num_steps=1)`
    then samples in one network call. With `r = t` the network is an
    ordinary flow model's velocity, so every other sampler, `encode` and
    `log_likelihood` work on it too. Build the SiT with
    `time_embedding_scale=1.0`: the official network embeds raw times, and
    with SiT's default of 1000 the embedding of `t - r` varies too fast to
    train one-step jumps reliably (docs/few-step.md has the figures).

    Args:
        flow_fraction: the fraction of each batch trained with `r = t`, i.e.
            on the instantaneous velocity (the paper's 75%: 25% have
            `r != t`). The first `floor(B * flow_fraction)` examples.
        time_sampler: `"logit_normal"` (`sigmoid(N(time_loc, time_scale))`)
            or `"uniform"`: `t` and `r` are two draws, sorted so that `r <= t`.
        time_loc, time_scale: the logit-normal's mean and deviation (the
            paper's (-0.4, 1.0)).
        adaptive_power: the power `p` of the adaptive weight: each example's
            squared error (summed over its values) `l` is divided by
            `stopgrad((l + adaptive_eps)^p)`; 0 is a plain sum of squares.
        adaptive_eps: see `adaptive_power` (the paper's 0.01).
        omega, kappa: classifier-free guidance folded into the target, so
            that sampling needs no second call: the velocity target becomes
            `omega v + kappa v_cond + (1 - omega - kappa) v_uncond`, where
            `v_cond` and `v_uncond` are the network's own velocity (`r = t`)
            with the example's label and with the null class (held fixed).
            The effective guidance scale is `omega / (1 - kappa)`; 1 and 0
            (the default) is no guidance. Needs a class-conditional model
            with a null class (`class_dropout_prob > 0`, the drop rate of
            the labels).
        guidance_interval: `(lo, hi)`: guide the target only where `t` lies
            in it (elsewhere `omega = 1`, `kappa = 0`).
        weight, name, **kwargs: as every `Objective`.
    """

    primary = True
    interval_embedding = True
    default_sampler = "mean-flow"

    def __init__(
        self,
        flow_fraction=0.75,
        time_sampler="logit_normal",
        time_loc=-0.4,
        time_scale=1.0,
        adaptive_power=1.0,
        adaptive_eps=0.01,
        omega=1.0,
        kappa=0.0,
        guidance_interval=(0.0, 1.0),
        weight=1.0,
        name="mean_flow",
        **kwargs,
    ):
        super().__init__(weight=weight, name=name, **kwargs)
        self.flow_fraction = check_number("flow_fraction", flow_fraction, 0.0, 1.0)
        check_choice("time_sampler", time_sampler, TIME_SAMPLERS)
        self.time_sampler = time_sampler
        self.time_loc = check_number("time_loc", time_loc)
        self.time_scale = check_number("time_scale", time_scale, low=0.0, include_low=False)
        self.adaptive_power = check_number("adaptive_power", adaptive_power, low=0.0)
        self.adaptive_eps = check_number("adaptive_eps", adaptive_eps, low=0.0)
        if self.adaptive_power > 0 and self.adaptive_eps == 0:
            raise ValueError("`adaptive_eps` must be > 0 when `adaptive_power` > 0 (it keeps the weight finite).")
        self.omega = check_number("omega", omega)
        self.kappa = check_number("kappa", kappa)
        if self.kappa >= 1.0:
            raise ValueError(f"`kappa` must be < 1 (the guidance scale is omega / (1 - kappa)); got {kappa}.")
        self.guidance_interval = check_pair("guidance_interval", guidance_interval, 0, 1)

    @property
    def guided(self):
        """Whether the target folds in classifier-free guidance."""
        return (self.omega, self.kappa) != (1.0, 0.0)

    def check_model(self, model):
        problems = []
        if model.prediction != "velocity":
            problems.append(f"prediction='velocity' (got {model.prediction!r})")
        if model.time_convention != "keras_sit":
            problems.append(f"time_convention='keras_sit' (got {model.time_convention!r})")
        transport = model.transport
        if (transport.time_sampler, transport.time_loc, transport.time_scale) != ("uniform", 0.0, 1.0):
            problems.append("the transport's time sampler left at its default (set MeanFlow's `time_*` instead)")
        if self.guided and model.backbone.null_class is None:
            problems.append("a null class for `omega`/`kappa` guidance (num_classes set, class_dropout_prob > 0)")
        if problems:
            raise ValueError(f"The MeanFlow objective {self.name!r} needs a SiT with " + "; ".join(problems) + ".")

    # --- draws ----------------------------------------------------------------------------

    def sample_times(self, batch_size, seed):
        """`(t, r)`, each `[B]`, `r <= t`, and `r = t` for the first `floor(B * flow_fraction)` examples."""

        def draw(n):
            if self.time_sampler == "logit_normal":
                times = ops.sigmoid(self.time_loc + self.time_scale * keras.random.normal((2, n), seed=seed))
            else:
                times = keras.random.uniform((2, n), seed=seed)
            t, r = ops.maximum(times[0], times[1]), ops.minimum(times[0], times[1])
            if isinstance(n, int):
                count = int(n * self.flow_fraction)  # as the official code
            else:  # a batch size known only at run time
                count = ops.cast(ops.floor(ops.cast(n, "float32") * self.flow_fraction), "int32")
            flow = ops.arange(n) < count
            return ops.stack([t, ops.where(flow, t, r)], axis=1)

        times = backend.per_replica_draw(batch_size, draw)
        return times[:, 0], times[:, 1]

    def sample_drops(self, batch_size, probability, seed):
        """`[B]` booleans: the first `k` examples, `k` ~ Binomial(B, probability), as the official code drops labels."""

        def draw(n):
            count = ops.sum(ops.cast(keras.random.uniform((n,), seed=seed) < probability, "int32"))
            return ops.arange(n) < count

        return backend.per_replica_draw(batch_size, draw)

    # --- forward pass ---------------------------------------------------------------------

    def forward(self, model, x, labels, training=False):
        seed, batch = model.seed_generator, ops.shape(x)[0]
        t, r = self.sample_times(batch, seed)
        noise = backend.per_replica_draw(batch, lambda n: keras.random.normal((n, *ops.shape(x)[1:]), seed=seed))
        dropped = None
        if training and labels is not None and model.backbone.null_class is not None:
            dropped = self.sample_drops(batch, model.backbone.class_dropout_prob, seed)
        return self.forward_with(model, x, labels, t, r, noise, dropped, training=training)

    def forward_with(self, model, x, labels, t, r, noise, dropped=None, training=False):
        """The forward pass for given draws: times `t`, `r` `[B]`, `noise` like `x`, `dropped` `[B]` booleans or None.

        Returns the dict that `term` reads: the average velocity `"pred"`
        `u(x_t, r, t)`, its `"target"` `v - (t - r) du/dt` (held fixed), and
        `"t"`, `"r"`, `"noise"`, `"x_t"`, `"velocity"` (the guided `v`).
        """
        x, noise, t, r = (ops.convert_to_tensor(value, "float32") for value in (x, noise, t, r))
        if labels is not None:
            labels = ops.convert_to_tensor(labels, "int32")
        if dropped is not None:
            dropped = ops.convert_to_tensor(dropped, "bool")
        path = model.interpolant
        x_t = path.interpolate(x, noise, t)
        velocity = unguided = path.velocity(x, noise, t)
        if labels is not None and self.guided:
            velocity = self._guided_velocity(model, x_t, t, labels, unguided)
        if dropped is not None:
            labels = ops.where(dropped, model.backbone.null_class, labels)
            velocity = ops.where(per_example(dropped, velocity), unguided, velocity)
        depths = model.token_depths

        def average_velocity(z, t_, r_):
            inputs = {"x_t": z, "t": t_, "r": r_}
            if labels is not None:
                inputs["labels"] = labels
            return model.network(inputs, training=training, token_depths=depths)

        (u, tokens), (du_dt, _) = backend.jvp(
            average_velocity, (x_t, t, r), (velocity, ops.ones_like(t), ops.zeros_like(r))
        )
        interval = broadcast_time(ops.clip(t - r, 0.0, 1.0), u)
        target = ops.stop_gradient(velocity - interval * du_dt)
        outputs = {"pred": u, "target": target, "t": t, "r": r, "noise": noise, "x_t": x_t, "velocity": velocity}
        if tokens:
            outputs["tokens"] = tokens
        return outputs

    def _guided_velocity(self, model, x_t, t, labels, velocity):
        """`omega v + kappa v_cond + (1 - omega - kappa) v_uncond` inside `guidance_interval`, else `v`."""
        null = ops.full_like(labels, model.backbone.null_class)
        lo, hi = self.guidance_interval
        inside = ops.logical_and(t >= lo, t <= hi)
        omega = broadcast_time(ops.where(inside, self.omega, 1.0), velocity)
        kappa = broadcast_time(ops.where(inside, self.kappa, 0.0), velocity)
        if not self.kappa:
            unconditional = ops.stop_gradient(model.network({"x_t": x_t, "t": t, "labels": null}))
            return omega * velocity + (1.0 - omega) * unconditional
        conditional, unconditional = conditional_and_unconditional(model, {"x_t": x_t, "t": t}, labels)
        conditional, unconditional = ops.stop_gradient(conditional), ops.stop_gradient(unconditional)
        return omega * velocity + (1.0 - omega - kappa) * unconditional + kappa * conditional

    def term(self, batch, forward, training=False):
        """Mean over the batch of each example's squared error, summed over its values, adaptively weighted."""
        error = ops.square(forward["pred"] - forward["target"])
        loss = ops.sum(ops.reshape(error, (ops.shape(error)[0], -1)), axis=1)
        if self.adaptive_power:
            loss = loss / ops.stop_gradient(ops.power(loss + self.adaptive_eps, self.adaptive_power))
        return ops.mean(loss)

    def get_config(self):
        return {
            **super().get_config(),
            "flow_fraction": self.flow_fraction,
            "time_sampler": self.time_sampler,
            "time_loc": self.time_loc,
            "time_scale": self.time_scale,
            "adaptive_power": self.adaptive_power,
            "adaptive_eps": self.adaptive_eps,
            "omega": self.omega,
            "kappa": self.kappa,
            "guidance_interval": list(self.guidance_interval),
        }
