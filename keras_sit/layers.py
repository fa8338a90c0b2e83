"""The pieces of the SiT network, one short class each.

The maths follows the official SiT/DiT `models.py` (docs/architecture.md): patch
embedding plus a fixed sin-cos position table, a continuous timestep embedding,
a label embedding with a null class for classifier-free guidance, adaLN-Zero
transformer blocks and a final adaLN layer. Everything is channels-last.

Initial values are not decided here: `SiTBackbone.initialize_weights` sets
every weight in one place, as the official `initialize_weights` does.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_sit.backend import fused
from keras_sit.validation import check_bool, check_number, check_positive_int

LAYER_NORM_EPSILON = 1e-6  # official value; Keras' default is 1e-3
QK_NORM_EPSILON = 1e-5  # `torch.nn.LayerNorm`'s default, which timm's q/k normalisation uses


def sincos_1d(embed_dim, positions):
    """Sin-cos table for integer `positions`: `[sin(p w_k) | cos(p w_k)]`.

    Computed in float64 (as upstream) so the table is bit-identical to the
    official one once cast to float32.
    """
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2))
    angles = np.outer(np.asarray(positions, dtype=np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(embed_dim, grid_height, grid_width):
    """2-D table of shape `(grid_height * grid_width, embed_dim)`.

    Token `r * grid_width + c` gets `[table(c) | table(r)]`: the column index
    fills the first half, as in the official (MAE) code.
    """
    rows, cols = np.meshgrid(np.arange(grid_height), np.arange(grid_width), indexing="ij")
    return np.concatenate(
        [sincos_1d(embed_dim // 2, cols.reshape(-1)), sincos_1d(embed_dim // 2, rows.reshape(-1))],
        axis=1,
    )


def modulate(x, shift, scale):
    """adaLN modulation `x * (1 + scale) + shift`, broadcast over tokens."""
    return fused.add_product(shift[:, None, :], x, ops.add(1.0, scale[:, None, :]))


def layer_norm(x):
    """LayerNorm over the last axis without scale or offset (both are adaLN's job), in `x`'s dtype.

    A function rather than a `LayerNormalization` layer: it holds no weights,
    and `keras.ops.layer_normalization` computes in float32 under mixed
    precision as the layer does, without a layer call's overhead in eager mode.
    """
    return ops.layer_normalization(x, epsilon=LAYER_NORM_EPSILON)


@keras.saving.register_keras_serializable(package="keras_sit")
class PatchEmbedding(keras.layers.Layer):
    """Cuts inputs into patches, projects each to `hidden_size` and adds positions.

    Images `[B, H, W, C]` become `(H/p) * (W/p)` tokens of `p * p * C` values,
    in row-major patch order, with the 2-D sin-cos table. Vectors `[B, D]`
    become `D/p` tokens of `p` consecutive values, with a 1-D sin-cos table.
    The projection is a `Dense` on the flattened patch: the same map as the
    official stride-`p` convolution (kernel `W.transpose(2, 3, 1, 0)` flattened).
    The position table is a fixed, non-trainable weight (it is a frozen
    parameter in the official checkpoint too).
    """

    def __init__(self, patch_size, hidden_size, **kwargs):
        check_positive_int("patch_size", patch_size)
        check_positive_int("hidden_size", hidden_size)
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.projection = keras.layers.Dense(hidden_size, dtype=self.dtype_policy, name="projection")

    def build(self, input_shape):
        p = self.patch_size
        sizes = input_shape[1:3] if len(input_shape) == 4 else input_shape[1:]
        if len(input_shape) not in (2, 4) or any(size is None or size % p for size in sizes):
            raise ValueError(
                "`x` must be images (batch, height, width, channels) or vectors (batch, dim), their sizes divisible "
                f"by `patch_size` ({p}); got shape {tuple(input_shape)}."
            )
        if len(input_shape) == 4:
            _, height, width, channels = input_shape
            self.grid = (height // p, width // p)
            table = sincos_2d(self.hidden_size, *self.grid)
            patch_values = p * p * channels
        else:
            self.grid = (input_shape[1] // p,)
            table = sincos_1d(self.hidden_size, np.arange(self.grid[0]))
            patch_values = p
        self.projection.build((None, None, patch_values))
        self.position_embedding = self.add_weight(
            shape=table.shape,
            initializer=keras.initializers.Constant(table.astype("float32")),
            trainable=False,
            name="position_embedding",
        )

    def call(self, x):
        tokens = patchify(x, self.patch_size)
        return ops.add(fused.dense(self.projection, tokens), ops.cast(self.position_embedding, self.compute_dtype))

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size, "hidden_size": self.hidden_size}


def patchify(x, patch_size):
    """`[B, H, W, C] -> [B, T, p*p*C]` or `[B, D] -> [B, D/p, p]`."""
    p = patch_size
    if len(x.shape) == 2:
        return ops.reshape(x, (-1, x.shape[1] // p, p))
    _, height, width, channels = x.shape
    x = ops.reshape(x, (-1, height // p, p, width // p, p, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, (height // p) * (width // p), p * p * channels))


@keras.saving.register_keras_serializable(package="keras_sit")
class Unpatchify(keras.layers.Layer):
    """Inverse of `patchify` for the final layer's tokens.

    Each token holds `p * p * out_channels` values, channel fastest (the
    official layout). With `learn_sigma` the second half of the channels is
    dropped *after* reassembly, as upstream does.
    """

    def __init__(self, patch_size, data_shape, learn_sigma=False, **kwargs):
        check_positive_int("patch_size", patch_size)
        if not isinstance(data_shape, (tuple, list)) or len(data_shape) not in (1, 3):
            raise ValueError(f"`data_shape` must be (height, width, channels) or (dim,); got {data_shape!r}.")
        check_bool("learn_sigma", learn_sigma)
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.data_shape = tuple(data_shape)
        self.learn_sigma = learn_sigma

    def call(self, tokens):
        p = self.patch_size
        if len(self.data_shape) == 1:
            (dim,) = self.data_shape
            x = ops.reshape(tokens, (-1, dim // p, p, 2 if self.learn_sigma else 1))
            return ops.reshape(x[..., 0], (-1, dim))
        height, width, channels = self.data_shape
        out_channels = 2 * channels if self.learn_sigma else channels
        x = ops.reshape(tokens, (-1, height // p, width // p, p, p, out_channels))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        x = ops.reshape(x, (-1, height, width, out_channels))
        return x[..., :channels]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.data_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "patch_size": self.patch_size,
            "data_shape": list(self.data_shape),
            "learn_sigma": self.learn_sigma,
        }


def timestep_sinusoids(t, frequency_size=256, time_scale=1.0):
    """`[cos(s t f_k) | sin(s t f_k)]` with `f_k = 10000^(-k / half)`, in float32.

    Cos first, as upstream; an odd `frequency_size` gets one zero column.
    """
    half = frequency_size // 2
    freqs = np.exp(-math.log(10000.0) * np.arange(half, dtype=np.float32) / half)
    args = ops.multiply(ops.cast(t, "float32")[:, None] * time_scale, freqs[None, :])
    embedding = ops.concatenate([ops.cos(args), ops.sin(args)], axis=-1)
    if frequency_size % 2:
        embedding = ops.pad(embedding, [[0, 0], [0, 1]])
    return embedding


@keras.saving.register_keras_serializable(package="keras_sit")
class TimestepEmbedding(keras.layers.Layer):
    """Continuous time `t` of shape `[B]` to a `hidden_size` vector.

    `[cos | sin]` of `time_scale * t` at `frequency_size` geometric
    frequencies (max period 10000), then `Dense -> SiLU -> Dense`. The
    sinusoids are computed in float32 whatever the compute dtype, since bf16
    cannot resolve `1000 * t` finely. `time_scale=1` is the official SiT
    embedding of raw `t`; the default 1000 matches DiT-style step indices.
    """

    def __init__(self, hidden_size, frequency_size=256, time_scale=1000.0, **kwargs):
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("frequency_size", frequency_size)
        check_number("time_scale", time_scale, low=0.0, include_low=False)
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.frequency_size = frequency_size
        self.time_scale = time_scale
        self.dense_in = keras.layers.Dense(hidden_size, dtype=self.dtype_policy, name="dense_in")
        self.dense_out = keras.layers.Dense(hidden_size, dtype=self.dtype_policy, name="dense_out")

    @property
    def input_dtype(self):
        # Keras would cast `t` to the compute dtype (bf16) before `call`.
        return "float32"

    def build(self, input_shape):
        self.dense_in.build((None, self.frequency_size))
        self.dense_out.build((None, self.hidden_size))

    def call(self, t):
        embedding = timestep_sinusoids(t, self.frequency_size, self.time_scale)
        hidden = ops.silu(fused.dense(self.dense_in, ops.cast(embedding, self.compute_dtype)))
        return fused.dense(self.dense_out, hidden)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.hidden_size)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "frequency_size": self.frequency_size,
            "time_scale": self.time_scale,
        }


@keras.saving.register_keras_serializable(package="keras_sit")
class LabelEmbedding(keras.layers.Layer):
    """Class labels `[B]` to vectors; row `num_classes` is the null class.

    The null row exists only when `use_null_class` (the official table has
    `K + 1` rows iff `class_dropout_prob > 0`). Dropping labels to the null
    class is the training step's job (`SiT`), so this layer is deterministic.
    """

    def __init__(self, num_classes, hidden_size, use_null_class=True, **kwargs):
        check_positive_int("num_classes", num_classes)
        check_positive_int("hidden_size", hidden_size)
        check_bool("use_null_class", use_null_class)
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.hidden_size = hidden_size
        self.use_null_class = use_null_class
        self.embedding = keras.layers.Embedding(
            num_classes + int(use_null_class), hidden_size, dtype=self.dtype_policy, name="embedding"
        )

    def build(self, input_shape):
        self.embedding.build(input_shape)

    def call(self, labels):
        return self.embedding(ops.cast(labels, "int32"))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.hidden_size)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "hidden_size": self.hidden_size,
            "use_null_class": self.use_null_class,
        }


@keras.saving.register_keras_serializable(package="keras_sit")
class Attention(keras.layers.Layer):
    """Multi-head self-attention with one fused `qkv` projection.

    The fused `Dense(3 * hidden_size)` keeps the official `qkv` weight layout
    (q, k, v blocks, head-major inside each) and feeds
    `keras.ops.dot_product_attention`, which picks the fused kernel of each
    backend (cuDNN/flash on GPU, SDPA on torch).

    `qk_norm=True` normalises each head's queries and keys over the head
    dimension before the product (`q_norm`, `k_norm`: LayerNorms with scale
    and offset shared by the heads, epsilon 1e-5), as timm's attention with
    `qk_norm=True`, which REPA's `--qk-norm` models use.
    """

    kernel_initializer = "glorot_uniform"

    def __init__(self, hidden_size, num_heads, qk_norm=False, **kwargs):
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("num_heads", num_heads)
        check_bool("qk_norm", qk_norm)
        if hidden_size % num_heads:
            raise ValueError(f"`hidden_size` ({hidden_size}) must be divisible by `num_heads` ({num_heads}).")
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.qk_norm = qk_norm
        init = self.kernel_initializer
        self.qkv = keras.layers.Dense(3 * hidden_size, kernel_initializer=init, dtype=self.dtype_policy, name="qkv")
        self.proj = keras.layers.Dense(hidden_size, kernel_initializer=init, dtype=self.dtype_policy, name="proj")
        self.q_norm = self.k_norm = None
        if qk_norm:
            self.q_norm, self.k_norm = (
                keras.layers.LayerNormalization(epsilon=QK_NORM_EPSILON, dtype=self.dtype_policy, name=name)
                for name in ("q_norm", "k_norm")
            )

    def build(self, input_shape):
        self.qkv.build(input_shape)
        self.proj.build(input_shape)
        if self.qk_norm:
            head_shape = (None, None, self.num_heads, self.hidden_size // self.num_heads)
            self.q_norm.build(head_shape)
            self.k_norm.build(head_shape)

    def call(self, x):
        tokens = x.shape[1]
        head_dim = self.hidden_size // self.num_heads
        qkv = ops.reshape(fused.dense(self.qkv, x), (-1, tokens, 3, self.num_heads, head_dim))
        # `unstack`, not three slices: on PyTorch each slice's gradient is a zero-filled full-size buffer.
        q, k, v = ops.unstack(qkv, num=3, axis=2)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        out = fused.dot_product_attention(q, k, v)
        return fused.dense(self.proj, ops.reshape(out, (-1, tokens, self.hidden_size)))

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "qk_norm": self.qk_norm,
        }


@keras.saving.register_keras_serializable(package="keras_sit")
class MLP(keras.layers.Layer):
    """`Dense -> GELU (tanh approximation, as upstream) -> Dense`."""

    kernel_initializer = "glorot_uniform"
    approximate_gelu = True

    def __init__(self, hidden_size, mlp_hidden_size, **kwargs):
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("mlp_hidden_size", mlp_hidden_size)
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.mlp_hidden_size = mlp_hidden_size
        init = self.kernel_initializer
        self.fc1 = keras.layers.Dense(mlp_hidden_size, kernel_initializer=init, dtype=self.dtype_policy, name="fc1")
        self.fc2 = keras.layers.Dense(hidden_size, kernel_initializer=init, dtype=self.dtype_policy, name="fc2")

    def build(self, input_shape):
        self.fc1.build(input_shape)
        self.fc2.build((*input_shape[:-1], self.mlp_hidden_size))

    def call(self, x):
        return fused.dense(self.fc2, ops.gelu(fused.dense(self.fc1, x), approximate=self.approximate_gelu))

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "mlp_hidden_size": self.mlp_hidden_size,
        }


@keras.saving.register_keras_serializable(package="keras_sit")
class SiTBlock(keras.layers.Layer):
    """adaLN-Zero transformer block, conditioned on `c` of shape `[B, D]`.

    `adaLN_modulation` maps `SiLU(c)` to six `D`-chunks in the official order
    shift/scale/gate for attention, then shift/scale/gate for the MLP. Its
    weights start at zero, so a fresh block is the identity. `qk_norm`: see
    `Attention`.
    """

    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, qk_norm=False, **kwargs):
        check_number("mlp_ratio", mlp_ratio, low=0.0, include_low=False)
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.qk_norm = qk_norm
        self.attn = Attention(hidden_size, num_heads, qk_norm, dtype=self.dtype_policy, name="attn")
        self.mlp = MLP(hidden_size, int(hidden_size * mlp_ratio), dtype=self.dtype_policy, name="mlp")
        self.adaLN_modulation = keras.layers.Dense(6 * hidden_size, dtype=self.dtype_policy, name="adaLN_modulation")

    def build(self, x_shape, c_shape):
        self.attn.build(x_shape)
        self.mlp.build(x_shape)
        self.adaLN_modulation.build(c_shape)

    def call(self, x, c):
        chunks = ops.split(fused.dense(self.adaLN_modulation, ops.silu(c)), 6, axis=-1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = chunks
        x = fused.add_product(x, gate_msa[:, None, :], self.attn(modulate(layer_norm(x), shift_msa, scale_msa)))
        return fused.add_product(x, gate_mlp[:, None, :], self.mlp(modulate(layer_norm(x), shift_mlp, scale_mlp)))

    def compute_output_shape(self, x_shape, c_shape):
        return x_shape

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "mlp_ratio": self.mlp_ratio,
            "qk_norm": self.qk_norm,
        }


@keras.saving.register_keras_serializable(package="keras_sit")
class FinalLayer(keras.layers.Layer):
    """adaLN (shift, then scale) followed by a projection to `output_size` per token."""

    def __init__(self, hidden_size, output_size, **kwargs):
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("output_size", output_size)
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.output_size = output_size
        self.linear = keras.layers.Dense(output_size, dtype=self.dtype_policy, name="linear")
        self.adaLN_modulation = keras.layers.Dense(2 * hidden_size, dtype=self.dtype_policy, name="adaLN_modulation")

    def build(self, x_shape, c_shape):
        self.linear.build(x_shape)
        self.adaLN_modulation.build(c_shape)

    def call(self, x, c):
        shift, scale = ops.split(fused.dense(self.adaLN_modulation, ops.silu(c)), 2, axis=-1)
        return fused.dense(self.linear, modulate(layer_norm(x), shift, scale))

    def compute_output_shape(self, x_shape, c_shape):
        return (*x_shape[:-1], self.output_size)

    def get_config(self):
        return {**super().get_config(), "hidden_size": self.hidden_size, "output_size": self.output_size}
