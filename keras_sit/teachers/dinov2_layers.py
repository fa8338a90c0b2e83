"""The pieces of the DINOv2 teacher, one short class each.

The maths is facebookresearch/dinov2's `DinoVisionTransformer` (the same
network as transformers' `Dinov2Model`), channels-last:

* `RepaPreprocessing`: REPA's input transform, from 0..255 pixel values to
  normalised images at the teacher's resolution;
* `DINOv2Embeddings`: the 14x14 patch convolution, the class token, the
  learned position table (added to the class and patch tokens), then the
  register tokens inserted after the class token without a position;
* `DINOv2Block`: pre-norm attention (`DINOv2Attention`) and MLP, each
  scaled by a `LayerScale` before the residual sum; the MLP is `DINOv2MLP`
  (exact GELU) or `SwiGLUMLP` (ViT-g).

Initial values are not decided here: every variable starts at zero (norm
and layer scales at one), which costs no random draws, and
`DINOv2Teacher.initialize_weights` sets them all in one place.
"""

import keras
import numpy as np
from keras import ops

from keras_sit.backend import fused
from keras_sit.layers import MLP, Attention
from keras_sit.teachers.interpolation import bicubic_matrix
from keras_sit.validation import check_choice, check_positive_int

LAYER_NORM_EPSILON = 1e-6  # DINOv2's; Keras' default is 1e-3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MLP_TYPES = ("gelu", "swiglu")


def check_count(name, value):
    """An int >= 0 (NumPy ints included, bools not)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"`{name}` must be an int >= 0; got {value!r}.")


def layer_norm(name, dtype):
    """DINOv2's LayerNorm: affine, epsilon 1e-6."""
    return keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, dtype=dtype, name=name)


def dense(units, dtype, name):
    """A Dense layer with bias, zero-initialised (`DINOv2Teacher.initialize_weights` draws its values)."""
    return keras.layers.Dense(units, kernel_initializer="zeros", dtype=dtype, name=name)


@keras.saving.register_keras_serializable(package="keras_sit")
class RepaPreprocessing(keras.layers.Layer):
    """REPA's DINOv2 input transform: `[B, S, S, 3]` pixel values in 0..255 to `[B, R, R, 3]` normalised images.

    As REPA's `preprocess_raw_image`: divide by 255, subtract the ImageNet
    mean and divide by its standard deviation per channel, then resize to
    `R x R` as `torch.nn.functional.interpolate(x, R, mode="bicubic")`
    (half-pixel centres, Keys' `a = -0.75`, no antialiasing, borders
    clamped). The resize is one product per axis with the static matrix of
    `keras_sit.teachers.interpolation.bicubic_matrix`, so every backend
    computes the same numbers. Always float32, whatever the dtype policy.
    """

    def __init__(self, image_size, resized_size, **kwargs):
        check_positive_int("image_size", image_size)
        check_positive_int("resized_size", resized_size)
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.resized_size = int(resized_size)
        self._resize = bicubic_matrix(self.image_size, self.resized_size).astype(np.float32)

    def call(self, images):
        x = ops.divide(ops.cast(images, "float32"), 255.0)
        mean = ops.convert_to_tensor(np.array(IMAGENET_MEAN, np.float32))
        std = ops.convert_to_tensor(np.array(IMAGENET_STD, np.float32))
        x = ops.divide(ops.subtract(x, mean), std)
        if self.resized_size == self.image_size:
            return x  # the matrix is the identity
        resize = ops.convert_to_tensor(self._resize)
        x = ops.einsum("oh,bhwc->bowc", resize, x)  # rows
        return ops.einsum("pw,bowc->bopc", resize, x)  # columns

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.resized_size, self.resized_size, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "image_size": self.image_size, "resized_size": self.resized_size}


@keras.saving.register_keras_serializable(package="keras_sit")
class DINOv2Embeddings(keras.layers.Layer):
    """Patch tokens with class token, position table and register tokens: `[B, R, R, 3]` to `[B, 1 + r + G*G, C]`.

    `G = R // patch_size`. The position table `[1, 1 + G*G, C]` is added to
    the class token and the patch tokens (row-major over the grid); the `r`
    register tokens come after the class token and carry no position, as in
    DINOv2 with registers. The table is for this grid only: other grids are
    resampled once, when the weights are imported.
    """

    def __init__(self, patch_size, hidden_size, grid_size, num_register_tokens=0, **kwargs):
        check_positive_int("patch_size", patch_size)
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("grid_size", grid_size)
        check_count("num_register_tokens", num_register_tokens)
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.grid_size = grid_size
        self.num_register_tokens = num_register_tokens
        self.proj = keras.layers.Conv2D(
            hidden_size,
            patch_size,
            strides=patch_size,
            padding="valid",
            kernel_initializer="zeros",
            dtype=self.dtype_policy,
            name="proj",
        )

    def build(self, input_shape):
        self.proj.build(input_shape)
        hidden = self.hidden_size
        self.cls_token = self.add_weight(shape=(1, 1, hidden), initializer="zeros", name="cls_token")
        self.position_embeddings = self.add_weight(
            shape=(1, 1 + self.grid_size**2, hidden), initializer="zeros", name="position_embeddings"
        )
        self.register_tokens = None
        if self.num_register_tokens:
            self.register_tokens = self.add_weight(
                shape=(1, self.num_register_tokens, hidden), initializer="zeros", name="register_tokens"
            )

    def call(self, images):
        patches = self.proj(images)
        patches = ops.reshape(patches, (-1, self.grid_size**2, self.hidden_size))
        batch = ops.shape(patches)[0]
        cls = ops.broadcast_to(ops.cast(self.cls_token, patches.dtype), (batch, 1, self.hidden_size))
        tokens = ops.add(ops.concatenate([cls, patches], axis=1), ops.cast(self.position_embeddings, patches.dtype))
        if self.register_tokens is None:
            return tokens
        registers = ops.cast(self.register_tokens, patches.dtype)
        registers = ops.broadcast_to(registers, (batch, self.num_register_tokens, self.hidden_size))
        return ops.concatenate([tokens[:, :1], registers, tokens[:, 1:]], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1 + self.num_register_tokens + self.grid_size**2, self.hidden_size)

    def get_config(self):
        return {
            **super().get_config(),
            "patch_size": self.patch_size,
            "hidden_size": self.hidden_size,
            "grid_size": self.grid_size,
            "num_register_tokens": self.num_register_tokens,
        }


@keras.saving.register_keras_serializable(package="keras_sit")
class DINOv2Attention(Attention):
    """SiT's attention (one fused `qkv` with bias, scores scaled by `head_dim ** -0.5`), DINOv2's `attn`.

    DINOv2's `attn.qkv` has the same layout (q, k, v blocks, head-major inside
    each). Its weights start at zero: the importer or
    `DINOv2Teacher.initialize_weights` sets every one, and drawing ViT-g's
    random weights first would cost seconds.
    """

    kernel_initializer = "zeros"


@keras.saving.register_keras_serializable(package="keras_sit")
class LayerScale(keras.layers.Layer):
    """`x * gamma`, a learned per-channel scale of a residual branch (DINOv2's `ls1`/`ls2`, initialised to 1)."""

    def __init__(self, hidden_size, **kwargs):
        check_positive_int("hidden_size", hidden_size)
        super().__init__(**kwargs)
        self.hidden_size = hidden_size

    def build(self, input_shape):
        self.gamma = self.add_weight(shape=(self.hidden_size,), initializer="ones", name="gamma")

    def call(self, x):
        return ops.multiply(x, ops.cast(self.gamma, x.dtype))

    def get_config(self):
        return {**super().get_config(), "hidden_size": self.hidden_size}


@keras.saving.register_keras_serializable(package="keras_sit")
class DINOv2MLP(MLP):
    """SiT's MLP with DINOv2's exact (erf) GELU: `fc1 -> GELU -> fc2`, zero-initialised like `DINOv2Attention`."""

    kernel_initializer = "zeros"
    approximate_gelu = False


@keras.saving.register_keras_serializable(package="keras_sit")
class SwiGLUMLP(keras.layers.Layer):
    """ViT-g's MLP: `w3(silu(a) * b)` where `[a | b] = w12(x)`, DINOv2's `SwiGLUFFNFused`.

    `w12` projects to `2 * mlp_hidden_size` at once: its first half is the
    gate `a`, its second half `b` (transformers' `gate_proj` and `up_proj`).
    """

    def __init__(self, hidden_size, mlp_hidden_size, **kwargs):
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("mlp_hidden_size", mlp_hidden_size)
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.mlp_hidden_size = mlp_hidden_size
        self.w12 = dense(2 * mlp_hidden_size, self.dtype_policy, "w12")
        self.w3 = dense(hidden_size, self.dtype_policy, "w3")

    def build(self, input_shape):
        self.w12.build(input_shape)
        self.w3.build((*input_shape[:-1], self.mlp_hidden_size))

    def call(self, x):
        gate, value = ops.split(fused.dense(self.w12, x), 2, axis=-1)
        return fused.dense(self.w3, ops.multiply(ops.silu(gate), value))

    def get_config(self):
        return {**super().get_config(), "hidden_size": self.hidden_size, "mlp_hidden_size": self.mlp_hidden_size}


@keras.saving.register_keras_serializable(package="keras_sit")
class DINOv2Block(keras.layers.Layer):
    """`x + ls1(attn(norm1(x)))`, then `x + ls2(mlp(norm2(x)))`: DINOv2's pre-norm block with layer scale."""

    def __init__(self, hidden_size, num_heads, mlp_hidden_size, mlp_type="gelu", **kwargs):
        check_positive_int("mlp_hidden_size", mlp_hidden_size)
        check_choice("mlp_type", mlp_type, MLP_TYPES)
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.mlp_hidden_size = mlp_hidden_size
        self.mlp_type = mlp_type
        dtype = self.dtype_policy
        self.norm1 = layer_norm("norm1", dtype)
        self.attn = DINOv2Attention(hidden_size, num_heads, dtype=dtype, name="attn")
        self.ls1 = LayerScale(hidden_size, dtype=dtype, name="ls1")
        self.norm2 = layer_norm("norm2", dtype)
        mlp = DINOv2MLP if mlp_type == "gelu" else SwiGLUMLP
        self.mlp = mlp(hidden_size, mlp_hidden_size, dtype=dtype, name="mlp")
        self.ls2 = LayerScale(hidden_size, dtype=dtype, name="ls2")

    def build(self, input_shape):
        for layer in (self.norm1, self.attn, self.ls1, self.norm2, self.mlp, self.ls2):
            layer.build(input_shape)

    def call(self, x):
        x = ops.add(x, self.ls1(self.attn(self.norm1(x))))
        return ops.add(x, self.ls2(self.mlp(self.norm2(x))))

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "mlp_hidden_size": self.mlp_hidden_size,
            "mlp_type": self.mlp_type,
        }
