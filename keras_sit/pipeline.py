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

With `latent_statistics` (the cache's per-channel `channel_mean` and
`channel_std`) the SiT models normalised latents, `(latent - mean) / std`,
as REPA trains it; `LatentDataset(..., normalize=True)` yields those, and
`generate`, `decode_latents` and `encode_images` move between them and
images:

    dataset = keras_sit.latents.LatentDataset("cache/", batch_size=64, normalize=True)
    model = keras_sit.LatentSiT.from_preset(
        "SiT-B/2", autoencoder=vae, image_size=256, num_classes=10, latent_statistics=dataset.statistics
    )

Everything else (`compile`, EMA, guidance, every sampler, `encode`,
`log_likelihood`) is `SiT`'s, on latents.
"""

import contextlib
import contextvars
import json
import math
import numbers
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
        latent_mean, latent_std: per-channel lists (one number per latent
            channel, every std positive) for a SiT trained on normalised
            latents, `(latent - latent_mean) / latent_std`: `decode_latents`
            and `generate` undo it before the autoencoder decodes, and
            `encode_images` applies it. None (the default) for a SiT on the
            autoencoder's scaled latents themselves.
        latent_statistics: the same from a latent cache: its description's
            `"statistics"` (`{"channel_mean": [...], "channel_std": [...]}`,
            also `LatentDataset.statistics`), in place of `latent_mean` and
            `latent_std`. The config records `latent_mean` and `latent_std`.
        **kwargs: `SiT`'s arguments (architecture, objective, seed, ...).

    `save` writes one `.keras` file with the autoencoder in it, which
    `keras.saving.load_model` reads. `save_sit` writes the SiT alone (its
    optimizer and noise streams included) and records which autoencoder it
    expects; `LatentSiT.load(path, autoencoder=vae)` reads it back.
    """

    def __init__(
        self, autoencoder, image_size=None, latent_mean=None, latent_std=None, latent_statistics=None, **kwargs
    ):
        if isinstance(autoencoder, dict):
            autoencoder = keras.saving.deserialize_keras_object(autoencoder)
        _check_autoencoder_type(autoencoder)
        latent_mean, latent_std = _latent_normalization(
            latent_mean, latent_std, latent_statistics, autoencoder.latent_channels
        )
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
        # Tuples: Keras would track lists as its own list type.
        self._latent_mean = None if latent_mean is None else tuple(latent_mean)
        self._latent_std = None if latent_std is None else tuple(latent_std)
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
    def from_sit(cls, sit, autoencoder, latent_mean=None, latent_std=None, latent_statistics=None):
        """A `LatentSiT` with `sit`'s configuration and weights, its objectives' too (e.g. an imported checkpoint).

        `latent_mean` and `latent_std`, or `latent_statistics`, as in
        `LatentSiT`: the normalisation of the latents `sit` was trained on
        (a `LatentSiT`'s own, if it has one and none is given).
        """
        if not isinstance(sit, SiT):
            raise TypeError(f"`sit` must be a keras_sit.SiT; got {type(sit).__name__}.")
        latent_keys = ("autoencoder", "expected_autoencoder", "latent_mean", "latent_std")
        config = {key: value for key, value in sit.get_config().items() if key != "name" and key not in latent_keys}
        if latent_mean is None and latent_std is None and latent_statistics is None and isinstance(sit, LatentSiT):
            latent_mean, latent_std = sit.latent_mean, sit.latent_std
        model = cls(
            autoencoder=autoencoder,
            latent_mean=latent_mean,
            latent_std=latent_std,
            latent_statistics=latent_statistics,
            **config,
        )
        model.backbone.set_weights(sit.backbone.get_weights())
        for objective, source in zip(model.objectives, sit.objectives):  # e.g. REPA's projectors
            objective.set_weights(source.get_weights())
        return model

    @property
    def image_size(self):
        return self.data_shape[0] * self.autoencoder.downsampling_factor

    def fit(self, x=None, y=None, *args, validation_data=None, **kwargs):
        """`SiT.fit`; a `LatentDataset` must hold this model's latents.

        A latent cache records the fingerprint of the autoencoder's weights
        that wrote it; latents of another autoencoder, or normalised unlike
        this model's latents (`LatentDataset(normalize=...)` against
        `latent_mean`/`latent_std`), are refused before training starts,
        since the model would learn latents its autoencoder cannot decode.
        """
        for data, name in ((x, "x"), (validation_data, "validation_data")):
            self._check_latent_dataset(data, name)
        return super().fit(x, y, *args, validation_data=validation_data, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`SiT.evaluate`; a `LatentDataset` must hold this model's latents (see `fit`)."""
        self._check_latent_dataset(x, "x")
        return super().evaluate(x, y, *args, **kwargs)

    def _check_latent_dataset(self, data, name):
        fingerprint = getattr(data, "autoencoder_fingerprint", None)
        if fingerprint is None:  # not a latent cache's dataset
            return
        if fingerprint != self.autoencoder.weights_fingerprint():
            raise ValueError(
                f"`{name}` reads the latent cache {data.directory!r}, written by an autoencoder with other weights "
                "than this model's: write the cache with this autoencoder, or build the model on the cache's."
            )
        if data.normalize and not self.normalizes_latents:
            raise ValueError(
                f"`{name}` yields normalised latents (normalize=True) but this model has no latent statistics: "
                "build it with `latent_statistics=dataset.statistics`, or read the cache with normalize=False."
            )
        if self.normalizes_latents and not data.normalize:
            raise ValueError(
                f"This model models normalised latents (latent_mean, latent_std) but `{name}` yields raw ones: "
                "read the cache with `normalize=True`."
            )
        if data.normalize:
            statistics = data.statistics
            expected = (list(statistics["channel_mean"]), list(statistics["channel_std"]))
            if not np.allclose(expected, (self.latent_mean, self.latent_std), rtol=1e-6, atol=1e-6):
                raise ValueError(
                    f"`{name}` normalises latents with the statistics of {data.directory!r}, which differ from this "
                    "model's latent_mean and latent_std."
                )

    def generate(self, num_samples, output="uint8", decode_batch_size=None, **kwargs):
        """Sample latents as `SiT.generate` does (every argument of it applies) and decode them.

        Args:
            output: `"uint8"` images in 0..255, or `"float"` in [-1, 1].
            decode_batch_size: decode this many at a time (bounded memory);
                None decodes all at once.

        Returns:
            Images `[num_samples, H, W, 3]`, or with `return_trajectory`,
            `(images, trajectory)` with the trajectory in the SiT's latent
            space (normalised, when the model has `latent_mean` and
            `latent_std`).
        """
        check_choice("output", output, OUTPUTS)
        check_positive_int("decode_batch_size", decode_batch_size, allow_none=True)
        result = super().generate(num_samples, **kwargs)
        latents, trajectory = result if isinstance(result, tuple) else (result, None)
        images = self.decode_latents(latents, output, decode_batch_size)
        return images if trajectory is None else (images, trajectory)

    def decode_latents(self, latents, output="uint8", batch_size=None):
        """The SiT's latents `[B, h, w, c]` -> images, as in `generate` (normalised ones denormalised first)."""
        check_choice("output", output, OUTPUTS)
        scaled = self.denormalize_latents(latents)
        images = np.clip(ops.convert_to_numpy(self.autoencoder.decode(scaled, batch_size=batch_size)), -1.0, 1.0)
        return images if output == "float" else to_uint8(images)

    def encode_images(self, images, sample=False, seed=None):
        """Images (uint8 in 0..255, or floats in [-1, 1]) -> the SiT's latents: the posterior's mean, or a draw.

        Those are the autoencoder's scaled latents, normalised when the model
        has `latent_mean` and `latent_std`.
        """
        latents = self.autoencoder.encode(to_float(images), sample=sample, seed=seed)
        return ops.convert_to_numpy(self.normalize_latents(latents))

    @property
    def latent_mean(self):
        """The per-channel mean of the SiT's normalised latents (a list of floats), or None."""
        return None if self._latent_mean is None else list(self._latent_mean)

    @property
    def latent_std(self):
        """The per-channel std of the SiT's normalised latents (a list of floats), or None."""
        return None if self._latent_std is None else list(self._latent_std)

    @property
    def normalizes_latents(self):
        """Whether the SiT models normalised latents (`latent_mean` and `latent_std` are set)."""
        return self._latent_mean is not None

    def normalize_latents(self, latents):
        """The autoencoder's scaled latents -> the SiT's: `(latents - latent_mean) / latent_std` (float32).

        The identity without `latent_mean` and `latent_std`.
        """
        if not self.normalizes_latents:
            return latents
        mean, std = np.asarray(self._latent_mean, "float32"), np.asarray(self._latent_std, "float32")
        return ops.divide(ops.subtract(ops.cast(latents, "float32"), mean), std)

    def denormalize_latents(self, latents):
        """The SiT's latents -> the autoencoder's scaled latents: `latents * latent_std + latent_mean` (float32).

        The identity without `latent_mean` and `latent_std`.
        """
        if not self.normalizes_latents:
            return latents
        mean, std = np.asarray(self._latent_mean, "float32"), np.asarray(self._latent_std, "float32")
        return ops.add(ops.multiply(ops.cast(latents, "float32"), std), mean)

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
        config = {**super().get_config(), "latent_mean": self.latent_mean, "latent_std": self.latent_std}
        if getattr(self, "_autoencoder_left_out", False):
            return {**config, "autoencoder": None, "expected_autoencoder": _autoencoder_record(self.autoencoder)}
        return {**config, "autoencoder": keras.saving.serialize_keras_object(self.autoencoder)}


def _check_autoencoder_type(autoencoder):
    if not isinstance(autoencoder, Autoencoder):
        raise TypeError(
            "`autoencoder` must be a keras_sit.autoencoders.Autoencoder (such as keras_sit.AutoencoderKL); "
            f"got {type(autoencoder).__name__}."
        )


def _latent_normalization(latent_mean, latent_std, latent_statistics, channels):
    """`LatentSiT`'s normalisation arguments, checked, as `(mean, std)` lists of floats or `(None, None)`."""
    if latent_statistics is not None:
        if latent_mean is not None or latent_std is not None:
            raise ValueError("Give `latent_statistics` or `latent_mean` and `latent_std`, not both.")
        if not isinstance(latent_statistics, dict) or not {"channel_mean", "channel_std"} <= set(latent_statistics):
            raise ValueError(
                "`latent_statistics` must be a latent cache's statistics, a dict with 'channel_mean' and "
                f"'channel_std' (`description['statistics']` or `LatentDataset.statistics`); got {latent_statistics!r}."
            )
        latent_mean, latent_std = latent_statistics["channel_mean"], latent_statistics["channel_std"]
    if (latent_mean is None) != (latent_std is None):
        raise ValueError("`latent_mean` and `latent_std` go together: give both (normalised latents) or neither.")
    if latent_mean is None:
        return None, None
    mean = _per_channel("latent_mean", latent_mean, channels)
    std = _per_channel("latent_std", latent_std, channels)
    if any(value <= 0 for value in std):
        raise ValueError(f"`latent_std` must be positive in every channel; got {std}.")
    return mean, std


def _per_channel(name, values, channels):
    """`values`, one finite number per latent channel, as a list of floats."""
    values = values.tolist() if isinstance(values, np.ndarray) else values
    if not isinstance(values, (list, tuple)) or not all(
        isinstance(value, numbers.Real) and not isinstance(value, bool) for value in values
    ):
        raise TypeError(f"`{name}` must be a list of numbers, one per latent channel; got {values!r}.")
    if len(values) != channels:
        raise ValueError(f"`{name}` must have one number per latent channel ({channels}); got {len(values)}.")
    if not all(math.isfinite(value) for value in values):
        raise ValueError(f"`{name}` must be finite; got {list(values)}.")
    return [float(value) for value in values]


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
