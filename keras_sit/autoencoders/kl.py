"""`AutoencoderKL`: the KL autoencoder of latent diffusion (LDM, Stable Diffusion, SD3, FLUX) in Keras.

SiT trains on the latents of this autoencoder (`stabilityai/sd-vae-ft-ema`
in the paper). It is written here rather than reused from keras-hub:
keras-hub's `VAEBackbone` lives in a private module
(`keras_hub.src.models.vae`), has no `quant_conv`/`post_quant_conv` (so
SD-1/2 weights do not fit it), and keras-hub pulls in `tensorflow-text`.

The network is diffusers' `AutoencoderKL`, channels-last: the `Encoder` and
`Decoder` (`coders.py`) of the blocks in `blocks.py`, with the 1x1
`quant_conv`/`post_quant_conv` around the posterior. Only Keras layers and
`keras.ops` are used, so it runs on JAX, TensorFlow and PyTorch. Under a
mixed policy `encode`/`decode` return float32.

The encoder gives a diagonal Gaussian posterior over raw latents
(`encode_moments`); `encode_distribution` hands it to the rest of keras_sit
as a `LatentDistribution` in the scaled space (see `Autoencoder`).
"""

import keras
import numpy as np
from keras import ops

from keras_sit import backend
from keras_sit.autoencoders.base import Autoencoder, check_batch
from keras_sit.autoencoders.blocks import conv_layer, with_channels
from keras_sit.autoencoders.coders import Decoder, Encoder
from keras_sit.autoencoders.configs import AUTOENCODER_CONFIGS
from keras_sit.validation import (
    check_bool,
    check_choice,
    check_float_dtype,
    check_number,
    check_positive_int,
    check_seed,
)

LOGVAR_RANGE = (-30.0, 20.0)  # diffusers clips the posterior's log-variance to this range


@keras.saving.register_keras_serializable(package="keras_sit")
class AutoencoderKL(Autoencoder):
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
        super().__init__(latent_channels, scaling_factor, shift_factor, seed=seed, dtype=dtype, **kwargs)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.block_out_channels = tuple(int(c) for c in block_out_channels)
        self.layers_per_block = layers_per_block
        self.norm_num_groups = norm_num_groups
        self.use_quant_conv = use_quant_conv
        self.use_post_quant_conv = use_post_quant_conv
        self.mid_block_add_attention = mid_block_add_attention

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
        self.quant_conv = self.post_quant_conv = None
        if use_quant_conv:
            self.quant_conv = conv_layer(2 * latent_channels, 1, self.dtype_policy, "quant_conv")
        if use_post_quant_conv:
            self.post_quant_conv = conv_layer(latent_channels, 1, self.dtype_policy, "post_quant_conv")
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

        The same `seed` gives the same weights on every backend. Without one,
        the seed comes from NumPy's global generator, which
        `keras.utils.set_random_seed` seeds (and `keras_sit.distribution.initialize`
        on JAX, alike on every process, whose copies must start equal).
        """
        rng = np.random.default_rng(np.random.randint(2**31 - 1) if seed is None else seed)
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
            self.quant_conv.build(with_channels(latent_shape, 2 * self.latent_channels))
        if self.post_quant_conv is not None:
            self.post_quant_conv.build(latent_shape)
        self.decoder.build(latent_shape)
        self.built = True

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
        check_batch(images, self.in_channels, self.downsampling_factor, "images", "images")
        return backend.inference_in_chunks(self._moments, images, batch_size)

    def encode_distribution(self, images, batch_size=None):
        """The Gaussian posterior of `images`: a `LatentDistribution` of `encode_moments`' mean and log-variance."""
        return self.latent_distribution(*self.encode_moments(images, batch_size=batch_size))

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
        check_batch(latents, self.latent_channels, 1, "latents", "scaled latents")
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
