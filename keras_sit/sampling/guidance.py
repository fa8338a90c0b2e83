"""Classifier-free guidance of a SiT's prediction, and the guided fields the samplers integrate."""

from keras import ops

from keras_sit.paths import per_example, time_vector


def guide(model, x_t, t, labels, cfg_scale, guidance_channels=None, guidance_interval=None, r=None, guidance_t=None):
    """`model`'s guided prediction at `(x_t, t)` on checked arguments (`SiT.guided_output` checks them).

    `labels` may hold the null class: the loops' unconditional case. With
    `cfg_scale != 1` the batch is doubled with the null class and
    `uncond + cfg_scale * (cond - uncond)` is returned, on the first
    `guidance_channels` (all if None), where `t` lies in `guidance_interval`.
    `r`, for a network with an interval embedding, is the start of the
    interval (the prediction is then the average velocity over `[r, t]`).
    `guidance_t`, if given, is the time tested against `guidance_interval`
    instead of `t`: a Heun corrector at `t` guided as its step's start
    (`"heun-euler-last"`, as REPA).
    """
    t = time_vector(ops.convert_to_tensor(t), x_t)
    times = {"t": t} if r is None else {"t": t, "r": time_vector(ops.convert_to_tensor(r), x_t)}
    if labels is None:
        return model.network({"x_t": x_t, **times})
    labels = ops.convert_to_tensor(labels)
    if cfg_scale == 1.0:
        return model.network({"x_t": x_t, **times, "labels": labels})
    null_class = model.backbone.null_class
    if null_class is None:
        raise ValueError(
            "`cfg_scale` != 1 needs a model with a null class (num_classes set and class_dropout_prob > 0)."
        )
    cond, uncond = conditional_and_unconditional(model, {"x_t": x_t, **times}, labels)
    guided = ops.add(uncond, ops.multiply(cfg_scale, ops.subtract(cond, uncond)))
    if guidance_channels is not None:
        guided = ops.concatenate([guided[..., :guidance_channels], cond[..., guidance_channels:]], axis=-1)
    if guidance_interval is not None:
        lo, hi = guidance_interval
        tested = t if guidance_t is None else time_vector(ops.convert_to_tensor(guidance_t), x_t)
        inside = ops.logical_and(tested >= lo, tested <= hi)
        guided = ops.where(per_example(inside, guided), guided, cond)
    return guided


def conditional_and_unconditional(model, inputs, labels):
    """`(cond, uncond)`: `model.network` on `inputs` with `labels` and with the null class.

    One call on the batch doubled with the null class.
    """
    null = ops.full_like(labels, model.backbone.null_class)
    doubled = {key: ops.concatenate([value, value], axis=0) for key, value in inputs.items()}
    both = model.network({**doubled, "labels": ops.concatenate([labels, null], axis=0)})
    return ops.split(both, 2, axis=0)


def _guided_output(model, settings, labels, x, t, guidance_t=None):
    options = (settings.cfg_scale, settings.guidance_channels, settings.guidance_interval)
    return guide(model, x, t, labels, *options, guidance_t=guidance_t)


def guided_drift(model, settings, labels):
    """The probability-flow drift `v(x, t, guidance_t=None)`, guided as `settings` say.

    `guidance_t`, if given, is the time at which `guidance_interval` is
    tested instead of `t`; the drift is marked `takes_guidance_time` so that
    a sampler passes it only to drifts that take it.
    """

    def drift(x, t, guidance_t=None):
        output = _guided_output(model, settings, labels, x, t, guidance_t)
        return model.transport.to_velocity(output, x, t, settings.clip_data)

    drift.takes_guidance_time = True
    return drift


def guided_average_velocity(model, settings, labels):
    """The average velocity `u(x, r, t)` over `[r, t]` of a network with an interval embedding, guided."""

    def average_velocity(x, r, t):
        return guide(
            model, x, t, labels, settings.cfg_scale, settings.guidance_channels, settings.guidance_interval, r=r
        )

    return average_velocity


def guided_velocity_and_score(model, settings, labels):
    """`(v, s)` at `(x, t)` from one network call, for the SDE."""

    def velocity_and_score(x, t):
        output, transport = _guided_output(model, settings, labels, x, t), model.transport
        return transport.to_velocity(output, x, t, settings.clip_data), transport.to_score(output, x, t)

    return velocity_and_score
