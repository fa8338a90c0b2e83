"""`SiTBackbone`: the SiT network as a functional Keras model.

Maps `{"x_t": [B, H, W, C] or [B, D], "t": [B], "labels": [B]}` to a
prediction of the same shape as `x_t` (`"labels"` only when `num_classes` is
set). Same maths and weight layout as the official SiT (docs/architecture.md).
With `interval_embedding` it also takes a second time `"r": [B]` and adds an
embedding of `t - r` to the conditioning, as MeanFlow's network does.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_sit.functions import output_size
from keras_sit.layers import FinalLayer, LabelEmbedding, PatchEmbedding, SiTBlock, TimestepEmbedding, Unpatchify
from keras_sit.validation import (
    check_bool,
    check_float_dtype,
    check_image_shape,
    check_number,
    check_positive_int,
    check_seed,
    keyword_defaults,
)


def validate_architecture(config):
    """Check a dict of `SiTBackbone`'s architecture arguments; return the data shape `(H, W, C)` or `(D,)`."""
    input_shape, input_dim = config["input_shape"], config["input_dim"]
    patch_size, hidden_size, num_heads = config["patch_size"], config["hidden_size"], config["num_heads"]
    if (input_shape is None) == (input_dim is None):
        raise ValueError(
            "Give exactly one of `input_shape` (H, W, C) for images and `input_dim` (int) for vectors "
            "(the official 256 px models take input_shape=(32, 32, 4) latents); "
            f"got input_shape={input_shape!r}, input_dim={input_dim!r}."
        )
    for name in ("patch_size", "hidden_size", "depth", "num_heads"):
        check_positive_int(name, config[name])
    check_positive_int("num_classes", config["num_classes"], allow_none=True)
    if input_dim is not None:
        check_positive_int("input_dim", input_dim)
        if input_dim % patch_size:
            raise ValueError(f"`input_dim` ({input_dim}) must be divisible by `patch_size` ({patch_size}).")
        if hidden_size % 2:
            raise ValueError(f"`hidden_size` must be even for vector inputs (1-D sin-cos table); got {hidden_size}.")
        data_shape = (int(input_dim),)
    else:
        data_shape = check_image_shape("input_shape", input_shape)
        height, width, _ = data_shape
        if height % patch_size or width % patch_size:
            raise ValueError(
                f"`input_shape` height and width ({height}, {width}) must be divisible by `patch_size` ({patch_size})."
            )
        if hidden_size % 4:
            raise ValueError(f"`hidden_size` must be divisible by 4 for images (2-D sin-cos table); got {hidden_size}.")
    if hidden_size % num_heads:
        raise ValueError(f"`hidden_size` ({hidden_size}) must be divisible by `num_heads` ({num_heads}).")
    check_number("mlp_ratio", config["mlp_ratio"], low=0.0, include_low=False)
    check_number("class_dropout_prob", config["class_dropout_prob"], 0.0, 1.0)
    check_number("time_embedding_scale", config["time_embedding_scale"], low=0.0, include_low=False)
    check_bool("learn_sigma", config["learn_sigma"])
    check_bool("interval_embedding", config["interval_embedding"])
    check_bool("qk_norm", config["qk_norm"])
    return data_shape


@keras.saving.register_keras_serializable(package="keras_sit")
class SiTBackbone(keras.Model):
    """The SiT transformer (DiT backbone with continuous time).

    Args:
        input_shape: `(H, W, C)` of channels-last images; H and W divisible by
            `patch_size`, need not be equal.
        input_dim: length `D` of flat vectors instead of images. A vector
            becomes `D / patch_size` tokens of `patch_size` consecutive values
            with a 1-D sin-cos position table.
        patch_size, hidden_size, depth, num_heads, mlp_ratio: transformer size.
        num_classes: number of classes, or None for an unconditional model.
        class_dropout_prob: > 0 adds the null class (row `num_classes`) used by
            classifier-free guidance; the dropping itself happens in `SiT`.
        learn_sigma: emit `2C` channels and discard the second half (upstream).
        time_embedding_scale: the time embedding sees `t * time_embedding_scale`;
            1 is the official embedding of raw `t`, 1000 DiT's step indices.
        interval_embedding: also take `"r"`, the start of an interval `[r, t]`,
            and add a second time embedding, of `t - r` (same scale), to the
            conditioning: the network of MeanFlow
            (`keras_sit.objectives.MeanFlow`), which predicts the average
            velocity over the interval. With `r = t` it is an ordinary flow
            model's velocity.
        qk_norm: normalise each head's queries and keys (LayerNorm over the
            head dimension, with weights) before attention, as timm's
            attention with `qk_norm=True` (REPA's `--qk-norm` models).
        seed: seed of `initialize_weights`; the same seed gives the same
            weights on every backend.
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
        time_embedding_scale=1000,
        interval_embedding=False,
        qk_norm=False,
        seed=None,
        dtype=None,
        **kwargs,
    ):
        arguments = locals()
        architecture = {name: arguments[name] for name in ARCHITECTURE_DEFAULTS}
        data_shape = validate_architecture(architecture)
        check_seed(seed)
        check_float_dtype("dtype", dtype)
        # === Layers === (attributes only after `super().__init__`, which torch requires)
        patch_embedding = PatchEmbedding(patch_size, hidden_size, dtype=dtype, name="x_embedder")
        time_embedding = TimestepEmbedding(
            hidden_size, time_scale=float(time_embedding_scale), dtype=dtype, name="t_embedder"
        )
        interval_time_embedding = None
        if interval_embedding:
            interval_time_embedding = TimestepEmbedding(
                hidden_size, time_scale=float(time_embedding_scale), dtype=dtype, name="h_embedder"
            )
        label_embedding = None
        if num_classes is not None:
            label_embedding = LabelEmbedding(
                num_classes, hidden_size, use_null_class=class_dropout_prob > 0, dtype=dtype, name="y_embedder"
            )
        blocks = [
            SiTBlock(hidden_size, num_heads, mlp_ratio, qk_norm, dtype=dtype, name=f"blocks_{i}") for i in range(depth)
        ]
        per_token = output_size(input_shape, input_dim, patch_size, learn_sigma)
        final_layer = FinalLayer(hidden_size, per_token, dtype=dtype, name="final_layer")
        unpatchify = Unpatchify(patch_size, data_shape, learn_sigma, dtype=dtype, name="unpatchify")

        # === Functional model ===
        inputs = {"x_t": keras.Input(shape=data_shape, name="x_t"), "t": keras.Input(shape=(), name="t")}
        if interval_embedding:
            inputs["r"] = keras.Input(shape=(), name="r")
        if label_embedding is not None:
            inputs["labels"] = keras.Input(shape=(), dtype="int32", name="labels")
        tokens = patch_embedding(inputs["x_t"])
        c = _conditioning(inputs, time_embedding, interval_time_embedding, label_embedding)
        for block in blocks:
            tokens = block(tokens, c)
        outputs = unpatchify(final_layer(tokens, c))
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)

        self.patch_embedding = patch_embedding
        self.time_embedding = time_embedding
        self.interval_time_embedding = interval_time_embedding
        self.label_embedding = label_embedding
        self.blocks = blocks
        self.final_layer = final_layer
        self.unpatchify = unpatchify

        # === Config ===
        self.architecture = architecture
        if input_shape is not None:
            self.architecture["input_shape"] = tuple(int(v) for v in input_shape)
        self.data_shape = data_shape
        for name, value in self.architecture.items():
            if name != "input_shape":  # `Model.input_shape` is Keras' own property
                setattr(self, name, value)
        self.seed = seed
        self.initialize_weights(seed)

    @property
    def token_shape(self):
        """`(num_tokens, hidden_size)` of the tokens between the blocks."""
        if len(self.data_shape) == 1:
            return (self.data_shape[0] // self.patch_size, self.hidden_size)
        height, width, _ = self.data_shape
        return ((height // self.patch_size) * (width // self.patch_size), self.hidden_size)

    def call_with_tokens(self, inputs, training=False, token_depths=()):
        """`(prediction, tokens)`: the model's output and the tokens after the blocks in `token_depths`.

        `tokens` maps each depth `k` (1 to `depth`) to the output `[B, N,
        hidden_size]` of the k-th block, from the same forward pass. Without
        `token_depths` this is `(self(inputs), {})`.
        """
        if not token_depths:
            return self(inputs, training=training), {}
        tokens = self.patch_embedding(inputs["x_t"])
        c = _conditioning(inputs, self.time_embedding, self.interval_time_embedding, self.label_embedding)
        kept = {}
        for depth, block in enumerate(self.blocks, start=1):
            tokens = block(tokens, c)
            if depth in token_depths:
                kept[depth] = tokens
        return self.unpatchify(self.final_layer(tokens, c)), kept

    @classmethod
    def from_config(cls, config):
        # Files that call the time-embedding scale `num_steps` load too.
        config = dict(config)
        if "num_steps" in config:
            config["time_embedding_scale"] = config.pop("num_steps")
        return cls(**config)

    @property
    def null_class(self):
        """Label index of the null (unconditional) class, or None if there is none."""
        if self.label_embedding is None or not self.label_embedding.use_null_class:
            return None
        return self.num_classes

    def initialize_weights(self, seed=None):
        """Set every weight as the official `initialize_weights` does.

        Xavier-uniform kernels and zero biases for every projection (the fused
        `qkv` as one matrix, the patch projection on the flattened patch),
        N(0, 0.02) for the label table and the time MLP, zeros for all adaLN
        projections and the final linear layer: a fresh network outputs 0.
        The q/k LayerNorms (`qk_norm`) start at unit scale and zero offset.
        Values come from NumPy, so a seed gives the same weights on every
        backend. The position table is fixed and left alone.
        """
        rng = np.random.default_rng(seed)

        def assign(variable, values):
            variable.assign(values.astype("float32"))

        def xavier(dense):
            fan_in, fan_out = dense.kernel.shape
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            assign(dense.kernel, rng.uniform(-limit, limit, size=dense.kernel.shape))
            assign(dense.bias, np.zeros(dense.bias.shape))

        def normal(variable):
            assign(variable, rng.normal(0.0, 0.02, size=variable.shape))

        def zero(dense):
            assign(dense.kernel, np.zeros(dense.kernel.shape))
            assign(dense.bias, np.zeros(dense.bias.shape))

        xavier(self.patch_embedding.projection)
        for block in self.blocks:
            for dense in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
                xavier(dense)
            zero(block.adaLN_modulation)
            if block.attn.qk_norm:  # LayerNorm's (and timm's) start: unit scale, zero offset
                for norm in (block.attn.q_norm, block.attn.k_norm):
                    assign(norm.gamma, np.ones(norm.gamma.shape))
                    assign(norm.beta, np.zeros(norm.beta.shape))
        if self.label_embedding is not None:
            normal(self.label_embedding.embedding.embeddings)
        time_embeddings = [self.time_embedding]
        if self.interval_time_embedding is not None:
            time_embeddings.append(self.interval_time_embedding)  # as MeanFlow's `h_embedder`
        for embedding in time_embeddings:
            for dense in (embedding.dense_in, embedding.dense_out):
                normal(dense.kernel)
                assign(dense.bias, np.zeros(dense.bias.shape))
        zero(self.final_layer.adaLN_modulation)
        zero(self.final_layer.linear)

    def get_config(self):
        architecture = dict(self.architecture)
        if architecture["input_shape"] is not None:
            architecture["input_shape"] = list(architecture["input_shape"])
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            **architecture,
            "seed": self.seed,
        }


def _conditioning(inputs, time_embedding, interval_time_embedding, label_embedding):
    """The adaLN conditioning vector: the embeddings of `t`, of `t - r` and of the labels, summed."""
    c = time_embedding(inputs["t"])
    if interval_time_embedding is not None:
        c = ops.add(c, interval_time_embedding(ops.subtract(inputs["t"], inputs["r"])))
    if label_embedding is not None:
        c = ops.add(c, label_embedding(inputs["labels"]))
    return c


# The architecture arguments and their defaults, read from the constructor's
# signature so that they are declared once: `SiT` forwards these, and
# `keras_sit.presets` fills them in.
ARCHITECTURE_DEFAULTS = keyword_defaults(SiTBackbone.__init__, exclude=("seed", "dtype"))
