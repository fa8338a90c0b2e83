"""The KL autoencoder's `Encoder` (images to posterior moments) and `Decoder` (raw latents to images)."""

import keras
from keras import ops

from keras_sit.autoencoders.blocks import (
    MidBlock,
    ResolutionBlock,
    conv_layer,
    group_norm_layer,
    scaled_shape,
    with_channels,
)


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
        self.conv_in = conv_layer(channels[0], 3, dtype, "conv_in")
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
        self.conv_norm_out = group_norm_layer(groups, dtype, "conv_norm_out")
        self.conv_out = conv_layer(2 * latent_channels, 3, dtype, "conv_out")

    def build(self, input_shape):
        self.conv_in.build(input_shape)
        shape = with_channels(input_shape, self.block_out_channels[0])
        for block in self.down_blocks:
            block.build(shape)
            shape = with_channels(shape, block.out_channels)
            if block.downsample is not None:
                shape = scaled_shape(shape, 0.5)
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
        self.conv_in = conv_layer(channels[0], 3, dtype, "conv_in")
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
        self.conv_norm_out = group_norm_layer(groups, dtype, "conv_norm_out")
        self.conv_out = conv_layer(out_channels, 3, dtype, "conv_out")

    def build(self, input_shape):
        self.conv_in.build(input_shape)
        shape = with_channels(input_shape, self.block_out_channels[-1])
        self.mid_block.build(shape)
        for block in self.up_blocks:
            block.build(shape)
            shape = with_channels(shape, block.out_channels)
            if block.upsample is not None:
                shape = scaled_shape(shape, 2)
        self.conv_norm_out.build(shape)
        self.conv_out.build(shape)

    def call(self, latents):
        x = self.mid_block(self.conv_in(latents))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(ops.silu(self.conv_norm_out(x)))
