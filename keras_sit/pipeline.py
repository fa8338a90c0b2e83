"""`LatentSiT`: a SiT that lives in an autoencoder's latent space, images in and out.

This is how SiT is trained and sampled at 256x256 and above: the transformer
models an autoencoder's scaled latents (Stable Diffusion's KL autoencoder in
the paper), and the autoencoder turns samples back into pictures.
`LatentSiT` is a `SiT` whose data are those latents and which holds the
(frozen) autoencoder, any `keras_sit.autoencoders.Autoencoder`:

    vae = keras_sit.convert.import_autoencoder("sd-vae-ft-ema/")
    keras_sit.latents.write_latent_cache(keras_sit.latents.ImageFolder("images/", 256), vae, "cache/")
    model = keras_sit.LatentSiT.from_preset("SiT-B/2", autoencoder=vae, image_size=256, num_classes=10)
    model.compile()
    model.fit(keras_sit.latents.LatentDataset("cache/", batch_size=64), epochs=80)
    images = model.generate(8, labels=[0] * 8, cfg_scale=4.0)  # uint8 [8, 256, 256, 3]
    model.save("latent_sit.keras")  # the SiT, its optimizer and the autoencoder in one file
    model.save_sit("sit.keras")  # the SiT and its optimizer; the autoencoder is named, not stored
    model = keras_sit.LatentSiT.load("sit.keras", autoencoder=vae)

Everything else (`compile`, EMA, guidance, every sampler, `encode`,
`log_likelihood`) is `SiT`'s, on latents.
"""

import contextlib
import contextvars
import json
import os
import warnings

import keras
import numpy as np
from keras import ops

from keras_sit.autoencoders.base import Autoencoder
from keras_sit.model import SiT
from keras_sit.validation import check_choice, check_positive_int
from keras_sit.visualization import to_float, to_uint8

OUTPUTS = ("uint8", "float")
# The autoencoder `LatentSiT.load` gives the model it loads (a file written by `save_sit` holds none).
_AUTOENCODER_TO_LOAD = contextvars.ContextVar("keras_sit_autoencoder_to_load", default=None)


@keras.saving.register_keras_serializable(package="keras_sit")
class LatentSiT(SiT):
    """A `SiT` on an autoencoder's scaled latents, which `generate` decodes into images.

    Args:
        autoencoder: a `keras_sit.autoencoders.Autoencoder` such as a
            `keras_sit.AutoencoderKL` (or its serialized config). It is
            frozen: `fit` trains the SiT only.
        image_size: the side of the (square) images; sets the SiT's
            `input_shape` to the latents' shape. Or give `input_shape`
            (latent height, width, channels) directly.
        **kwargs: `SiT`'s arguments (architecture, objective, seed, ...).

    `save` writes one `.keras` file with the autoencoder in it, which
    `keras.saving.load_model` reads. `save_sit` writes the SiT alone (its
    optimizer and noise streams included) and records which autoencoder it
    expects; `LatentSiT.load(path, autoencoder=vae)` reads it back.
    """

    def __init__(self, autoencoder, image_size=None, **kwargs):
        if isinstance(autoencoder, dict):
            autoencoder = keras.saving.deserialize_keras_object(autoencoder)
        _check_autoencoder_type(autoencoder)
        factor = autoencoder.downsampling_factor
        if image_size is not None:
            check_positive_int("image_size", image_size)
            if image_size % factor:
                raise ValueError(f"`image_size` ({image_size}) must be divisible by the autoencoder's {factor}.")
            latent_shape = autoencoder.latent_shape((image_size, image_size))
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
        self._autoencoder_left_out = False  # True while saving or loading the SiT alone

    def __dir__(self):
        # Keras saves and loads the state of the objects it finds in `dir(model)`: while the
        # autoencoder is left out, it finds the SiT's alone. `layers` lists the autoencoder too;
        # every other layer is an attribute of its own (`backbone`).
        names = super().__dir__()
        if getattr(self, "_autoencoder_left_out", False):
            names = [name for name in names if name not in ("autoencoder", "layers")]
        return names

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

    # --- Saving the SiT alone ----------------------------------------------

    def save_sit(self, filepath, overwrite=True, **kwargs):
        """Save the SiT without the autoencoder's weights, to a `.keras` file; read it with `LatentSiT.load`.

        The file holds what `save` writes (the SiT's weights, its optimizer
        state, the EMA included, and its noise streams) except the
        autoencoder, which is often far larger than the SiT and is shared by
        every model trained on its latents. In its place the file records the
        autoencoder's configuration and a SHA-256 of its weights, which
        `LatentSiT.load` checks against the autoencoder it is given. Saving is
        atomic, as `save`'s; `kwargs` are `save`'s.
        """
        path = os.fspath(filepath) if isinstance(filepath, os.PathLike) else filepath
        if not isinstance(path, str) or not path.endswith(".keras"):
            raise ValueError(f"`filepath` must be a `.keras` file name; got {filepath!r}.")
        with self._leaving_out_autoencoder():
            self.save(filepath, overwrite=overwrite, **kwargs)

    @classmethod
    def load(cls, filepath, autoencoder=None, **kwargs):
        """A `LatentSiT` from a `.keras` file: one written by `save`, or by `save_sit` with `autoencoder`.

        Args:
            filepath: the `.keras` file.
            autoencoder: for a file written by `save_sit`, the autoencoder
                the SiT was trained with (e.g. `keras_sit.convert.
                import_autoencoder("sd-vae-ft-ema/")`). One whose
                configuration differs from the recorded one (latent channels,
                scale, architecture) is refused with a `ValueError`; one with
                the same configuration and other weights is used with a
                warning. Leave it out for a file written by `save`, which
                holds its own.
            **kwargs: `keras.saving.load_model`'s (`compile`, `safe_mode`,
                `custom_objects`).
        """
        if autoencoder is not None:
            _check_autoencoder_type(autoencoder)
        token = _AUTOENCODER_TO_LOAD.set(autoencoder)
        try:
            model = keras.saving.load_model(filepath, **kwargs)
        finally:
            _AUTOENCODER_TO_LOAD.reset(token)
        if not isinstance(model, LatentSiT):
            raise ValueError(
                f"{filepath!r} holds a {type(model).__name__}, not a LatentSiT: load it with "
                "`keras.saving.load_model` (and pair a SiT with `LatentSiT.from_sit(sit, autoencoder)`)."
            )
        model._autoencoder_left_out = False
        return model

    @contextlib.contextmanager
    def _leaving_out_autoencoder(self):
        self._autoencoder_left_out = True
        try:
            yield
        finally:
            self._autoencoder_left_out = False

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        expected = config.pop("expected_autoencoder", None)
        given = _AUTOENCODER_TO_LOAD.get()
        if expected is None:
            if given is not None:
                raise ValueError(
                    "This LatentSiT was saved with its autoencoder (`save`): load it without `autoencoder=`."
                )
            return super().from_config(config)
        if given is None:
            raise ValueError(
                "This LatentSiT was saved without its autoencoder (`save_sit`): load it with "
                "`keras_sit.LatentSiT.load(path, autoencoder=vae)`, giving the autoencoder it was trained with "
                f"({expected['class_name']}, {expected['config'].get('latent_channels')} latent channels)."
            )
        _check_autoencoder(given, expected)
        model = super().from_config({**config, "autoencoder": given})
        model._autoencoder_left_out = True  # Keras then loads the SiT's state alone; `load` puts it back
        return model

    def get_config(self):
        config = super().get_config()
        if getattr(self, "_autoencoder_left_out", False):
            return {**config, "autoencoder": None, "expected_autoencoder": _autoencoder_record(self.autoencoder)}
        return {**config, "autoencoder": keras.saving.serialize_keras_object(self.autoencoder)}


def _check_autoencoder_type(autoencoder):
    if not isinstance(autoencoder, Autoencoder):
        raise TypeError(
            "`autoencoder` must be a keras_sit.autoencoders.Autoencoder (such as keras_sit.AutoencoderKL); "
            f"got {type(autoencoder).__name__}."
        )


def _autoencoder_record(autoencoder):
    """What identifies an autoencoder: its class, its configuration (but its dtype and initializer seed) and
    its weights' SHA-256."""
    config = {key: value for key, value in autoencoder.identity_config().items() if key not in ("dtype", "seed")}
    return json.loads(
        json.dumps(
            {
                "class_name": type(autoencoder).__name__,
                "config": config,
                "weights_sha256": autoencoder.weights_fingerprint(),
            }
        )
    )


def _check_autoencoder(autoencoder, expected):
    """Refuse an autoencoder whose configuration is not the recorded one; warn if only its weights differ."""
    record = _autoencoder_record(autoencoder)
    given = {"class": record["class_name"], **record["config"]}
    saved = {"class": expected["class_name"], **expected["config"]}
    differences = [
        f"{key} {given.get(key)!r} (saved with {saved.get(key)!r})"
        for key in sorted({*given, *saved})
        if given.get(key) != saved.get(key)
    ]
    if differences:
        raise ValueError(
            "`autoencoder` is not the one this LatentSiT was saved with: its " + ", ".join(differences) + "."
        )
    if record["weights_sha256"] != expected["weights_sha256"]:
        warnings.warn(
            "`autoencoder` has the configuration of the one this LatentSiT was saved with but other weights "
            "(e.g. another fine-tune): the SiT was trained on the saved one's latents.",
            stacklevel=2,
        )
