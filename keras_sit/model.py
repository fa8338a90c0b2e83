"""`SiT`: the trainable generator (`fit`, `save`, `generate`).

Training follows the Keras 3 pattern that runs unchanged on JAX, TensorFlow
and PyTorch, with `jit_compile` on or off: `call` is the objective's forward
pass (it draws `t`, the noise and the label drops from the model's
`SeedGenerator`, builds `x_t` and the target from the path and runs the
backbone), and `compute_loss` reduces it. The trainers thread the generator's
state through the compiled step, so every step draws fresh values.
"""

import collections
import contextlib
import random

import keras
import numpy as np
from keras import ops

from keras_sit import backend, samplers
from keras_sit.optimizers import AdamW
from keras_sit.backbone import SiTBackbone
from keras_sit.functions import sit_loss
from keras_sit.paths import get_path
from keras_sit.transport import Transport

EMA_DECAY = 0.9999  # the official SiT's EMA decay


@keras.saving.register_keras_serializable(package="keras_sit")
class SiT(keras.Model):
    """Scalable Interpolant Transformer: a `SiTBackbone`, a path and the objective.

    Train with `compile()` + `fit(x)` or `fit(x, labels)` (arrays, a
    `tf.data.Dataset` of `x` or of `(x, labels)` pairs, or any input `fit`
    takes); sample with `generate()`. The data are channels-last images
    `[B, H, W, C]` (`input_shape`) or vectors `[B, D]` (`input_dim`), in the
    space the samples should come back in (for images, typically [-1, 1]).

    Args:
        input_shape, input_dim, patch_size, hidden_size, depth, num_heads,
            mlp_ratio, num_classes, class_dropout_prob, learn_sigma, num_steps:
            see `SiTBackbone`. `num_layers` is accepted as an alias of `depth`.
        path: `"linear"` (`x_t = (1 - t) x + t eps`), `"cosine"`, `"vp"`, or
            a `keras_sit.Path` instance.
        prediction: what the network predicts: `"velocity"`, `"score"` or
            `"noise"`.
        loss_weight, train_eps, sample_eps, time_sampler, time_loc, time_scale:
            the objective; see `keras_sit.transport.Transport`.
        time_convention: `"keras_sit"` (the network sees our `t`), or
            `"official"` for weights imported from the official PyTorch SiT
            (`keras_sit.import_official_checkpoint`): the network then sees
            `1 - t` and a velocity network's output is negated, which is
            all it takes to use (and fine-tune) official weights in our time.
        seed: seeds the weights, the training noise stream and the default
            sampling noise stream. None draws one, which is then kept in the
            config so that a saved model stays reproducible.

    `model(x)` runs the objective's forward pass and returns
    `{"pred": ..., "target": ...}`; `model.velocity(x_t, t, labels)` is the
    network's velocity field, which is what samplers integrate.
    """

    def __init__(
        self,
        input_shape=None,
        input_dim=None,
        patch_size=2,
        hidden_size=256,
        depth=6,
        num_heads=4,
        mlp_ratio=4.0,
        num_classes=None,
        class_dropout_prob=0.1,
        learn_sigma=False,
        num_steps=1000,
        path="linear",
        prediction="velocity",
        loss_weight=None,
        train_eps=None,
        sample_eps=None,
        time_sampler="uniform",
        time_loc=0.0,
        time_scale=1.0,
        time_convention="keras_sit",
        seed=None,
        num_layers=None,
        **kwargs,
    ):
        if num_layers is not None:
            if depth not in (6, num_layers):
                raise ValueError(f"`num_layers` is an alias of `depth`; got depth={depth}, num_layers={num_layers}.")
            depth = num_layers
        if seed is None:
            seed = random.randint(0, 2**31 - 2)
        elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"`seed` must be an int or None; got {seed!r}.")
        elif not 0 <= seed < 2**31 - 1:
            raise ValueError(f"`seed` must be in [0, 2**31 - 1) (it seeds int32 generators); got {seed}.")
        self._path_arg = path if isinstance(path, str) else keras.saving.serialize_keras_object(get_path(path))
        self._eps_args = (train_eps, sample_eps)  # as given: None means "the official default"
        transport = Transport(path, prediction, loss_weight, train_eps, sample_eps, time_sampler, time_loc, time_scale)
        if time_convention not in ("keras_sit", "official"):
            raise ValueError(f"`time_convention` must be 'keras_sit' or 'official'; got {time_convention!r}.")
        super().__init__(**kwargs)
        self.time_convention = time_convention
        self.transport = transport
        self.interpolant = transport.path  # `Layer.path` is taken by Keras
        self.prediction = prediction
        self.seed = int(seed)
        self.backbone = SiTBackbone(
            input_shape=input_shape,
            input_dim=input_dim,
            patch_size=patch_size,
            hidden_size=hidden_size,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            num_classes=num_classes,
            class_dropout_prob=class_dropout_prob,
            learn_sigma=learn_sigma,
            num_steps=num_steps,
            seed=self.seed,
            dtype=self.dtype_policy,
            name="backbone",
        )
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="training_seed")
        self.sampling_seed_generator = keras.random.SeedGenerator(self.seed + 1, name="sampling_seed")
        self._sampling_functions = {}  # compiled sampling loops, by settings
        self.built = True

    @classmethod
    def from_preset(cls, name, **overrides):
        """One of the 12 official architectures (`"SiT-S/2"` ... `"SiT-XL/8"`);
        see `keras_sit.presets`. E.g. the official ImageNet-256 model:
        `SiT.from_preset("SiT-XL/2", input_shape=(32, 32, 4), num_classes=1000, learn_sigma=True)`.
        """
        from keras_sit.presets import sit_from_preset

        return sit_from_preset(name, **overrides)

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

        `jit_compile="auto"` is Keras' choice: XLA on JAX, eager on PyTorch,
        and on TensorFlow XLA except on a CPU-only machine. There, pass
        `jit_compile=True`: SiT-S/2 (batch 16, 2-core CPU) trained at 62% of
        the matmul peak with XLA against 52% without, five runs each
        (`benchmarks/benchmark.py --jit-compile true/false`).

        `use_ema=True` makes the default optimizer keep an exponential moving
        average of the weights (Keras' `use_ema`, `ema_momentum=ema_decay`,
        default 0.9999 as the official SiT); `generate`, `encode` and
        `log_likelihood` then sample with it. A custom optimizer takes these
        options itself: `keras_sit.AdamW(..., use_ema=True, ema_momentum=0.9999)`.
        """
        if loss is not None:
            raise ValueError("`loss` must be None: SiT computes its own objective (see `SiT.compute_loss`).")
        if not isinstance(use_ema, bool):
            raise TypeError(f"`use_ema` must be a bool; got {use_ema!r}.")
        if ema_decay is not None and not use_ema:
            raise ValueError(f"`ema_decay` ({ema_decay!r}) needs `use_ema=True`.")
        decay = EMA_DECAY if ema_decay is None else ema_decay
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"`ema_decay` must be a number in [0, 1); got {ema_decay!r}.")
        if use_ema and optimizer is not None:
            raise ValueError(
                "`use_ema` configures the default optimizer only; pass it to your optimizer instead, e.g. "
                f"`keras_sit.AdamW(1e-4, weight_decay=0.0, use_ema=True, ema_momentum={decay})`."
            )
        if optimizer is None:
            ema = {"use_ema": True, "ema_momentum": float(decay)} if use_ema else {}
            optimizer = AdamW(learning_rate=1e-4, weight_decay=0.0, **ema)
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)
        # Keras saves the value "auto" resolved to on this backend (True on JAX);
        # keep "auto" so that a model saved under JAX does not switch on
        # torch.compile when it is loaded under PyTorch.
        self._compile_config.config["jit_compile"] = jit_compile

    def get_compile_config(self):
        return _portable_compile_config(super().get_compile_config())

    def compile_from_config(self, config):
        # Keras skips this for models that override `compile`; a loaded SiT
        # must come back compiled, with its optimizer state.
        self.compile(**keras.saving.deserialize_keras_object(_portable_compile_config(config)))
        self.optimizer.build(self.trainable_variables)

    def _split_inputs(self, inputs):
        """`x`, `(x, labels)` or `{"x": x, "labels": labels}` -> `(x, labels)`, checked."""
        if isinstance(inputs, dict):
            unknown = set(inputs) - {"x", "labels"}
            if "x" not in inputs or unknown:
                raise ValueError(f"Dict inputs take the keys 'x' and 'labels'; got {sorted(inputs)}.")
            x, labels = inputs["x"], inputs.get("labels")
        elif isinstance(inputs, (tuple, list)):
            if len(inputs) != 2:
                raise ValueError(f"Tuple inputs must be `(x, labels)`; got {len(inputs)} elements.")
            x, labels = inputs
        else:
            x, labels = inputs, None
        # Keras' symbolic build of a model calls it on the raw `x` of a batch.
        self._check_inputs(x, labels, symbolic_build=isinstance(x, keras.KerasTensor))
        return x, labels

    def _check_inputs(self, x, labels, symbolic_build=False):
        """Static checks on anything with `.shape` and `.dtype` (tensors, arrays, `tf.TensorSpec`)."""
        check_data(x, self.data_shape, "x")
        if self.num_classes is None:
            if labels is not None:
                raise ValueError(
                    "`labels` were given, but this SiT is unconditional (num_classes=None). "
                    "Pass `num_classes` to train a class-conditional model."
                )
        elif labels is not None:
            check_labels(labels, x.shape[0], "labels")
        elif not symbolic_build:
            raise ValueError(
                f"This SiT is class-conditional (num_classes={self.num_classes}): pass labels, "
                "e.g. `fit(x, labels)` or a dataset of `(x, labels)` pairs."
            )

    def _check_fit_data(self, x, y):
        """Check arrays, tensors and `tf.data` element specs before Keras starts.

        On JAX a `ValueError` raised while the train step is traced leaves the
        model's variables detached (Keras has moved them into the jitted
        state), so bad data must be caught before `fit`/`evaluate` begin.
        Other inputs (generators, `PyDataset`, `DataLoader`) are checked in
        the step itself.
        """
        if hasattr(x, "element_spec"):  # tf.data.Dataset
            spec = x.element_spec
            x, y = (spec[0], spec[1] if len(spec) > 1 else None) if isinstance(spec, tuple) else (spec, None)
        if isinstance(x, dict):
            x, y = x.get("x"), x.get("labels", y)
        if hasattr(x, "shape") and hasattr(x, "dtype"):
            self._check_inputs(x, y)

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
        with _keep_training_weights(getattr(self, "optimizer", None)):
            return super().fit(x, y, *args, validation_data=validation_data, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        self._check_fit_data(x, y)
        return super().evaluate(x, y, *args, **kwargs)

    def call(self, inputs, training=False):
        """Objective forward pass: draw `t` and noise, return prediction and target."""
        x, labels = self._split_inputs(inputs)
        x = ops.cast(x, "float32")
        batch = ops.shape(x)[0]
        t = self.transport.sample_time(batch, seed=self.seed_generator)
        noise = keras.random.normal(ops.shape(x), seed=self.seed_generator)
        backbone_inputs = {"x_t": self.interpolant.interpolate(x, noise, t), "t": t}
        if self.num_classes is not None:
            labels = ops.zeros((batch,), "int32") if labels is None else ops.cast(ops.reshape(labels, (-1,)), "int32")
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
        drop = keras.random.uniform(ops.shape(labels), seed=self.seed_generator) < self.backbone.class_dropout_prob
        return ops.where(drop, self.backbone.null_class, labels)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if sample_weight is not None:
            raise ValueError("`sample_weight` is not supported by SiT's objective.")
        loss = backend.per_replica_loss(sit_loss(y_pred["pred"], y_pred["target"], y_pred.get("weight")))
        # Read `self.losses` once: torch.compile (2.11) traced the truth test and
        # the stack as two different lists and stacked an empty one.
        extra_losses = list(self.losses)
        if extra_losses:
            loss = loss + ops.sum(ops.stack(extra_losses))
        return loss

    def _labels_into_x(self, data):
        """Keras hands labels over as `y`; the forward pass needs them in `x`."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if y is not None:
            x = {"x": x, "labels": y}
        return (x, None, sample_weight)

    def train_step(self, *args):
        # One method for every backend: JAX passes `(state, data)`, the others `(data,)`.
        return super().train_step(*args[:-1], self._labels_into_x(args[-1]))

    def test_step(self, *args):
        return super().test_step(*args[:-1], self._labels_into_x(args[-1]))

    # --- EMA ----------------------------------------------------------------

    def _ema_optimizer(self):
        optimizer = getattr(self, "optimizer", None)
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer's
        return optimizer if getattr(optimizer, "use_ema", False) else None

    @property
    def has_ema(self):
        """Whether the optimizer holds an EMA of the weights (`use_ema` and at least one step)."""
        optimizer = self._ema_optimizer()
        return (optimizer is not None and optimizer.built
                and int(ops.convert_to_numpy(optimizer.iterations)) > 0)

    def _ema_pairs(self, what):
        if not self.has_ema:
            raise ValueError(
                f"{what} needs an EMA of the weights, and this model has none: compile with `use_ema=True` "
                "(or an optimizer built with `use_ema=True`) and train at least one step."
            )
        optimizer = self._ema_optimizer()
        # Keras keeps the averages in this private list, aligned with the
        # optimizer's variables (its own `SwapEMAWeights` reads it too).
        return [(v, a) for v, a in zip(optimizer._trainable_variables, optimizer._model_variables_moving_average)
                if a is not None]

    @contextlib.contextmanager
    def ema_weights(self):
        """Context in which the trainable weights hold their EMA.

        The training weights are copied aside and put back bit for bit on
        exit. `generate`, `encode` and `log_likelihood` use it by default;
        use it for anything else that should see the EMA, e.g.
        `with model.ema_weights(): model.evaluate(x)`.
        """
        pairs = self._ema_pairs("`ema_weights()`")
        with backend.no_grad():
            saved = [ops.copy(variable.value) for variable, _ in pairs]
            for variable, average in pairs:
                variable.assign(average)
        try:
            yield
        finally:
            with backend.no_grad():
                for (variable, _), value in zip(pairs, saved):
                    variable.assign(value)

    def apply_ema(self):
        """Overwrite the training weights with their EMA, for good.

        What Keras' `fit` does at its end (SiT's `fit` does not, see `fit`):
        e.g. before exporting the weights, or to keep training from the EMA.
        """
        with backend.no_grad():
            for variable, average in self._ema_pairs("`apply_ema()`"):
                variable.assign(average)

    def _sampling_weights(self, use_ema):
        """The weights to sample with: `use_ema` None means the EMA if there is one."""
        if use_ema is not None and not isinstance(use_ema, bool):
            raise TypeError(f"`use_ema` must be None, True or False; got {use_ema!r}.")
        if use_ema is False or (use_ema is None and not self.has_ema):
            return contextlib.nullcontext()
        self._ema_pairs("`use_ema=True`")  # raise now, not after drawing noise
        return self.ema_weights()

    # --- Sampling -----------------------------------------------------------

    def guided_output(self, x_t, t, labels=None, cfg_scale=1.0, guidance_channels=None, guidance_interval=None):
        """The network's raw prediction at `(x_t, t)`, with classifier-free guidance.

        With `cfg_scale != 1` the batch is doubled with the null class and
        `out = uncond + cfg_scale * (cond - uncond)`, on every channel, or on
        the first `guidance_channels` only (upstream guides 3 of 4 latent
        channels; the rest keep the conditional output). `guidance_interval`
        `(lo, hi)` guides only examples whose `t` lies in it. Guidance acts on
        the prediction before any conversion, as upstream.
        """
        check_data(x_t, self.data_shape, "x_t")
        batch = x_t.shape[0]
        t = _times(t, x_t)
        if (labels is None) != (self.num_classes is None):
            raise ValueError(
                f"`labels` are {'required' if labels is None else 'not accepted'}: "
                f"this SiT has num_classes={self.num_classes} (use the null class {self.backbone.null_class} "
                "for unconditional predictions of a conditional model)."
            )
        inputs = {"x_t": ops.convert_to_tensor(x_t), "t": ops.convert_to_tensor(t)}
        if labels is None:
            return self.network(inputs)
        check_labels(labels, batch, "labels")
        labels = ops.convert_to_tensor(labels)
        if cfg_scale == 1.0:
            return self.network({**inputs, "labels": labels})
        null = ops.full_like(labels, self.backbone.null_class)
        both = self.network(
            {
                "x_t": ops.concatenate([inputs["x_t"], inputs["x_t"]], axis=0),
                "t": ops.concatenate([inputs["t"], inputs["t"]], axis=0),
                "labels": ops.concatenate([labels, null], axis=0),
            }
        )
        cond, uncond = ops.split(both, 2, axis=0)
        guided = ops.add(uncond, ops.multiply(cfg_scale, ops.subtract(cond, uncond)))
        if guidance_channels is not None:
            guided = ops.concatenate([guided[..., :guidance_channels], cond[..., guidance_channels:]], axis=-1)
        if guidance_interval is not None:
            lo, hi = guidance_interval
            inside = ops.logical_and(inputs["t"] >= lo, inputs["t"] <= hi)
            guided = ops.where(ops.reshape(inside, (-1,) + (1,) * (len(guided.shape) - 1)), guided, cond)
        return guided

    def velocity(self, x_t, t, labels=None, cfg_scale=1.0, **guidance):
        """The velocity field `v(x_t, t)` (probability-flow ODE drift), with guidance.

        The network's prediction (velocity, score or noise) is guided as in
        `guided_output`, then converted by the transport.
        """
        output = self.guided_output(x_t, t, labels, cfg_scale, **guidance)
        return self.transport.to_velocity(output, ops.convert_to_tensor(x_t), _times(t, x_t))

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
        verbose=0,
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
            guidance_channels, guidance_interval: see `guided_output`.
            diffusion, diffusion_norm: SDE diffusion `w(t)`, one of
                `samplers.DIFFUSIONS` (upstream's CLI default `"sigma"`).
            last_step, last_step_size: the SDE's noiseless final step (None,
                `"mean"`, `"tweedie"`, `"euler"`) and its size.
            verbose: 1 shows a `keras.utils.Progbar` over the steps with the
                running NFE (0, the default, shows nothing).
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

        With neither `verbose` nor `return_trajectory`, the whole loop is one
        compiled call. With either, one compiled step is called per step (the
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
        _check_count("num_samples", num_samples)
        _check_count("num_steps", num_steps)
        ode = sampler in samplers.ODE_METHODS or sampler == "dopri5"
        if not ode and sampler not in ("sde-euler", "sde-heun"):
            raise ValueError(
                f"`sampler` must be one of {sorted(samplers.ODE_METHODS)}, 'dopri5', 'sde-euler' or 'sde-heun'; got {sampler!r}."
            )
        if not (atol > 0 and rtol > 0):
            raise ValueError(f"`atol` and `rtol` must be positive; got {atol!r}, {rtol!r}.")
        if verbose not in (0, 1, 2):
            raise ValueError(f"`verbose` must be 0, 1 or 2; got {verbose!r}.")
        if not isinstance(return_trajectory, bool):
            raise TypeError(f"`return_trajectory` must be a bool; got {return_trajectory!r}.")
        labels = self._generation_labels(num_samples, labels)
        self._check_cfg_scale(cfg_scale, labels)
        guidance = self._check_guidance(guidance_channels, guidance_interval)
        if not ode:
            _check_sde_arguments(diffusion, last_step, last_step_size)
        weights = self._sampling_weights(use_ema)
        seed = self.sampling_seed_generator if seed is None else keras.random.SeedGenerator(seed)
        if noise is None:
            x = keras.random.normal((num_samples, *self.data_shape), seed=seed)
        else:
            check_data(noise, self.data_shape, "noise")
            if noise.shape[0] != num_samples:
                raise ValueError(f"`noise` must hold `num_samples`={num_samples} states; got shape {noise.shape}.")
            x = ops.convert_to_tensor(np.asarray(noise, "float32"))
        increments = None if ode else samplers.draw_sde_noise(num_steps, tuple(x.shape), seed)
        x, labels = _along_batch_axis(x, labels)
        if clip_data is not None:
            try:
                clip_data = tuple(float(v) for v in clip_data)
            except (TypeError, ValueError):
                clip_data = ()
            if len(clip_data) != 2 or not clip_data[0] < clip_data[1]:
                raise ValueError(f"`clip_data` must be a pair (lo, hi) with lo < hi; got {clip_data!r}.")
        settings = _SamplingSettings(sampler, num_steps, float(cfg_scale), **guidance, unconditional=labels is None,
                                     diffusion=diffusion, diffusion_norm=float(diffusion_norm), last_step=last_step,
                                     last_step_size=float(last_step_size), atol=float(atol), rtol=float(rtol),
                                     clip_data=clip_data)
        with weights:
            if not (verbose or return_trajectory):
                run = self._compiled(settings, "run")
                return ops.convert_to_numpy(run(x, increments, labels))
            return self._generate_stepwise(settings, x, increments, labels, verbose, return_trajectory)

    def encode(self, x, labels=None, num_steps=50, sampler="euler", cfg_scale=1.0, guidance_channels=None,
               guidance_interval=None, atol=1e-6, rtol=1e-3, use_ema=None):
        """Map data to noise: the probability-flow ODE run from `t = 0` to `t = 1`.

        The inverse of `generate` with an ODE sampler: `generate(len(x),
        labels, noise=encode(x, labels))` gives back `x` up to solver error.
        `sampler` is a fixed-step ODE method or `"dopri5"`; other arguments
        as in `generate` (like it, this uses the EMA weights when there are
        some). Returns a NumPy array shaped like `x`.
        """
        check_data(x, self.data_shape, "x")
        _check_count("num_steps", num_steps)
        _check_ode_sampler(sampler)
        x = ops.convert_to_tensor(np.asarray(x, "float32"))
        labels = self._generation_labels(x.shape[0], labels)
        self._check_cfg_scale(cfg_scale, labels)
        guidance = self._check_guidance(guidance_channels, guidance_interval)
        settings = _SamplingSettings(sampler, num_steps, float(cfg_scale), **guidance, unconditional=labels is None,
                                     atol=float(atol), rtol=float(rtol))
        with self._sampling_weights(use_ema):
            return ops.convert_to_numpy(self._compiled(settings, "encode")(x, labels))

    def _compiled(self, settings, part):
        """One piece of a sampling loop, compiled once per settings."""
        key = (part, settings)
        if key not in self._sampling_functions:
            pieces = self._sampling_pieces(settings)
            self._sampling_functions[key] = backend.compile_inference(self, pieces[part])
        return self._sampling_functions[key]

    def _generate_stepwise(self, settings, x, noise, labels, verbose, return_trajectory):
        """`generate` one compiled step at a time, for a progress bar or the trajectory."""
        sampler, num_steps = settings.sampler, settings.num_steps
        if sampler == "dopri5" and not return_trajectory:
            num_steps = 1
        step, finish = self._compiled(settings, "step"), self._compiled(settings, "finish")
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
            x = finish(x, labels)
            if return_trajectory:
                trajectory.append(ops.convert_to_numpy(x))
        samples = ops.convert_to_numpy(x)
        return (samples, np.stack(trajectory)) if return_trajectory else samples

    def _sampling_pieces(self, settings):
        """Pure functions for `backend.compile_inference`:

        `run(x, noise, labels)`: the whole loop; `step(x, z, labels, i, n)`:
        step `i` of the grid, or for dopri5 segment `i` of `n`, returning
        `(x, nfe)`; `finish(x, labels)`: the SDE's last step.
        """
        transport, sampler, num_steps = self.transport, settings.sampler, settings.num_steps
        atol, rtol, clip_data = settings.atol, settings.rtol, settings.clip_data
        lo, hi = transport.interval(transport.sample_eps)
        ode = sampler == "dopri5" or sampler in samplers.ODE_METHODS

        def output(x, t, labels):
            return self.guided_output(x, t, labels, settings.cfg_scale, settings.guidance_channels,
                                      settings.guidance_interval)

        def drift(labels):
            return lambda x, t: transport.to_velocity(output(x, t, labels), x, t, clip_data)

        def sde(labels):
            return self._sde_parts(lambda x, t: output(x, t, labels), settings.diffusion, settings.diffusion_norm,
                                   settings.last_step, settings.last_step_size, clip_data)

        def run(x, noise, labels):
            if sampler == "dopri5":
                return samplers.dopri5(drift(labels), x, hi, lo, atol, rtol)[0]
            if ode:
                return samplers.integrate_ode(drift(labels), x, num_steps, sampler, hi, lo)
            parts = sde(labels)
            x = samplers.integrate_sde(parts["velocity_and_score"], x, noise, parts["hi"], parts["lo"], parts["w"],
                                       sampler[4:])
            return parts["finish"](x)

        def step(x, z, labels, i, n):
            if sampler == "dopri5":
                width = (hi - lo) / ops.cast(n, "float32")
                t0 = hi - ops.cast(i, "float32") * width
                return samplers.dopri5(drift(labels), x, t0, t0 - width, atol, rtol, direction=-1.0)
            if ode:
                x = samplers.ode_step(drift(labels), x, i, num_steps, sampler, hi, lo)
                return x, ops.convert_to_tensor(samplers.ode_nfe(sampler, 1), "int32")
            parts = sde(labels)
            x = samplers.sde_step(parts["velocity_and_score"], x, z, i, num_steps, parts["hi"], parts["lo"], parts["w"],
                                  sampler[4:])
            return x, ops.convert_to_tensor(2 if sampler == "sde-heun" else 1, "int32")

        def finish(x, labels):
            return sde(labels)["finish"](x)

        def encode(x, labels):
            if sampler == "dopri5":
                return samplers.dopri5(drift(labels), x, hi, lo, atol, rtol, reverse=True)[0]
            return samplers.integrate_ode(drift(labels), x, num_steps, sampler, hi, lo, reverse=True)

        return {"run": run, "step": step, "finish": finish, "encode": encode}

    def _sde_parts(self, output, diffusion, norm, last_step, last_step_size, clip_data):
        """The SDE solve's interval, `w(t)`, `(v, s)` from one call, and last step."""
        transport = self.transport
        eps = transport.sample_eps
        if eps == 0.0 and not transport.is_vp:
            # On linear/cosine the score is infinite at t = 0 and SBDM's w = D(t) at
            # t = 1 (upstream samples NaN there): stop short of both ends.
            eps = 1e-3
        hi = 1.0 if transport.is_vp or (diffusion != "SBDM" and self.prediction == "velocity") else 1.0 - eps
        h_last = last_step_size if last_step is not None else 0.0
        lo = h_last if h_last > 0 else eps

        def velocity_and_score(x, t):
            out = output(x, t)
            return transport.to_velocity(out, x, t, clip_data), transport.to_score(out, x, t)

        def w(t):
            return samplers.diffusion_coefficient(diffusion, t, transport, norm)

        def finish(x):
            t_last = lo * ops.ones((x.shape[0],), x.dtype)
            return samplers.sde_last_step(last_step, velocity_and_score, x, t_last, h_last, w, transport.path)

        return {"hi": hi, "lo": lo, "w": w, "velocity_and_score": velocity_and_score, "finish": finish}

    def log_likelihood(self, x, labels=None, num_steps=50, sampler="rk4", divergence="auto", probe="rademacher",
                       num_probes=1, seed=None, use_ema=None):
        """Log-density of data under the model's probability-flow ODE.

        Integrates from data (`t = 0`) to noise (`t = 1`) with the divergence
        of the velocity, so `log p(x) = log N(x_1; 0, I) + int div v dt`.

        Args:
            x: data `[B, *data_shape]`; labels: class per example for a
                conditional model (None uses the null class).
            num_steps, sampler: a fixed-step ODE method and its steps, or
                `"dopri5"`.
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
        _check_count("num_steps", num_steps)
        _check_ode_sampler(sampler)
        if divergence not in ("auto", "exact", "hutchinson"):
            raise ValueError(f"`divergence` must be 'auto', 'exact' or 'hutchinson'; got {divergence!r}.")
        _check_count("num_probes", num_probes)
        weights = self._sampling_weights(use_ema)
        x = ops.convert_to_tensor(np.asarray(x, "float32"))
        dim = int(np.prod(self.data_shape))
        labels = self._generation_labels(x.shape[0], labels)
        probes = None
        if divergence == "hutchinson" or (divergence == "auto" and dim > 64):
            generator = self.sampling_seed_generator if seed is None else keras.random.SeedGenerator(seed)
            probes = samplers.draw_probes(probe, num_probes, tuple(x.shape), generator)
        key = ("log_likelihood", sampler, num_steps, labels is None, probes is None)
        if key not in self._sampling_functions:
            lo, hi = self.transport.interval(self.transport.sample_eps)

            def run(x, labels, probes):
                def velocity(z, t):
                    return self.transport.to_velocity(self.guided_output(z, t, labels), z, t)

                probe_list = None if probes is None else [probes[k] for k in range(probes.shape[0])]
                return samplers.log_likelihood(velocity, x, num_steps, sampler, probe_list, lo, hi)[0]

            self._sampling_functions[key] = backend.compile_inference(self, run)
        with weights:
            log_p = ops.convert_to_numpy(self._sampling_functions[key](x, labels, probes))
        return log_p, -log_p / (dim * np.log(2.0))

    def _check_cfg_scale(self, cfg_scale, labels):
        if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, (int, float)) or not np.isfinite(cfg_scale):
            raise TypeError(f"`cfg_scale` must be a finite number; got {cfg_scale!r}.")
        if cfg_scale != 1.0 and (labels is None or self.backbone.null_class is None):
            raise ValueError(
                "`cfg_scale` != 1 needs labels and a model with a null class (num_classes set and class_dropout_prob > 0)."
            )

    def _check_guidance(self, guidance_channels, guidance_interval):
        if guidance_channels is not None:
            channels = self.data_shape[-1]
            if isinstance(guidance_channels, bool) or not isinstance(guidance_channels, int) or not 1 <= guidance_channels <= channels:
                raise ValueError(f"`guidance_channels` must be an int in [1, {channels}]; got {guidance_channels!r}.")
        if guidance_interval is not None:
            try:
                lo, hi = (float(v) for v in guidance_interval)
            except (TypeError, ValueError):
                raise ValueError(f"`guidance_interval` must be a pair (lo, hi); got {guidance_interval!r}.") from None
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"`guidance_interval` must satisfy 0 <= lo <= hi <= 1; got {guidance_interval!r}.")
            guidance_interval = (lo, hi)
        return {"guidance_channels": guidance_channels, "guidance_interval": guidance_interval}

    def _generation_labels(self, num_samples, labels):
        if self.num_classes is None:
            if labels is not None:
                raise ValueError("`labels` were given, but this SiT is unconditional (num_classes=None).")
            return None
        if labels is None:
            if self.backbone.null_class is None:
                raise ValueError(
                    "This conditional SiT has no null class (class_dropout_prob=0): `labels` are required."
                )
            labels = self.backbone.null_class
        labels = np.asarray(labels)
        if labels.ndim == 0:
            labels = np.full((num_samples,), labels)
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"`labels` must be integers; got dtype {labels.dtype}.")
        if labels.shape != (num_samples,):
            raise ValueError(f"`labels` must have shape ({num_samples},) (one per sample); got {labels.shape}.")
        top = self.num_classes if self.backbone.null_class is None else self.num_classes + 1
        if labels.min() < 0 or labels.max() >= top:
            raise ValueError(f"`labels` must lie in [0, {self.num_classes}); got values in [{labels.min()}, {labels.max()}].")
        return ops.convert_to_tensor(labels.astype("int32"))

    # --- Saving -------------------------------------------------------------

    def save_own_variables(self, store):
        # Keras saves no SeedGenerator state; keep it so that a resumed `fit`
        # continues the noise stream instead of repeating it.
        store["training_seed_state"] = np.asarray(ops.convert_to_numpy(self.seed_generator.state), "int64")
        store["sampling_seed_state"] = np.asarray(ops.convert_to_numpy(self.sampling_seed_generator.state), "int64")

    def load_own_variables(self, store):
        for name, generator in [("training_seed_state", self.seed_generator), ("sampling_seed_state", self.sampling_seed_generator)]:
            if name in store:
                generator.state.assign(ops.cast(np.asarray(store[name]), generator.state.dtype))

    def get_config(self):
        backbone = self.backbone.get_config()
        config = {"name": self.name, "trainable": self.trainable, "dtype": keras.dtype_policies.serialize(self.dtype_policy)}
        for key in ("input_shape", "input_dim", "patch_size", "hidden_size", "depth", "num_heads", "mlp_ratio",
                    "num_classes", "class_dropout_prob", "learn_sigma", "num_steps"):
            config[key] = backbone[key]
        transport = self.transport.get_config()
        config.update(
            path=self._path_arg,
            prediction=self.prediction,
            loss_weight=transport["loss_weight"],
            train_eps=self._eps_args[0],
            sample_eps=self._eps_args[1],
            time_sampler=transport["time_sampler"],
            time_loc=transport["time_loc"],
            time_scale=transport["time_scale"],
            time_convention=self.time_convention,
            seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)


@contextlib.contextmanager
def _keep_training_weights(optimizer):
    """Skip the EMA overwrite that ends Keras' `fit` (on every backend the
    trainer calls `optimizer.finalize_variable_values` after the last epoch)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if not getattr(inner, "use_ema", False):
        yield
        return
    optimizer.finalize_variable_values = lambda var_list: None
    try:
        yield
    finally:
        del optimizer.finalize_variable_values


def _portable_compile_config(config):
    """Name the optimizer by its public class, not the backend's subclass.

    Under PyTorch, `keras.optimizers.Adam()` is an instance of
    `keras.src.backend.torch.optimizers.torch_adam.Adam`, and Keras saves that
    module path; loaded under JAX or TensorFlow it would run torch code.
    """
    optimizer = (config or {}).get("optimizer")
    if isinstance(optimizer, dict) and str(optimizer.get("module", "")).startswith("keras.src.backend."):
        config = {**config, "optimizer": {**optimizer, "module": "keras.optimizers", "registered_name": None}}
    return config


class _SamplingSettings(collections.namedtuple(
        "_SamplingSettings",
        "sampler num_steps cfg_scale guidance_channels guidance_interval unconditional diffusion diffusion_norm "
        "last_step last_step_size atol rtol clip_data",
        defaults=(None, 1.0, None, 0.0, 1e-6, 1e-3, None))):
    """What a compiled sampling loop depends on besides its tensor inputs: the cache key."""


def _along_batch_axis(*tensors):
    """Under a `keras.distribution`, split sampling inputs across its batch axis.

    Otherwise they are replicated and every device samples the whole batch.
    """
    distribution = keras.distribution.distribution()
    if distribution is None or getattr(distribution, "batch_dim_name", None) is None:
        return tensors
    mesh = distribution.device_mesh
    devices = mesh.shape[list(mesh.axis_names).index(distribution.batch_dim_name)]
    if tensors[0].shape[0] % devices:
        return tensors  # an uneven batch cannot be split; it runs replicated
    return tuple(
        None if t is None else keras.distribution.distribute_tensor(t, distribution.get_data_layout(t.shape))
        for t in tensors
    )


def _check_sde_arguments(diffusion, last_step, last_step_size):
    if diffusion not in samplers.DIFFUSIONS:
        raise ValueError(f"`diffusion` must be one of {samplers.DIFFUSIONS}; got {diffusion!r}.")
    if last_step not in samplers.LAST_STEPS:
        raise ValueError(f"`last_step` must be one of {samplers.LAST_STEPS}; got {last_step!r}.")
    if not 0.0 <= last_step_size < 1.0:
        raise ValueError(f"`last_step_size` must be in [0, 1); got {last_step_size!r}.")


def _times(t, x):
    """`t` as a `[B]` float tensor for `x` of batch `B` (a scalar is one time for the whole batch)."""
    batch = x.shape[0]
    if len(getattr(t, "shape", ())) == 0:
        return ops.full((batch,), t, dtype="float32")
    if tuple(t.shape) != (batch,):
        raise ValueError(f"`t` must be a scalar or have shape ({batch},), one time per example; got shape {tuple(t.shape)}.")
    return ops.convert_to_tensor(t, dtype="float32")


def _check_ode_sampler(sampler):
    if sampler not in samplers.ODE_METHODS and sampler != "dopri5":
        raise ValueError(f"`sampler` must be one of {sorted(samplers.ODE_METHODS)} or 'dopri5'; got {sampler!r}.")


def _check_count(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int; got {value!r}.")


def check_data(x, data_shape, name):
    """Static check that `x` is `[B, *data_shape]`."""
    shape = tuple(x.shape)
    kind = "images (batch, height, width, channels)" if len(data_shape) == 3 else "vectors (batch, dim)"
    if len(shape) != len(data_shape) + 1 or any(
        s is not None and s != d for s, d in zip(shape[1:], data_shape)
    ):
        raise ValueError(f"`{name}` must be {kind} of shape (batch, {', '.join(map(str, data_shape))}); got shape {shape}.")


def check_labels(labels, batch, name):
    """Static check that labels are integer class indices of shape `[B]` (or `[B, 1]`)."""
    shape = tuple(labels.shape)
    if len(shape) == 2 and shape[1] == 1:
        shape = shape[:1]
    if len(shape) != 1:
        raise ValueError(f"`{name}` must be class indices of shape (batch,); got shape {shape}.")
    if shape[0] is not None and batch is not None and shape[0] != batch:
        raise ValueError(f"`{name}` must have one label per example ({batch}); got {shape[0]}.")
    dtype = keras.backend.standardize_dtype(labels.dtype)
    if "int" not in dtype:
        raise TypeError(f"`{name}` must be integer class indices; got dtype {dtype}.")
