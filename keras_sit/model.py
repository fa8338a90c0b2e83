"""`SiT`: the trainable generator (`fit`, `save`, `generate`).

Training follows the Keras 3 pattern that runs unchanged on JAX, TensorFlow
and PyTorch, with `jit_compile` on or off: `call` is the objective's forward
pass (it draws `t`, the noise and the label drops from the model's
`SeedGenerator`, builds `x_t` and the target from the path and runs the
backbone), and `compute_loss` reduces it. The trainers thread the generator's
state through the compiled step, so every step draws fresh values. Sampling
lives in `keras_sit.generation`, the EMA's bookkeeping in `keras_sit.ema`.
"""

import random

import keras
import numpy as np
from keras import ops

from keras_sit import backend, ema, fused, step_guard
from keras_sit.backbone import ARCHITECTURE_DEFAULTS, SiTBackbone
from keras_sit.files import save_atomically
from keras_sit.functions import sit_loss
from keras_sit.generation import SamplingMixin
from keras_sit.optimizers import AdamW
from keras_sit.presets import preset_config
from keras_sit.transport import TRANSPORT_DEFAULTS, Transport
from keras_sit.validation import (
    SEED_LIMIT,
    check_bool,
    check_choice,
    check_data,
    check_finite,
    check_float_dtype,
    check_label_values,
    check_labels,
    check_number,
    check_seed,
    element_spec_inputs,
    in_memory,
    resolve_depth_alias,
    split_inputs,
)

EMA_DECAY = 0.9999  # the official SiT's EMA decay
TIME_CONVENTIONS = ("keras_sit", "official")


@keras.saving.register_keras_serializable(package="keras_sit")
class SiT(SamplingMixin, keras.Model):
    """Scalable Interpolant Transformer: a `SiTBackbone`, a path and the objective.

    Train with `compile()` + `fit(x)` or `fit(x, labels)` (arrays, a
    `tf.data.Dataset` of `x` or of `(x, labels)` pairs, or any input `fit`
    takes); sample with `generate()`. The data are channels-last images
    `[B, H, W, C]` (`input_shape`) or vectors `[B, D]` (`input_dim`), in the
    space the samples should come back in (for images, typically [-1, 1]).

    Args:
        time_convention: `"keras_sit"` (the network sees our `t`), or
            `"official"` for weights imported from the official PyTorch SiT
            (`keras_sit.import_official_checkpoint`): the network then sees
            `1 - t` and a velocity network's output is negated, which is
            all it takes to use (and fine-tune) official weights in our time.
        seed: seeds the weights, the training noise stream and the default
            sampling noise stream. None draws one, which is then kept in the
            config so that a saved model stays reproducible.
        **kwargs: keyword arguments of
            - `SiTBackbone`, the architecture: `input_shape` or `input_dim`,
              `patch_size`, `hidden_size`, `depth` (alias `num_layers`),
              `num_heads`, `mlp_ratio`, `num_classes`, `class_dropout_prob`,
              `learn_sigma`, `num_steps`;
            - `keras_sit.Transport`, the objective: `path` (`"linear"`,
              `x_t = (1 - t) x + t eps`, `"cosine"`, `"vp"` or a
              `keras_sit.Path`), `prediction` (`"velocity"`, `"score"` or
              `"noise"`), `loss_weight`, `train_eps`, `sample_eps`,
              `time_sampler`, `time_loc`, `time_scale`;
            - `keras.Model`: `name`, `dtype`, ...

    `model(x)` runs the objective's forward pass and returns
    `{"pred": ..., "target": ...}`; `model.velocity(x_t, t, labels)` is the
    network's velocity field, which is what samplers integrate.
    """

    def __init__(self, time_convention="keras_sit", seed=None, **kwargs):
        kwargs = resolve_depth_alias(kwargs, ARCHITECTURE_DEFAULTS["depth"])
        architecture = {name: kwargs.pop(name) for name in ARCHITECTURE_DEFAULTS if name in kwargs}
        objective = {name: kwargs.pop(name) for name in TRANSPORT_DEFAULTS if name in kwargs}
        check_seed(seed)
        seed = random.randrange(SEED_LIMIT) if seed is None else int(seed)
        transport = Transport(**objective)
        check_choice("time_convention", time_convention, TIME_CONVENTIONS)
        check_float_dtype("dtype", kwargs.get("dtype"))
        super().__init__(**kwargs)
        self.transport = transport
        self.time_convention = time_convention
        self.seed = seed
        self.backbone = SiTBackbone(**architecture, seed=seed, dtype=self.dtype_policy, name="backbone")
        self.seed_generator = keras.random.SeedGenerator(seed, name="training_seed")
        self.sampling_seed_generator = keras.random.SeedGenerator(seed + 1, name="sampling_seed")
        self._compiled_loops = {}  # see `SamplingMixin._compiled`
        # See `keras_sit.step_guard`: the first bad step of a `fit`, and of an `evaluate`.
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

    # --- Training -----------------------------------------------------------

    def compile(self, optimizer=None, loss=None, jit_compile="auto", use_ema=False, ema_decay=None, **kwargs):
        """Like `keras.Model.compile`; the optimizer defaults to the official
        AdamW (learning rate 1e-4, no weight decay) as `keras_sit.AdamW`:
        Keras' AdamW with fused kernels on PyTorch. The loss is SiT's own.

        `jit_compile="auto"` compiles the step with XLA on JAX and TensorFlow
        and runs it eager on PyTorch. Keras' own "auto" leaves XLA off for
        TensorFlow on a CPU-only machine, where XLA trains SiT about 1.6x
        faster (docs/performance.md); under a `tf.distribute` strategy with
        several replicas "auto" stays Keras' choice.

        `use_ema=True` makes the default optimizer keep an exponential moving
        average of the weights (Keras' `use_ema`, `ema_momentum=ema_decay`,
        default 0.9999 as the official SiT); `generate`, `encode` and
        `log_likelihood` then sample with it. A custom optimizer takes these
        options itself: `keras_sit.AdamW(..., use_ema=True, ema_momentum=0.9999)`.
        """
        if loss is not None:
            raise ValueError("`loss` must be None: SiT computes its own objective (see `SiT.compute_loss`).")
        check_bool("use_ema", use_ema)
        if ema_decay is not None and not use_ema:
            raise ValueError(f"`ema_decay` ({ema_decay!r}) needs `use_ema=True`.")
        decay = check_number("ema_decay", EMA_DECAY if ema_decay is None else ema_decay, 0.0, 1.0)
        if use_ema and optimizer is not None:
            raise ValueError(
                "`use_ema` configures the default optimizer only; pass it to your optimizer instead, e.g. "
                f"`keras_sit.AdamW(1e-4, weight_decay=0.0, use_ema=True, ema_momentum={decay})`."
            )
        if optimizer is None:
            optimizer = AdamW(
                learning_rate=1e-4, weight_decay=0.0, **({"use_ema": True, "ema_momentum": decay} if use_ema else {})
            )
        resolved = backend.auto_jit_compile() if jit_compile == "auto" else jit_compile
        super().compile(optimizer=optimizer, jit_compile=resolved, **kwargs)
        self._jit_compile_argument = jit_compile
        step_guard.guard_optimizer(self)

    def get_compile_config(self):
        config = super().get_compile_config()
        if not config:  # not compiled
            return config
        # Keras saves the value "auto" resolved to on this backend (True on JAX); keep the
        # argument, so that a model saved under JAX does not switch on torch.compile when
        # loaded under PyTorch.
        config = {**config, "jit_compile": getattr(self, "_jit_compile_argument", config.get("jit_compile"))}
        return _portable_compile_config(config)

    def compile_from_config(self, config):
        # Keras skips this for models that override `compile`; a loaded SiT
        # must come back compiled, with its optimizer state.
        self.compile(**keras.saving.deserialize_keras_object(_portable_compile_config(config)))
        self.optimizer.build(self.trainable_variables)

    def fit(self, x=None, y=None, *args, validation_data=None, **kwargs):
        """`keras.Model.fit`, except that with an EMA the training weights stay.

        Keras' `fit` ends by overwriting the weights with their EMA
        (`optimizer.finalize_variable_values`), so a second `fit` would
        silently restart from the average. SiT keeps the training weights (a
        second `fit` continues exactly) and the EMA in the optimizer, where
        `generate` finds it; `apply_ema()` copies it into the weights.
        """
        self._check_fit_data(x, y)
        if isinstance(validation_data, (tuple, list)) and validation_data:
            self._check_fit_data(validation_data[0], validation_data[1] if len(validation_data) > 1 else None)
        elif validation_data is not None:
            self._check_fit_data(validation_data, None)
        callbacks = [step_guard.StopOnBadStep(), *(kwargs.pop("callbacks", None) or [])]
        with self.training_record.checking("fit"), ema.training_weights_kept(getattr(self, "optimizer", None)):
            return super().fit(x, y, *args, validation_data=validation_data, callbacks=callbacks, **kwargs)

    def train_on_batch(self, x, y=None, *args, **kwargs):
        """`keras.Model.train_on_batch`; a bad batch is not applied and raises a `ValueError`."""
        with self.training_record.checking("train_on_batch"):
            return super().train_on_batch(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate`; a batch with NaN, Inf or labels outside
        `[0, num_classes)` raises a `ValueError` naming it."""
        self._check_fit_data(x, y)
        with self.evaluation_record.checking("evaluate"):
            return super().evaluate(x, y, *args, **kwargs)

    def _check_fit_data(self, x, y):
        """Check arrays, tensors and `tf.data` element specs before Keras starts.

        On JAX a `ValueError` raised while the train step is traced leaves the
        model's variables detached (Keras has moved them into the jitted
        state), so bad data must be caught before `fit`/`evaluate` begin.
        Other inputs (generators, `PyDataset`, `DataLoader`) are checked in
        the step itself.
        """
        x, y = element_spec_inputs(x, y)
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            self._check_inputs(x, y)
            if x.shape[0] == 0:
                raise ValueError(f"`x` must hold at least one example; got shape {tuple(x.shape)}.")
            # In-memory data can be checked by value too: NaN or Inf would turn every weight into
            # NaN, and a label outside the table would read past it (NaN on JAX, a crash elsewhere).
            check_finite(x, "x")
            if y is not None and self.num_classes is not None and in_memory(y):
                check_label_values(y, self.num_classes, "labels")

    def _check_inputs(self, x, labels, symbolic_build=False):
        check_data(x, self.data_shape, "x")
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

    def call(self, inputs, training=False):
        """Objective forward pass: draw `t` and noise, return prediction and target."""
        x, labels = split_inputs(inputs)
        # Keras' symbolic build of a model calls it on the raw `x` of a batch.
        self._check_inputs(x, labels, symbolic_build=isinstance(x, keras.KerasTensor))
        x = ops.cast(x, "float32")
        batch = ops.shape(x)[0]
        # Under tf.distribute, this replica's slice of the draws for the global batch.
        t = backend.per_replica_draw(batch, lambda n: self.transport.sample_time(n, seed=self.seed_generator))
        noise = backend.per_replica_draw(
            batch, lambda n: keras.random.normal((n, *ops.shape(x)[1:]), seed=self.seed_generator)
        )
        backbone_inputs = {"x_t": self.interpolant.interpolate(x, noise, t), "t": t}
        if self.num_classes is not None:
            labels = ops.zeros((batch,), "int32") if labels is None else ops.cast(ops.reshape(labels, (-1,)), "int32")
            # A label outside the table would read past it (NaN on JAX, a crash elsewhere): clamp it;
            # the step that holds it is skipped (`_labels_in_range`).
            labels = ops.clip(labels, 0, self.num_classes - 1)
            backbone_inputs["labels"] = self.drop_labels(labels) if training else labels
        outputs = {
            "pred": self.network(backbone_inputs, training=training),
            "target": self.transport.target(x, noise, t),
        }
        weight = self.transport.example_weight(t)
        if weight is not None:
            outputs["weight"] = weight
        return outputs

    def network(self, inputs, training=False):
        """The backbone's prediction in our time convention (see `time_convention`).

        Always float32: under a mixed policy the backbone runs in bf16, and
        its output is cast back so that guidance, the conversions and the
        samplers' state stay in float32.
        """
        if self.time_convention == "keras_sit":
            return ops.cast(self.backbone(inputs, training=training), "float32")
        output = ops.cast(self.backbone({**inputs, "t": ops.subtract(1.0, inputs["t"])}, training=training), "float32")
        return ops.negative(output) if self.prediction == "velocity" else output

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
        if sample_weight is not None:
            raise ValueError("`sample_weight` is not supported by SiT's objective.")
        loss = backend.per_replica_loss(sit_loss(y_pred["pred"], y_pred["target"], y_pred.get("weight")))
        # A bad batch, or any batch after one in `fit`, gets a NaN loss, hence NaN gradients, so
        # that the guarded optimizer skips it (`keras_sit.step_guard`).
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

    def _labels_in_range(self, inputs):
        """Whether the labels of a batch's `inputs` are all in `[0, num_classes)` (True without labels)."""
        _, labels = split_inputs(inputs)
        if labels is None or self.num_classes is None:
            return True
        labels = ops.reshape(labels, (-1,))
        return ops.all(ops.logical_and(labels >= 0, labels < self.num_classes))

    def _labels_into_x(self, data):
        """Keras hands labels over as `y`; the forward pass needs them in `x`."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if y is not None:
            x = {"x": x, "labels": y}
        return (x, None, sample_weight)

    def train_step(self, *args):
        # One method for every backend: JAX passes `(state, data)`, the others `(data,)`.
        step_guard.begin_step(training=True)
        return super().train_step(*args[:-1], self._labels_into_x(args[-1]))

    def test_step(self, *args):
        step_guard.begin_step(training=False)
        return super().test_step(*args[:-1], self._labels_into_x(args[-1]))

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # Runs after the optimizer in a train step, on every backend: record a skipped step.
        step = step_guard.current_step()
        if step is not None:
            labels_valid = backend.all_replicas(self._labels_in_range(x))
            outputs_finite = backend.all_replicas(fused.all_finite([y_pred["pred"], y_pred["target"]]))
            if step["training"]:
                record = self.training_record
                applied = step.get("applied", True)
            else:
                record = self.evaluation_record
                applied = ops.logical_and(labels_valid, outputs_finite)
            record.update_state(applied, labels_valid, outputs_finite)
            step_guard.end_step()
        return super().compute_metrics(x, y, y_pred, sample_weight)

    # --- EMA ----------------------------------------------------------------

    @property
    def has_ema(self):
        """Whether the optimizer holds an EMA of the weights (`use_ema` and at least one step)."""
        return ema.has_ema(getattr(self, "optimizer", None))

    def ema_weights(self):
        """Context in which the trainable weights hold their EMA.

        The training weights are copied aside and put back bit for bit on
        exit. `generate`, `encode` and `log_likelihood` use it by default;
        use it for anything else that should see the EMA, e.g.
        `with model.ema_weights(): model.evaluate(x)`.
        """
        return ema.swapped_in(ema.ema_pairs(getattr(self, "optimizer", None), "`ema_weights()`"))

    def apply_ema(self):
        """Overwrite the training weights with their EMA, for good.

        What Keras' `fit` does at its end (SiT's `fit` does not, see `fit`):
        e.g. before exporting the weights, or to keep training from the EMA.
        """
        ema.copy_in(ema.ema_pairs(getattr(self, "optimizer", None), "`apply_ema()`"))

    # --- Saving -------------------------------------------------------------

    def save(self, filepath, overwrite=True, zipped=None, **kwargs):
        """Keras' `save`, atomic: a crash while saving leaves the previous file whole.

        Keras writes the `.keras` zip straight into `filepath`, so a job killed
        mid-save would leave a truncated file where the last good checkpoint stood
        (the one `keras.callbacks.ModelCheckpoint` rewrites every epoch). A local
        `.keras` or `.h5` file is written beside it under a partial name, synced,
        and renamed onto `filepath` (`keras_sit.files.replacing`). Remote paths and
        `zipped=False` directories are saved by Keras, in place.
        """
        suffixes = (".keras", ".h5", ".hdf5")
        if zipped is False or not save_atomically(filepath, overwrite, suffixes, super().save, zipped=zipped, **kwargs):
            super().save(filepath, overwrite=overwrite, zipped=zipped, **kwargs)

    def save_weights(self, filepath, overwrite=True, **kwargs):
        """Keras' `save_weights`, atomic like `save`: Keras writes the `.weights.h5` in place.

        Sharded weights (`max_shard_size`), several files, are saved by Keras.
        """
        sharded = kwargs.get("max_shard_size") is not None
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
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            **{name: backbone[name] for name in ARCHITECTURE_DEFAULTS},
            **self.transport.get_config(),
            "time_convention": self.time_convention,
            "seed": self.seed,
        }


def _portable_compile_config(config):
    """Name the optimizer by its public class, not the backend's subclass.

    Under PyTorch, `keras.optimizers.Adam()` is an instance of a torch
    subclass whose module Keras saves; loaded under JAX or TensorFlow it
    would run torch code.
    """
    optimizer = config.get("optimizer")
    if isinstance(optimizer, dict) and str(optimizer.get("module", "")).startswith("keras.src.backend."):
        config = {**config, "optimizer": {**optimizer, "module": "keras.optimizers", "registered_name": None}}
    return config
