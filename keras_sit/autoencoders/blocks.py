"""The building blocks of the KL autoencoder's encoder and decoder, channels-last.

One short class per diffusers module (`ResnetBlock`, `Downsample`,
`Upsample`, `MidAttention`, and the `ResolutionBlock`/`MidBlock` that group
them); layer names follow diffusers' module names, which keeps the checkpoint
mapping (`keras_sit.convert.autoencoder`) one line per weight. Under a mixed
policy the group norms take their statistics in float32 (Keras'
`GroupNormalization` does) and the attention runs in float32.
"""

import keras
from keras import ops

from keras_sit.validation import check_choice

NORM_EPSILON = 1e-6  # diffusers' and LDM's value; Keras' default is 1e-3


# Layers start at zero and `AutoencoderKL.initialize_weights` draws every weight with NumPy: a seed then
# gives the same weights on every backend, and JAX compiles no random initializer per weight shape.
def conv_layer(filters, kernel_size, dtype, name, strides=1, padding="same"):
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, kernel_initializer="zeros", dtype=dtype, name=name
    )


def dense_layer(units, dtype, name):
    return keras.layers.Dense(units, kernel_initializer="zeros", dtype=dtype, name=name)


def group_norm_layer(groups, dtype, name):
    return keras.layers.GroupNormalization(groups=groups, epsilon=NORM_EPSILON, dtype=dtype, name=name)


def with_channels(shape, channels):
    return (*shape[:-1], channels)


def scaled_shape(shape, factor):
    """`[B, H, W, C]` with H and W multiplied by `factor` (None stays None)."""
    return tuple(None if s is None else int(s * factor) for s in shape[:3]) + (shape[3],)


@keras.saving.register_keras_serializable(package="keras_sit")
class ResnetBlock(keras.layers.Layer):
    """`x + conv2(SiLU(norm2(conv1(SiLU(norm1(x))))))`, 3x3 convs.

    The skip goes through a 1x1 conv (`conv_shortcut`) when the channels change.
    """

    def __init__(self, in_channels, out_channels, groups=32, **kwargs):
        super().__init__(**kwargs)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.groups = groups
        self.norm1 = group_norm_layer(groups, self.dtype_policy, "norm1")
        self.conv1 = conv_layer(out_channels, 3, self.dtype_policy, "conv1")
        self.norm2 = group_norm_layer(groups, self.dtype_policy, "norm2")
        self.conv2 = conv_layer(out_channels, 3, self.dtype_policy, "conv2")
        self.conv_shortcut = None
        if in_channels != out_channels:
            self.conv_shortcut = conv_layer(out_channels, 1, self.dtype_policy, "conv_shortcut")

    def build(self, input_shape):
        hidden_shape = with_channels(input_shape, self.out_channels)
        self.norm1.build(input_shape)
        self.conv1.build(input_shape)
        self.norm2.build(hidden_shape)
        self.conv2.build(hidden_shape)
        if self.conv_shortcut is not None:
            self.conv_shortcut.build(input_shape)

    def call(self, x):
        h = self.conv1(ops.silu(self.norm1(x)))
        h = self.conv2(ops.silu(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return ops.add(skip, h)

    def compute_output_shape(self, input_shape):
        return with_channels(input_shape, self.out_channels)

    def get_config(self):
        return {
            **super().get_config(),
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "groups": self.groups,
        }


@keras.saving.register_keras_serializable(package="keras_sit")
class Downsample(keras.layers.Layer):
    """Halves H and W: pad one row at the bottom and one column on the right, then a 3x3 conv of stride 2.

    The asymmetric padding is the LDM/diffusers one; a symmetric "same"
    padding would shift the sampling grid and not fit the checkpoints.
    """

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.conv = conv_layer(channels, 3, self.dtype_policy, "conv", strides=2, padding="valid")

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, x):
        return self.conv(ops.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]]))

    def compute_output_shape(self, input_shape):
        return scaled_shape(input_shape, 0.5)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(package="keras_sit")
class Upsample(keras.layers.Layer):
    """Doubles H and W: nearest-neighbour repeat, then a 3x3 conv."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.conv = conv_layer(channels, 3, self.dtype_policy, "conv")

    def build(self, input_shape):
        self.conv.build(scaled_shape(input_shape, 2))

    def call(self, x):
        return self.conv(ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2))

    def compute_output_shape(self, input_shape):
        return scaled_shape(input_shape, 2)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(package="keras_sit")
class MidAttention(keras.layers.Layer):
    """Single-head self-attention over the H*W positions, with a residual.

    `x + to_out(softmax(q k^T / sqrt(C)) v)` where q, k, v are `Dense`
    projections of `group_norm(x)`. The attention itself runs in float32:
    it is one small layer at the lowest resolution, and low-precision
    logits over thousands of positions would cost accuracy.
    """

    def __init__(self, channels, groups=32, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.groups = groups
        self.group_norm = group_norm_layer(groups, self.dtype_policy, "group_norm")
        self.to_q = dense_layer(channels, self.dtype_policy, "to_q")
        self.to_k = dense_layer(channels, self.dtype_policy, "to_k")
        self.to_v = dense_layer(channels, self.dtype_policy, "to_v")
        self.to_out = dense_layer(channels, self.dtype_policy, "to_out")

    def build(self, input_shape):
        self.group_norm.build(input_shape)
        for dense in (self.to_q, self.to_k, self.to_v, self.to_out):
            dense.build((None, None, self.channels))

    def call(self, x):
        _, height, width, channels = ops.shape(x)
        tokens = ops.reshape(self.group_norm(x), (-1, height * width, channels))

        def head(dense):  # [B, T, 1, C]: one head of width C, so the scale is 1/sqrt(C)
            return ops.expand_dims(ops.cast(dense(tokens), "float32"), 2)

        attended = ops.dot_product_attention(head(self.to_q), head(self.to_k), head(self.to_v))
        attended = ops.cast(ops.squeeze(attended, 2), self.compute_dtype)
        return ops.add(x, ops.reshape(self.to_out(attended), (-1, height, width, channels)))

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "groups": self.groups}


@keras.saving.register_keras_serializable(package="keras_sit")
class ResolutionBlock(keras.layers.Layer):
    """`num_layers` resnets at one resolution, then a `Downsample` (`resample="down"`), an
    `Upsample` (`"up"`) or nothing (the last level): diffusers' `DownEncoderBlock2D` and
    `UpDecoderBlock2D`."""

    def __init__(self, in_channels, out_channels, num_layers, groups=32, resample=None, **kwargs):
        super().__init__(**kwargs)
        check_choice("resample", resample, (None, "down", "up"))
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_layers = num_layers
        self.groups = groups
        self.resample = resample
        self.resnets = [
            ResnetBlock(in_channels if j == 0 else out_channels, out_channels, groups, dtype=self.dtype_policy,
                        name=f"resnets_{j}")
            for j in range(num_layers)
        ]  # fmt: skip
        self.downsample = (
            Downsample(out_channels, dtype=self.dtype_policy, name="downsample") if resample == "down" else None
        )
        self.upsample = Upsample(out_channels, dtype=self.dtype_policy, name="upsample") if resample == "up" else None

    def build(self, input_shape):
        for resnet in self.resnets:
            resnet.build(input_shape)
            input_shape = resnet.compute_output_shape(input_shape)
        for layer in (self.downsample, self.upsample):
            if layer is not None:
                layer.build(input_shape)

    def call(self, x):
        for layer in (*self.resnets, self.downsample, self.upsample):
            if layer is not None:
                x = layer(x)
        return x

    def get_config(self):
        return {
            **super().get_config(),
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "num_layers": self.num_layers,
            "groups": self.groups,
            "resample": self.resample,
        }


@keras.saving.register_keras_serializable(package="keras_sit")
class MidBlock(keras.layers.Layer):
    """resnet -> attention -> resnet at the lowest resolution (no attention if `add_attention=False`)."""

    def __init__(self, channels, groups=32, add_attention=True, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.groups = groups
        self.add_attention = add_attention
        self.resnets = [
            ResnetBlock(channels, channels, groups, dtype=self.dtype_policy, name=f"resnets_{j}") for j in range(2)
        ]
        self.attention = MidAttention(channels, groups, dtype=self.dtype_policy, name="attention")
        if not add_attention:
            self.attention = None

    def build(self, input_shape):
        for layer in (self.resnets[0], self.attention, self.resnets[1]):
            if layer is not None:
                layer.build(input_shape)

    def call(self, x):
        x = self.resnets[0](x)
        if self.attention is not None:
            x = self.attention(x)
        return self.resnets[1](x)

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "groups": self.groups,
            "add_attention": self.add_attention,
        }
