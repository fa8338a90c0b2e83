"""`LatentSiT`: a SiT that lives in an autoencoder's latent space, images in and out.

This is how SiT is trained and sampled at 256x256 and above: the transformer
models Stable Diffusion's scaled KL latents, and the autoencoder turns
samples back into pictures. `LatentSiT` is a `SiT` whose data are those
latents and which holds the (frozen) autoencoder:

    vae = keras_sit.convert.import_autoencoder("sd-vae-ft-ema/")
    keras_sit.latents.write_latent_cache(keras_sit.latents.ImageFolder("images/", 256), vae, "cache/")
    model = keras_sit.LatentSiT.from_preset("SiT-B/2", autoencoder=vae, image_size=256, num_classes=10)
    model.compile()
    model.fit(keras_sit.latents.LatentDataset("cache/", batch_size=64), epochs=80)
    images = model.generate(8, labels=[0] * 8, cfg_scale=4.0)  # uint8 [8, 256, 256, 3]
    model.save("latent_sit.keras")  # the SiT, its optimizer and the autoencoder in one file

Everything else (`compile`, EMA, guidance, every sampler, `encode`,
`log_likelihood`) is `SiT`'s, on latents.
"""

import keras
import numpy as np
from keras import ops

from keras_sit.model import SiT
from keras_sit.validation import check_choice, check_positive_int
from keras_sit.visualization import to_float, to_uint8

OUTPUTS = ("uint8", "float")


@keras.saving.register_keras_serializable(package="keras_sit")
class LatentSiT(SiT):
    """A `SiT` on an autoencoder's scaled latents, which `generate` decodes into images.

    Args:
        autoencoder: a `keras_sit.AutoencoderKL` (or its serialized config).
            It is frozen: `fit` trains the SiT only.
        image_size: the side of the (square) images; sets the SiT's
            `input_shape` to the latents' shape. Or give `input_shape`
            (latent height, width, channels) directly.
        **kwargs: `SiT`'s arguments (architecture, objective, seed, ...).
    """

    def __init__(self, autoencoder, image_size=None, **kwargs):
        if isinstance(autoencoder, dict):
            autoencoder = keras.saving.deserialize_keras_object(autoencoder)
        if not all(hasattr(autoencoder, name) for name in ("encode", "decode", "latent_channels")):
            raise TypeError(f"`autoencoder` must be a keras_sit.AutoencoderKL; got {type(autoencoder).__name__}.")
        factor = autoencoder.downsampling_factor
        if image_size is not None:
            check_positive_int("image_size", image_size)
            if image_size % factor:
                raise ValueError(f"`image_size` ({image_size}) must be divisible by the autoencoder's {factor}.")
            latent_shape = (image_size // factor, image_size // factor, autoencoder.latent_channels)
            if kwargs.get("input_shape") not in (None, latent_shape, list(latent_shape)):
                raise ValueError(
                    f"`input_shape` {kwargs['input_shape']} does not match `image_size` {image_size}, whose "
                    f"latents are {latent_shape}; give one of the two."
                )
            kwargs["input_shape"] = latent_shape
        if kwargs.get("input_shape") is None:
            raise ValueError("`LatentSiT` needs `image_size` (or the latents' `input_shape`).")
        if kwargs["input_shape"][-1] != autoencoder.latent_channels:
            raise ValueError(
                f"`input_shape` {tuple(kwargs['input_shape'])} must have the autoencoder's "
                f"{autoencoder.latent_channels} latent channels."
            )
        super().__init__(**kwargs)
        autoencoder.trainable = False
        self.autoencoder = autoencoder

    @classmethod
    def from_sit(cls, sit, autoencoder):
        """A `LatentSiT` with `sit`'s configuration and weights (e.g. an imported official checkpoint)."""
        if not isinstance(sit, SiT):
            raise TypeError(f"`sit` must be a keras_sit.SiT; got {type(sit).__name__}.")
        config = {key: value for key, value in sit.get_config().items() if key != "name"}
        model = cls(autoencoder=autoencoder, **config)
        model.backbone.set_weights(sit.backbone.get_weights())
        return model

    @property
    def image_size(self):
        return self.data_shape[0] * self.autoencoder.downsampling_factor

    def generate(self, num_samples, output="uint8", decode_batch_size=None, **kwargs):
        """Sample latents as `SiT.generate` does (every argument of it applies) and decode them.

        Args:
            output: `"uint8"` images in 0..255, or `"float"` in [-1, 1].
            decode_batch_size: decode this many at a time (bounded memory);
                None decodes all at once.

        Returns:
            Images `[num_samples, H, W, 3]`, or with `return_trajectory`,
            `(images, trajectory)` with the trajectory in latent space.
        """
        check_choice("output", output, OUTPUTS)
        check_positive_int("decode_batch_size", decode_batch_size, allow_none=True)
        result = super().generate(num_samples, **kwargs)
        latents, trajectory = result if isinstance(result, tuple) else (result, None)
        images = self.decode_latents(latents, output, decode_batch_size)
        return images if trajectory is None else (images, trajectory)

    def decode_latents(self, latents, output="uint8", batch_size=None):
        """Scaled latents `[B, h, w, c]` -> images, as in `generate`."""
        check_choice("output", output, OUTPUTS)
        images = np.clip(ops.convert_to_numpy(self.autoencoder.decode(latents, batch_size=batch_size)), -1.0, 1.0)
        return images if output == "float" else to_uint8(images)

    def encode_images(self, images, sample=False, seed=None):
        """Images (uint8 in 0..255, or floats in [-1, 1]) -> scaled latents: the posterior's mean, or a draw."""
        return ops.convert_to_numpy(self.autoencoder.encode(to_float(images), sample=sample, seed=seed))

    def get_config(self):
        return {**super().get_config(), "autoencoder": keras.saving.serialize_keras_object(self.autoencoder)}
