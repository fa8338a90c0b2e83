"""The KL autoencoder of latent diffusion (LDM, Stable Diffusion, SD3, FLUX) in Keras.

SiT trains on the latents of this autoencoder (`stabilityai/sd-vae-ft-ema`
in the paper), so keras_sit needs it to encode a data set and to decode
samples. It is written here rather than reused from keras-hub: keras-hub's
`VAEBackbone` lives in a private module (`keras_hub.src.models.vae`), has no
`quant_conv`/`post_quant_conv` (so SD-1/2 weights do not fit it), and
keras-hub pulls in `tensorflow-text`.

The network is diffusers' `AutoencoderKL`, channels-last, one short class per
block: `ResnetBlock`, `Downsample`, `Upsample`, `MidAttention`, and the
`ResolutionBlock`/`MidBlock` that group them into the `Encoder` and
`Decoder`. Layer names follow diffusers' module names, which keeps the
checkpoint mapping (`keras_sit.convert.autoencoder`) one line per weight.
Only Keras layers and `keras.ops` are used, so it runs on JAX, TensorFlow
and PyTorch. Under a mixed policy the group norms take their statistics in
float32 (Keras' `GroupNormalization` does), the attention runs in float32,
and `encode`/`decode` return float32.

Latents come in two spaces: raw (the posterior's space, what the decoder
takes after `post_quant_conv`) and scaled, `(raw - shift_factor) *
scaling_factor`, the roughly unit-variance space a diffusion model is trained
in. `encode` returns scaled latents and `decode` takes them.
"""

import keras
import numpy as np
from keras import ops

from keras_sit import backend
from keras_sit.validation import (
    check_bool,
    check_choice,
    check_float_dtype,
    check_number,
    check_positive_int,
    check_real_dtype,
    check_seed,
)

NORM_EPSILON = 1e-6  # diffusers' and LDM's value; Keras' default is 1e-3
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers clips the posterior's log-variance to this range

# Configurations of released autoencoders, with diffusers' config.json names.
AUTOENCODER_CONFIGS = {
    # SD-1.x/2.x (`stabilityai/sd-vae-ft-ema`, `-ft-mse`), the autoencoder of SiT and DiT.
    "sd": {
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "scaling_factor": 0.18215,
        "shift_factor": 0.0,
    },
    # SDXL: the SD architecture retrained; only the scaling differs.
    "sdxl": {
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "scaling_factor": 0.13025,
        "shift_factor": 0.0,
    },
    # SD3: 16 latent channels and no quant convs.
    "sd3": {
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 16,
        "norm_num_groups": 32,
        "scaling_factor": 1.5305,
        "shift_factor": 0.0609,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    },
    # FLUX.1: the SD3 architecture with its own scaling.
    "flux": {
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 16,
        "norm_num_groups": 32,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    },
}


# Layers start at zero and `AutoencoderKL.initialize_weights` draws every weight with NumPy: a seed then
# gives the same weights on every backend, and JAX compiles no random initializer per weight shape.
def _conv(filters, kernel_size, dtype, name, strides=1, padding="same"):
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, kernel_initializer="zeros", dtype=dtype, name=name
    )


def _dense(units, dtype, name):
    return keras.layers.Dense(units, kernel_initializer="zeros", dtype=dtype, name=name)


def _group_norm(groups, dtype, name):
    return keras.layers.GroupNormalization(groups=groups, epsilon=NORM_EPSILON, dtype=dtype, name=name)


def _with_channels(shape, channels):
    return (*shape[:-1], channels)


def _scaled_shape(shape, factor):
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
        self.norm1 = _group_norm(groups, self.dtype_policy, "norm1")
        self.conv1 = _conv(out_channels, 3, self.dtype_policy, "conv1")
        self.norm2 = _group_norm(groups, self.dtype_policy, "norm2")
        self.conv2 = _conv(out_channels, 3, self.dtype_policy, "conv2")
        self.conv_shortcut = None
        if in_channels != out_channels:
            self.conv_shortcut = _conv(out_channels, 1, self.dtype_policy, "conv_shortcut")

    def build(self, input_shape):
        hidden_shape = _with_channels(input_shape, self.out_channels)
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
        return _with_channels(input_shape, self.out_channels)

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
        self.conv = _conv(channels, 3, self.dtype_policy, "conv", strides=2, padding="valid")

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, x):
        return self.conv(ops.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]]))

    def compute_output_shape(self, input_shape):
        return _scaled_shape(input_shape, 0.5)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


@keras.saving.register_keras_serializable(package="keras_sit")
class Upsample(keras.layers.Layer):
    """Doubles H and W: nearest-neighbour repeat, then a 3x3 conv."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.conv = _conv(channels, 3, self.dtype_policy, "conv")

    def build(self, input_shape):
        self.conv.build(_scaled_shape(input_shape, 2))

    def call(self, x):
        return self.conv(ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2))

    def compute_output_shape(self, input_shape):
        return _scaled_shape(input_shape, 2)

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
        self.group_norm = _group_norm(groups, self.dtype_policy, "group_norm")
        self.to_q = _dense(channels, self.dtype_policy, "to_q")
        self.to_k = _dense(channels, self.dtype_policy, "to_k")
        self.to_v = _dense(channels, self.dtype_policy, "to_v")
        self.to_out = _dense(channels, self.dtype_policy, "to_out")

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


class _LatentCoder(keras.layers.Layer):
    """What the `Encoder` and the `Decoder` share: their architecture arguments and config.

    `image_channels` is the encoder's input and the decoder's output.
    """

    def __init__(self, image_channels, block_out_channels, layers_per_block, latent_channels, groups=32,
                 mid_block_add_attention=True, **kwargs):  # fmt: skip
        super().__init__(**kwargs)
        self.image_channels = image_channels
        self.block_out_channels = tuple(block_out_channels)
        self.layers_per_block = layers_per_block
        self.latent_channels = latent_channels
        self.groups = groups
        self.mid_block_add_attention = mid_block_add_attention

    def get_config(self):
        return {
            **super().get_config(),
            "image_channels": self.image_channels,
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "latent_channels": self.latent_channels,
            "groups": self.groups,
            "mid_block_add_attention": self.mid_block_add_attention,
        }


@keras.saving.register_keras_serializable(package="keras_sit")
class Encoder(_LatentCoder):
    """Images `[B, H, W, image_channels]` to `[B, H/f, W/f, 2 * latent_channels]` (mean and log-variance).

    conv_in, one `ResolutionBlock` per entry of `block_out_channels` (a downsample on
    all but the last), the `MidBlock`, then GroupNorm, SiLU and conv_out.
    `f = 2 ** (len(block_out_channels) - 1)`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        groups, mid_block_add_attention = self.groups, self.mid_block_add_attention
        layers_per_block, latent_channels = self.layers_per_block, self.latent_channels
        dtype, channels, levels = self.dtype_policy, self.block_out_channels, len(self.block_out_channels)
        self.conv_in = _conv(channels[0], 3, dtype, "conv_in")
        self.down_blocks = [
            ResolutionBlock(
                channels[max(i - 1, 0)],
                channels[i],
                layers_per_block,
                groups,
                resample="down" if i < levels - 1 else None,
                dtype=dtype,
                name=f"down_blocks_{i}",
            )
            for i in range(levels)
        ]
        self.mid_block = MidBlock(channels[-1], groups, mid_block_add_attention, dtype=dtype, name="mid_block")
        self.conv_norm_out = _group_norm(groups, dtype, "conv_norm_out")
        self.conv_out = _conv(2 * latent_channels, 3, dtype, "conv_out")

    def build(self, input_shape):
        self.conv_in.build(input_shape)
        shape = _with_channels(input_shape, self.block_out_channels[0])
        for block in self.down_blocks:
            block.build(shape)
            shape = _with_channels(shape, block.out_channels)
            if block.downsample is not None:
                shape = _scaled_shape(shape, 0.5)
        for layer in (self.mid_block, self.conv_norm_out, self.conv_out):
            layer.build(shape)

    def call(self, images):
        x = self.conv_in(images)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(ops.silu(self.conv_norm_out(x)))


@keras.saving.register_keras_serializable(package="keras_sit")
class Decoder(_LatentCoder):
    """Raw latents `[B, h, w, latent_channels]` to images `[B, h*f, w*f, image_channels]`.

    conv_in to the widest channels, the `MidBlock`, one `ResolutionBlock` of
    `layers_per_block + 1` resnets per level in reversed channel order (an
    upsample on all but the last), then GroupNorm, SiLU and conv_out.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        groups, mid_block_add_attention = self.groups, self.mid_block_add_attention
        layers_per_block, out_channels = self.layers_per_block, self.image_channels
        dtype, levels = self.dtype_policy, len(self.block_out_channels)
        channels = self.block_out_channels[::-1]
        self.conv_in = _conv(channels[0], 3, dtype, "conv_in")
        self.mid_block = MidBlock(channels[0], groups, mid_block_add_attention, dtype=dtype, name="mid_block")
        self.up_blocks = [
            ResolutionBlock(
                channels[max(i - 1, 0)],
                channels[i],
                layers_per_block + 1,
                groups,
                resample="up" if i < levels - 1 else None,
                dtype=dtype,
                name=f"up_blocks_{i}",
            )
            for i in range(levels)
        ]
        self.conv_norm_out = _group_norm(groups, dtype, "conv_norm_out")
        self.conv_out = _conv(out_channels, 3, dtype, "conv_out")

    def build(self, input_shape):
        self.conv_in.build(input_shape)
        shape = _with_channels(input_shape, self.block_out_channels[-1])
        self.mid_block.build(shape)
        for block in self.up_blocks:
            block.build(shape)
            shape = _with_channels(shape, block.out_channels)
            if block.upsample is not None:
                shape = _scaled_shape(shape, 2)
        self.conv_norm_out.build(shape)
        self.conv_out.build(shape)

    def call(self, latents):
        x = self.mid_block(self.conv_in(latents))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(ops.silu(self.conv_norm_out(x)))


def sample_posterior(mean, logvar, seed=None):
    """A draw `mean + exp(logvar / 2) * N(0, 1)` in float32 (raw latent space).

    `seed`: an int (the same noise every call), a `keras.random.SeedGenerator`
    (fresh noise each call, and traceable under `jax.jit` when it is a layer
    attribute), or None (Keras' global generator; not under `jax.jit`).
    """
    check_seed(seed, allow_generator=True)
    mean = ops.cast(mean, "float32")
    noise = keras.random.normal(ops.shape(mean), seed=seed, dtype="float32")
    return ops.add(mean, ops.multiply(ops.exp(ops.multiply(0.5, ops.cast(logvar, "float32"))), noise))


def _check_batch(x, channels, factor, name, kind):
    """`x` is `[B, H, W, channels]` of real numbers with H and W divisible by `factor` (static checks only)."""
    shape = tuple(x.shape) if hasattr(x, "shape") else ()
    if len(shape) != 4 or shape[-1] not in (None, channels):
        raise ValueError(f"`{name}` must be {kind} of shape (batch, height, width, {channels}); got shape {shape}.")
    check_real_dtype(name, x)
    if any(size is not None and size % factor for size in shape[1:3]):
        raise ValueError(
            f"`{name}` height and width must be divisible by {factor} (2 ** the number of downsamplings); "
            f"got shape {shape}."
        )


@keras.saving.register_keras_serializable(package="keras_sit")
class AutoencoderKL(keras.Model):
    """The LDM / Stable Diffusion KL autoencoder, channels-last.

    The arguments have the names and meaning of diffusers' `AutoencoderKL`
    config, so a `config.json` maps over (see `AUTOENCODER_CONFIGS` and
    `from_config_name` for released ones; `keras_sit.convert.import_autoencoder`
    loads weights).

    Args:
        in_channels, out_channels: image channels in and out.
        block_out_channels: channels per resolution level; the images are
            downsampled `len(block_out_channels) - 1` times.
        layers_per_block: resnets per encoder level (the decoder has one more).
        latent_channels: `L`, channels of the latents.
        norm_num_groups: groups of every GroupNorm.
        scaling_factor, shift_factor: scaled latents are
            `(raw - shift_factor) * scaling_factor`.
        use_quant_conv, use_post_quant_conv: the 1x1 convs after the encoder
            (2L -> 2L) and before the decoder (L -> L); SD3 and FLUX have none.
        mid_block_add_attention: the attention in both mid blocks.
        seed: seed of `initialize_weights` and of the generator `encode`
            samples with when given no seed.

    Images are `[B, H, W, in_channels]` floats in [-1, 1], H and W divisible
    by `downsampling_factor`. `call(images)` is the reconstruction through the
    posterior mean.
    """

    def __init__(
        self,
        in_channels=3,
        out_channels=3,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        scaling_factor=0.18215,
        shift_factor=0.0,
        use_quant_conv=True,
        use_post_quant_conv=True,
        mid_block_add_attention=True,
        seed=None,
        dtype=None,
        **kwargs,
    ):
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("layers_per_block", layers_per_block),
            ("latent_channels", latent_channels),
            ("norm_num_groups", norm_num_groups),
        ):
            check_positive_int(name, value)
        if not isinstance(block_out_channels, (tuple, list)) or not block_out_channels:
            raise ValueError(f"`block_out_channels` must be a non-empty list of ints; got {block_out_channels!r}.")
        for channels in block_out_channels:
            check_positive_int("block_out_channels", channels)
            if channels % norm_num_groups:
                raise ValueError(
                    f"Every entry of `block_out_channels` must be divisible by `norm_num_groups` ({norm_num_groups}); "
                    f"got {tuple(block_out_channels)}."
                )
        check_number("scaling_factor", scaling_factor, low=0.0, include_low=False)
        check_number("shift_factor", shift_factor)
        for name, value in (
            ("use_quant_conv", use_quant_conv),
            ("use_post_quant_conv", use_post_quant_conv),
            ("mid_block_add_attention", mid_block_add_attention),
        ):
            check_bool(name, value)
        check_seed(seed)
        check_float_dtype("dtype", dtype)
        super().__init__(dtype=dtype, **kwargs)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.block_out_channels = tuple(int(c) for c in block_out_channels)
        self.layers_per_block = layers_per_block
        self.latent_channels = latent_channels
        self.norm_num_groups = norm_num_groups
        self.scaling_factor = float(scaling_factor)
        self.shift_factor = float(shift_factor)
        self.use_quant_conv = use_quant_conv
        self.use_post_quant_conv = use_post_quant_conv
        self.mid_block_add_attention = mid_block_add_attention
        self.seed = seed

        architecture = dict(
            block_out_channels=self.block_out_channels,
            layers_per_block=layers_per_block,
            latent_channels=latent_channels,
            groups=norm_num_groups,
            mid_block_add_attention=mid_block_add_attention,
            dtype=self.dtype_policy,
        )
        self.encoder = Encoder(in_channels, name="encoder", **architecture)
        self.decoder = Decoder(out_channels, name="decoder", **architecture)
        self.quant_conv = _conv(2 * latent_channels, 1, self.dtype_policy, "quant_conv") if use_quant_conv else None
        self.post_quant_conv = None
        if use_post_quant_conv:
            self.post_quant_conv = _conv(latent_channels, 1, self.dtype_policy, "post_quant_conv")
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.build((None, None, None, in_channels))
        self.initialize_weights(seed)
        if not self.trainable:
            # `trainable=False` reached `Layer.__init__` before the sublayers existed; freeze them too
            # (re-assigning False to the model itself is skipped on TensorFlow, so name them).
            for layer in (self.encoder, self.decoder, self.quant_conv, self.post_quant_conv):
                if layer is not None:
                    layer.trainable = False

    @classmethod
    def from_config_name(cls, name, **overrides):
        """A fresh (randomly initialised) autoencoder of a released architecture: a key of `AUTOENCODER_CONFIGS`."""
        check_choice("name", name, tuple(AUTOENCODER_CONFIGS))
        return cls(**{**AUTOENCODER_CONFIGS[name], **overrides})

    def initialize_weights(self, seed=None):
        """Glorot-uniform kernels, zero biases, unit norm scales, drawn with NumPy.

        The same `seed` gives the same weights on every backend.
        """
        rng = np.random.default_rng(seed)
        for variable in self.weights:
            shape = tuple(variable.shape)
            if variable.path.endswith("kernel"):  # (kh, kw, in, out) or (in, out)
                receptive = int(np.prod(shape[:-2]))
                limit = np.sqrt(6.0 / (receptive * (shape[-2] + shape[-1])))
                values = rng.uniform(-limit, limit, size=shape)
            else:
                values = np.full(shape, 1.0 if variable.path.endswith("gamma") else 0.0)
            variable.assign(values.astype("float32"))

    @property
    def downsampling_factor(self):
        """`f`: latents are `[B, H/f, W/f, L]`."""
        return 2 ** (len(self.block_out_channels) - 1)

    def build(self, input_shape=None):
        if self.built:
            return
        input_shape = (None, None, None, self.in_channels)
        latent_shape = (None, None, None, self.latent_channels)
        self.encoder.build(input_shape)
        if self.quant_conv is not None:
            self.quant_conv.build(_with_channels(latent_shape, 2 * self.latent_channels))
        if self.post_quant_conv is not None:
            self.post_quant_conv.build(latent_shape)
        self.decoder.build(latent_shape)
        self.built = True

    # --- latent spaces ---

    def scale_latents(self, raw):
        """Raw latents to the scaled space: `(raw - shift_factor) * scaling_factor`, float32."""
        return ops.multiply(ops.subtract(ops.cast(raw, "float32"), self.shift_factor), self.scaling_factor)

    def unscale_latents(self, scaled):
        """Scaled latents back to raw: `scaled / scaling_factor + shift_factor`, float32."""
        return ops.add(ops.divide(ops.cast(scaled, "float32"), self.scaling_factor), self.shift_factor)

    # --- encoding ---

    def _moments(self, images):
        moments = self.encoder(images)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = ops.split(ops.cast(moments, "float32"), 2, axis=-1)
        return mean, ops.clip(logvar, *LOGVAR_RANGE)

    def encode_moments(self, images, batch_size=None):
        """The posterior `(mean, logvar)` of `images`, each `[B, H/f, W/f, L]` float32, in raw latent space.

        `logvar` is clipped to [-30, 20], as diffusers does. `batch_size`
        encodes that many images at a time (same result, bounded memory).
        """
        _check_batch(images, self.in_channels, self.downsampling_factor, "images", "images")
        return backend.inference_in_chunks(self._moments, images, batch_size)

    def encode(self, images, seed=None, sample=True, batch_size=None):
        """Scaled latents of `images`: a posterior draw, or its mean with `sample=False`.

        `seed` is an int, a `keras.random.SeedGenerator`, or None for this
        model's own generator (fresh noise on every call).
        """
        check_bool("sample", sample)
        check_seed(seed, allow_generator=True)
        mean, logvar = self.encode_moments(images, batch_size=batch_size)
        if sample:
            mean = sample_posterior(mean, logvar, self.seed_generator if seed is None else seed)
        return self.scale_latents(mean)

    # --- decoding ---

    def _decode_raw(self, raw):
        if self.post_quant_conv is not None:
            raw = self.post_quant_conv(raw)
        return ops.cast(self.decoder(raw), "float32")

    def decode(self, latents, batch_size=None):
        """Images `[B, h*f, w*f, out_channels]` (about [-1, 1], float32) from SCALED latents.

        `batch_size` decodes that many latents at a time: the same result with
        memory bounded by one chunk, for decoding many samples at once.
        """
        _check_batch(latents, self.latent_channels, 1, "latents", "scaled latents")
        return backend.inference_in_chunks(lambda z: self._decode_raw(self.unscale_latents(z)), latents, batch_size)

    def call(self, images):
        """Reconstruction through the posterior mean (float32)."""
        mean, _ = self._moments(images)
        return self._decode_raw(mean)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "latent_channels": self.latent_channels,
            "norm_num_groups": self.norm_num_groups,
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor,
            "use_quant_conv": self.use_quant_conv,
            "use_post_quant_conv": self.use_post_quant_conv,
            "mid_block_add_attention": self.mid_block_add_attention,
            "seed": self.seed,
        }
