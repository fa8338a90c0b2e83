"""`SiT`: the trainable generator (`fit`, `save`, `generate`).

Training follows the Keras 3 pattern that runs unchanged on JAX, TensorFlow
and PyTorch, with `jit_compile` on or off: `call` is the objective's forward
pass (it draws `t`, the noise and the label drops from the model's
`SeedGenerator`, builds `x_t` and the target from the path and runs the
backbone), and `compute_loss` adds up the model's objectives
(`keras_sit.objectives`). The trainers thread the generator's state through
the compiled step, so every step draws fresh values. Sampling lives in
`keras_sit.sampling`, the step guard and the EMA's bookkeeping in
`keras_sit.training`.
"""

import random

import keras
import numpy as np
from keras import ops

from keras_sit import backend
from keras_sit.backbone import ARCHITECTURE_DEFAULTS, SiTBackbone
from keras_sit.files import chief_writes, save_atomically
from keras_sit.objectives import InterpolantLoss, Objective
from keras_sit.presets import preset_config
from keras_sit.sampling.methods import SamplingMixin
from keras_sit.training import step_guard
from keras_sit.training.trainer import TrainingMixin
from keras_sit.transport import TRANSPORT_DEFAULTS, Transport
from keras_sit.validation import (
    SEED_LIMIT,
    check_choice,
    check_data,
    check_float_dtype,
    check_labels,
    check_seed,
    resolve_depth_alias,
    split_inputs,
)

TIME_CONVENTIONS = ("keras_sit", "official")
# The defaults are declared by `SiTBackbone` and `Transport`; `SiT` shows them in its signature.
_ARCH, _PATH = ARCHITECTURE_DEFAULTS, TRANSPORT_DEFAULTS


@keras.saving.register_keras_serializable(package="keras_sit")
class SiT(TrainingMixin, SamplingMixin, keras.Model):
    """Scalable Interpolant Transformer: a `SiTBackbone`, a path and the objective.

    Train with `compile()` + `fit(x)` or `fit(x, labels)` (arrays, a
    `tf.data.Dataset` of `x` or of `(x, labels)` pairs, or any input `fit`
    takes); sample with `generate()`. The data are channels-last images
    `[B, H, W, C]` (`input_shape`) or vectors `[B, D]` (`input_dim`), in the
    space the samples should come back in (for images, typically [-1, 1]).

    Args:
        input_shape, input_dim, patch_size, hidden_size, depth, num_heads,
            mlp_ratio, num_classes, class_dropout_prob, learn_sigma,
            time_embedding_scale, interval_embedding, qk_norm: the architecture, see
            `SiTBackbone` (`num_layers` is an alias of `depth`).
            `interval_embedding=None` gives the network a second time `r`
            when the primary objective needs one (`MeanFlow`), else none.
        path, prediction, loss_weight, train_eps, sample_eps, time_sampler,
            time_loc, time_scale: the interpolant, see `keras_sit.Transport`:
            `path` `"linear"` (`x_t = (1 - t) x + t eps`), `"cosine"`, `"vp"`
            or a `keras_sit.Path`; `prediction` `"velocity"`, `"score"` or
            `"noise"`.
        objectives: the terms of the loss (`keras_sit.objectives.Objective`):
            at most one primary objective, which draws the training forward
            pass (`InterpolantLoss` when none is given; `MeanFlow` trains a
            one-step model), and further terms, added to it and logged apart
            by name.
        time_convention: `"keras_sit"` (the network sees our `t`), or
            `"official"` for weights imported from the official PyTorch SiT
            (`keras_sit.import_official_checkpoint`): the network then sees
            `1 - t` and a velocity network's output is negated, which is
            all it takes to use (and fine-tune) official weights in our time.
        seed: seeds the weights, the training noise stream and the default
            sampling noise stream. None draws one, which is then kept in the
            config so that a saved model stays reproducible.
        name, dtype, **kwargs: `keras.Model`'s.

    `model(x)` runs the objective's forward pass and returns a dict with the
    prediction `"pred"`, its `"target"`, `"t"`, `"noise"`, `"x_t"` (and the
    tokens the objectives read); `model.velocity(x_t, t, labels)` is the
    network's velocity field, which is what samplers integrate.
    """

    def __init__(
        self,
        *,
        input_shape=None,
        input_dim=None,
        patch_size=_ARCH["patch_size"],
        hidden_size=_ARCH["hidden_size"],
        depth=_ARCH["depth"],
        num_heads=_ARCH["num_heads"],
        mlp_ratio=_ARCH["mlp_ratio"],
        num_classes=None,
        class_dropout_prob=_ARCH["class_dropout_prob"],
        learn_sigma=_ARCH["learn_sigma"],
        time_embedding_scale=_ARCH["time_embedding_scale"],
        interval_embedding=None,
        qk_norm=_ARCH["qk_norm"],
        num_layers=None,
        path=_PATH["path"],
        prediction=_PATH["prediction"],
        loss_weight=_PATH["loss_weight"],
        train_eps=_PATH["train_eps"],
        sample_eps=_PATH["sample_eps"],
        time_sampler=_PATH["time_sampler"],
        time_loc=_PATH["time_loc"],
        time_scale=_PATH["time_scale"],
        objectives=(),
        time_convention="keras_sit",
        seed=None,
        name=None,
        dtype=None,
        **kwargs,
    ):
        arguments = locals()
        architecture = resolve_depth_alias(
            {key: arguments[key] for key in (*ARCHITECTURE_DEFAULTS, "num_layers") if arguments[key] is not None},
            _ARCH["depth"],
        )
        architecture.setdefault("input_shape", None)
        check_seed(seed)
        seed = random.randrange(SEED_LIMIT) if seed is None else int(seed)
        transport = Transport(**{key: arguments[key] for key in TRANSPORT_DEFAULTS})
        check_choice("time_convention", time_convention, TIME_CONVENTIONS)
        check_float_dtype("dtype", dtype)
        objectives = _objectives(objectives)
        wants_interval = objectives[0].interval_embedding
        if interval_embedding is None:
            architecture["interval_embedding"] = wants_interval
        elif wants_interval and not interval_embedding:
            raise ValueError(
                f"The objective {objectives[0].name!r} trains a network of two times (r, t): leave "
                "`interval_embedding` at None (or True)."
            )
        super().__init__(name=name, dtype=dtype, **kwargs)
        self.transport = transport
        self.time_convention = time_convention
        self.seed = seed
        self.backbone = SiTBackbone(**architecture, seed=seed, dtype=self.dtype_policy, name="backbone")
        # The primary objective first; each further term is logged under its objective's name.
        self.objectives = objectives
        for objective in self.objectives:
            beyond = [k for k in objective.token_depths if not 1 <= k <= len(self.backbone.blocks)]
            if beyond:
                raise ValueError(
                    f"The objective {objective.name!r} reads the tokens of block(s) {beyond}; this SiT has blocks "
                    f"1 to {len(self.backbone.blocks)}."
                )
            objective.check_model(self)
            if not objective.built:
                objective.build(self.backbone.token_shape)
        self.term_trackers = [keras.metrics.Mean(name=objective.name) for objective in objectives[1:]]
        self.seed_generator = keras.random.SeedGenerator(seed, name="training_seed")
        self.sampling_seed_generator = keras.random.SeedGenerator(seed + 1, name="sampling_seed")
        self._compiled_loops = {}  # see `SamplingMixin._compiled`
        # See `keras_sit.training.step_guard`: the first bad step of a `fit`, and of an `evaluate`.
        self.training_record = step_guard.StepRecord(name="training_record")
        self.evaluation_record = step_guard.StepRecord(name="evaluation_record")
        self.built = True

    @classmethod
    def from_preset(cls, name, **overrides):
        """One of the 12 official architectures (`"SiT-S/2"` ... `"SiT-XL/8"`,
        `keras_sit.presets.PRESETS`) with `overrides`; returns an instance of `cls`.

        E.g. the official ImageNet-256 model: `SiT.from_preset("SiT-XL/2",
        input_shape=(32, 32, 4), num_classes=1000, learn_sigma=True)`.
        """
        return cls(**preset_config(name, **overrides))

    @property
    def interpolant(self):
        """The `keras_sit.Path` (`Layer.path` is taken by Keras)."""
        return self.transport.path

    @property
    def prediction(self):
        return self.transport.prediction

    @property
    def num_classes(self):
        return self.backbone.num_classes

    @property
    def data_shape(self):
        return self.backbone.data_shape

    @property
    def input_dtype(self):
        # Under a mixed policy Keras would round the data to bf16 before `call`;
        # the target and the loss are computed from float32 data.
        return "float32"

    def _check_inputs(self, x, labels, symbolic_build=False, traced=False):
        check_data(x, self.data_shape, "x", static=traced)
        if self.num_classes is None:
            if labels is not None:
                raise ValueError(
                    "`labels` were given, but this SiT is unconditional (num_classes=None). "
                    "Pass `num_classes` to train a class-conditional model."
                )
        elif labels is not None:
            check_labels(labels, x.shape[0])
        elif not symbolic_build:
            raise ValueError(
                f"This SiT is class-conditional (num_classes={self.num_classes}): pass labels, "
                "e.g. `fit(x, labels)` or a dataset of `(x, labels)` pairs."
            )

    @property
    def extra_inputs(self):
        """The per-example inputs besides `x` and `labels` that the objectives read (dict keys of `x`)."""
        return tuple(sorted({key for objective in self.objectives for key in objective.extra_inputs}))

    @property
    def token_depths(self):
        """The backbone blocks whose tokens the objectives read, sorted."""
        return tuple(sorted({depth for objective in self.objectives for depth in objective.token_depths}))

    def call(self, inputs, training=False):
        """The primary objective's forward pass: the draws, the prediction, its target and what the objectives read."""
        x, labels = split_inputs(inputs, self.extra_inputs)
        # Keras' symbolic build of a model calls it on the raw `x` of a batch.
        symbolic = isinstance(x, keras.KerasTensor)
        self._check_inputs(x, labels, symbolic_build=symbolic, traced=not symbolic)
        x = ops.cast(x, "float32")
        if self.num_classes is None:
            labels = None
        else:
            labels = (
                ops.zeros((ops.shape(x)[0],), "int32")
                if labels is None
                else ops.cast(ops.reshape(labels, (-1,)), "int32")
            )
            # A label outside the table would read past it (NaN on JAX, a crash elsewhere): clamp it;
            # the step that holds it is skipped (`_labels_in_range`).
            labels = ops.clip(labels, 0, self.num_classes - 1)
        return self.objectives[0].forward(self, x, labels, training=training)

    def network(self, inputs, training=False, token_depths=None):
        """The backbone's prediction in our time convention (see `time_convention`).

        Always float32: under a mixed policy the backbone runs in bf16, and
        its output is cast back so that guidance, the conversions and the
        samplers' state stay in float32. With `token_depths` (a tuple, maybe
        empty), returns `(prediction, tokens)` as
        `SiTBackbone.call_with_tokens` does. A backbone with an interval
        embedding reads `inputs["r"]`; without one, `r = t`: the velocity.
        """
        if self.backbone.interval_embedding and "r" not in inputs:
            inputs = {**inputs, "r": inputs["t"]}
        if self.time_convention == "official":
            inputs = {**inputs, **{key: ops.subtract(1.0, inputs[key]) for key in ("t", "r") if key in inputs}}
        output, tokens = self.backbone.call_with_tokens(inputs, training=training, token_depths=token_depths or ())
        output = ops.cast(output, "float32")
        if self.time_convention == "official" and self.prediction == "velocity":
            output = ops.negative(output)
        return output if token_depths is None else (output, tokens)

    def drop_labels(self, labels):
        """Replace each label by the null class with probability `class_dropout_prob`.

        This is how the model learns the unconditional velocity that
        classifier-free guidance needs. A no-op without a null class.
        """
        if self.backbone.null_class is None:
            return labels
        uniform = backend.per_replica_draw(
            ops.shape(labels)[0], lambda n: keras.random.uniform((n, *ops.shape(labels)[1:]), seed=self.seed_generator)
        )
        drop = uniform < self.backbone.class_dropout_prob
        return ops.where(drop, self.backbone.null_class, labels)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The weighted sum of the objectives' terms (`keras_sit.objectives`)."""
        if sample_weight is not None:
            raise ValueError("`sample_weight` is not supported by SiT's objective.")
        batch = self._batch(x)
        terms = [objective.term(batch, y_pred, training=training) for objective in self.objectives]
        for tracker, term in zip(self.term_trackers, terms[1:]):
            tracker.update_state(term)
        loss = backend.per_replica_loss(sum(objective.weight * term for objective, term in zip(self.objectives, terms)))
        # A bad batch, or any batch after one in `fit`, gets a NaN loss, hence NaN gradients, so
        # that the train step skips it (`keras_sit.training.step_guard`).
        valid = self._labels_in_range(x)
        if training:
            valid = ops.logical_and(valid, ops.logical_not(self.training_record.halted))
        loss = loss * ops.where(valid, 1.0, float("nan"))
        # Read `self.losses` once: torch.compile traced the truth test and the
        # stack as two different lists and stacked an empty one.
        extra_losses = list(self.losses)
        if extra_losses:
            loss = loss + ops.sum(ops.stack(extra_losses))
        return loss

    def _batch(self, inputs):
        """The batch as the objectives read it: `x` (float32), `labels` and the extra inputs."""
        x, labels = split_inputs(inputs, self.extra_inputs)
        batch = {"x": None if x is None else ops.cast(x, "float32"), "labels": labels}
        for key in self.extra_inputs:
            if not isinstance(inputs, dict) or key not in inputs:
                raise ValueError(
                    f"This SiT's objectives read the per-example input {key!r}: pass `x` as a dict "
                    f"{{'x': ..., {key!r}: ...}}."
                )
            batch[key] = inputs[key]
        return batch

    def _labels_in_range(self, inputs):
        """Whether the labels of a batch's `inputs` are all in `[0, num_classes)` (True without labels)."""
        _, labels = split_inputs(inputs, self.extra_inputs)
        if labels is None or self.num_classes is None:
            return True
        labels = ops.reshape(labels, (-1,))
        return ops.all(ops.logical_and(labels >= 0, labels < self.num_classes))

    # --- Saving -------------------------------------------------------------

    def save(self, filepath, overwrite=True, zipped=None, **kwargs):
        """Keras' `save`, atomic: a crash while saving leaves the previous file whole.

        Keras writes the `.keras` zip straight into `filepath`, so a job killed
        mid-save would leave a truncated file where the last good checkpoint stood
        (the one `keras.callbacks.ModelCheckpoint` rewrites every epoch). A local
        `.keras` or `.h5` file is written beside it under a partial name, synced,
        and renamed onto `filepath` (`keras_sit.files.replacing`). Remote paths and
        `zipped=False` directories are saved by Keras, in place.

        In a job of several processes every process calls `save` (on JAX and
        TensorFlow it is a collective); only the chief writes `filepath`.
        """
        suffixes = (".keras", ".h5", ".hdf5")
        with chief_writes(filepath) as filepath:
            if zipped is False or not save_atomically(
                filepath, overwrite, suffixes, super().save, zipped=zipped, **kwargs
            ):
                super().save(filepath, overwrite=overwrite, zipped=zipped, **kwargs)

    def save_weights(self, filepath, overwrite=True, **kwargs):
        """Keras' `save_weights`, atomic like `save`: Keras writes the `.weights.h5` in place.

        Sharded weights (`max_shard_size`), several files, are saved by Keras.
        In a job of several processes, every process calls it and the chief writes.
        """
        sharded = kwargs.get("max_shard_size") is not None
        with chief_writes(filepath) as filepath:
            if sharded or not save_atomically(filepath, overwrite, (".weights.h5",), super().save_weights, **kwargs):
                super().save_weights(filepath, overwrite=overwrite, **kwargs)

    def save_own_variables(self, store):
        # Keras saves no SeedGenerator state; keep it so that a resumed `fit`
        # continues the noise stream instead of repeating it.
        for name, generator in self._noise_streams():
            store[name] = np.asarray(ops.convert_to_numpy(generator.state), "int64")

    def load_own_variables(self, store):
        for name, generator in self._noise_streams():
            if name in store:
                generator.state.assign(ops.cast(np.asarray(store[name]), generator.state.dtype))

    def _noise_streams(self):
        return [("training_seed_state", self.seed_generator), ("sampling_seed_state", self.sampling_seed_generator)]

    def get_config(self):
        backbone = self.backbone.get_config()
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            **{name: backbone[name] for name in ARCHITECTURE_DEFAULTS},
            **self.transport.get_config(),
            "time_convention": self.time_convention,
            "seed": self.seed,
        }
        # The default primary objective is left out, so that a plain SiT's config stays as it was.
        first = self.objectives[0]
        default = type(first) is InterpolantLoss and (first.name, first.weight) == ("interpolant_loss", 1.0)
        objectives = self.objectives[1:] if default else self.objectives
        if objectives:
            config["objectives"] = [keras.saving.serialize_keras_object(o) for o in objectives]
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "num_steps" in config:  # files that call the time-embedding scale `num_steps`
            config["time_embedding_scale"] = config.pop("num_steps")
        return cls(**config)


def _objectives(objectives):
    """The objectives as a list of `Objective`s (serialized ones deserialized), the primary one first.

    `InterpolantLoss()` is the primary objective when none is given.
    """
    if isinstance(objectives, Objective):
        objectives = [objectives]
    objectives = [keras.saving.deserialize_keras_object(o) if isinstance(o, dict) else o for o in objectives]
    for objective in objectives:
        if not isinstance(objective, Objective):
            raise TypeError(f"`objectives` must be `keras_sit.objectives.Objective`s; got {objective!r}.")
    primary = [objective for objective in objectives if objective.primary]
    if len(primary) > 1:
        raise ValueError(
            f"`objectives` may hold one primary objective (it draws the forward pass); got {[o.name for o in primary]}."
        )
    objectives = [*primary, *(objective for objective in objectives if not objective.primary)]
    if not primary:
        objectives.insert(0, InterpolantLoss())
    names = [objective.name for objective in objectives]
    if len(set(names)) != len(names) or "loss" in names:
        raise ValueError(f"`objectives` need distinct names other than 'loss' (they name the logs); got {names}.")
    return objectives
