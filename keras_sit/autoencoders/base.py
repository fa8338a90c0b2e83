"""`Autoencoder`: what keras_sit needs of an autoencoder, and `LatentDistribution`, what its encoder gives.

A latent SiT (`keras_sit.LatentSiT`) trains in an autoencoder's latent space
and decodes its samples into images; the latent cache
(`keras_sit.latents.write_latent_cache`) encodes a data set once. Both use
an autoencoder through this interface only, so any autoencoder that
subclasses `Autoencoder` works with them: a KL VAE (`AutoencoderKL`, which
encodes to a Gaussian posterior), a deterministic one (a DC-AE, which
encodes to one latent), with 4 or 16 latent channels, with or without a
shift.

Latents come in two spaces: raw (what the encoder gives and the decoder
takes) and scaled, `(raw - shift_factor) * scaling_factor`, the roughly
unit-variance space a diffusion model is trained in. The interface speaks
scaled latents: `encode` returns them, `decode` takes them,
`LatentDistribution.mean` and `sample` are in that space.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_sit.fingerprint import weights_fingerprint
from keras_sit.validation import check_bool, check_number, check_positive_int, check_real_dtype, check_seed


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


IMAGE_TOLERANCE = 0.5  # how far beyond [-1, 1] images may reach (resampling overshoot) before they are refused


def check_batch(x, channels, factor, name, kind):
    """Checks of a batch for an autoencoder: `kind` "images" for `encode`, anything else for latents.

    Static checks: `x` is `[B, H, W, channels]` of real numbers, B, H and W
    positive (an empty batch fails on some backends), H and W divisible by
    `factor`. Images must be floats: uint8 pixels (0..255) and other
    integers are refused, since the autoencoder reads [-1, 1]. When `x`
    holds its values here (a NumPy array or an eager tensor, not a symbol
    being traced), one min/max reduction also refuses NaN and Inf, and
    images with values beyond [-1 - IMAGE_TOLERANCE, 1 + IMAGE_TOLERANCE]
    (floats of 0..255, say); values slightly outside [-1, 1], from
    resampling, pass.
    """
    shape = tuple(x.shape) if hasattr(x, "shape") else ()
    if len(shape) != 4 or shape[-1] not in (None, channels):
        raise ValueError(f"`{name}` must be {kind} of shape (batch, height, width, {channels}); got shape {shape}.")
    check_real_dtype(name, x)
    if shape[0] == 0:
        raise ValueError(f"`{name}` must hold at least one of the {kind}; got shape {shape}.")
    if 0 in shape[1:3]:
        raise ValueError(f"`{name}` height and width must be positive; got shape {shape}.")
    if any(size is not None and size % factor for size in shape[1:3]):
        raise ValueError(
            f"`{name}` height and width must be divisible by {factor} (the autoencoder's downsampling factor); "
            f"got shape {shape}."
        )
    images = kind == "images"
    if images and not keras.backend.is_float_dtype(keras.backend.standardize_dtype(x.dtype)):
        raise TypeError(
            f"`{name}` must be floats in [-1, 1]; got dtype {keras.backend.standardize_dtype(x.dtype)} "
            "(convert uint8 pixels with `keras_sit.visualization.to_float`)."
        )
    extremes = value_extremes(x)
    if extremes is None:
        return
    low, high = extremes
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"`{name}` hold NaN or Inf values; {kind} must be finite.")
    if images and (low < -1.0 - IMAGE_TOLERANCE or high > 1.0 + IMAGE_TOLERANCE):
        raise ValueError(
            f"`{name}` must be floats in [-1, 1]; got values in [{low:g}, {high:g}] (for pixels in 0..255, "
            "use `keras_sit.visualization.to_float`)."
        )


def value_extremes(x):
    """`(min, max)` of `x` as floats (NaN if `x` holds one), or None when it has no values here.

    None for an empty batch, a `keras.KerasTensor`, or a tensor traced by
    `jax.jit` or `tf.function`: those are checked where they have values.
    """
    if isinstance(x, np.ndarray):
        return None if x.size == 0 else (float(np.min(x)), float(np.max(x)))  # NaN propagates through both
    if not ops.is_tensor(x) or isinstance(x, keras.KerasTensor) or _is_traced(x) or 0 in tuple(x.shape):
        return None
    low, high = ops.min(x), ops.max(x)
    if keras.backend.is_float_dtype(keras.backend.standardize_dtype(x.dtype)):
        finite = ops.all(ops.isfinite(x))
        low, high = ops.where(finite, low, float("nan")), ops.where(finite, high, float("nan"))
    return float(ops.convert_to_numpy(low)), float(ops.convert_to_numpy(high))


def _is_traced(x):
    """Whether `x` is a placeholder of a function being traced (`jax.jit`, `tf.function`), with no value."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return isinstance(x, jax.core.Tracer)
    if backend == "tensorflow":
        import tensorflow as tf

        return not tf.executing_eagerly() or not hasattr(x, "numpy")
    return False


class LatentDistribution:
    """The latents of a batch of images: a diagonal Gaussian over raw latents, or one latent per image.

    Built from raw parameters and the autoencoder's `(shift_factor,
    scaling_factor)`; everything it returns is float32 in the scaled space.

    Args:
        raw_mean: `[B, h, w, c]` raw latents (the posterior's mean).
        raw_logvar: their log-variance, or None for a deterministic encoder
            (one latent per image: `sample` returns `mean`).
        scaling_factor, shift_factor: the autoencoder's.
    """

    def __init__(self, raw_mean, raw_logvar=None, scaling_factor=1.0, shift_factor=0.0):
        self.raw_mean, self.raw_logvar = raw_mean, raw_logvar
        self.scaling_factor, self.shift_factor = float(scaling_factor), float(shift_factor)

    @property
    def deterministic(self):
        """True when there is one latent per image (no variance to sample)."""
        return self.raw_logvar is None

    def _scale(self, raw):
        return ops.multiply(ops.subtract(ops.cast(raw, "float32"), self.shift_factor), self.scaling_factor)

    @property
    def mean(self):
        """The scaled mean `[B, h, w, c]`: the latents of `encode(..., sample=False)`."""
        return self._scale(self.raw_mean)

    @property
    def std(self):
        """The scaled standard deviation, `exp(logvar / 2) * scaling_factor`; None when deterministic."""
        if self.deterministic:
            return None
        return ops.multiply(ops.exp(ops.multiply(0.5, ops.cast(self.raw_logvar, "float32"))), self.scaling_factor)

    def sample(self, seed=None):
        """A draw in the scaled space (see `sample_posterior` for `seed`); the mean when deterministic."""
        check_seed(seed, allow_generator=True)
        if self.deterministic:
            return self.mean
        return self._scale(sample_posterior(self.raw_mean, self.raw_logvar, seed))

    def cache_arrays(self):
        """What a latent cache stores per image, as float32 NumPy arrays by file name.

        `{"mean", "std"}` for a Gaussian, so that training draws a fresh
        latent each time an example is used; `{"mean"}` alone when
        deterministic. Both are scaled.
        """
        arrays = {"mean": ops.convert_to_numpy(self.mean)}
        if not self.deterministic:
            std = ops.convert_to_numpy(ops.exp(0.5 * ops.cast(self.raw_logvar, "float32")))
            arrays["std"] = std * self.scaling_factor
        return arrays


class Autoencoder(keras.Model):
    """The interface of an autoencoder for keras_sit: encode images to scaled latents, decode them back.

    Subclass it, pass the latent description to `__init__`, and implement
    `downsampling_factor`, `encode_distribution`, `decode` and `get_config`
    (register the subclass with `keras.saving.register_keras_serializable`
    so that `.keras` files holding it load). `encode`, the latent spaces,
    `latent_shape` and the cache identity come from here. Build the weights
    in `__init__` (or set `self.built = True` when there are none): `fit`
    on a `LatentSiT` would otherwise try to build the autoencoder by calling
    the whole model.

    Images are channels-last floats in [-1, 1]; latents are channels-last
    `[B, H / f, W / f, latent_channels]` with `f = downsampling_factor`.
    Implementations check what they are given with `check_batch` (as
    `AutoencoderKL` does), which refuses uint8 or integer images, images
    far outside [-1, 1], and NaN or Inf in images and latents, before the
    network runs.

    Args:
        latent_channels: channels of the latents (the SiT's input channels).
        scaling_factor, shift_factor: scaled latents are
            `(raw - shift_factor) * scaling_factor`; the diffusion model is
            trained on scaled latents (SD: 0.18215 and 0; SD3: 1.5305 and
            0.0609).
        seed: seed of the generator `encode` samples with when given none.
        **kwargs: `keras.Model`'s (`name`, `dtype`, `trainable`).
    """

    def __init__(self, latent_channels, scaling_factor=1.0, shift_factor=0.0, seed=None, **kwargs):
        check_positive_int("latent_channels", latent_channels)
        check_number("scaling_factor", scaling_factor, low=0.0, include_low=False)
        check_number("shift_factor", shift_factor)
        check_seed(seed)
        super().__init__(**kwargs)
        self.latent_channels = latent_channels
        self.scaling_factor = float(scaling_factor)
        self.shift_factor = float(shift_factor)
        self.seed = seed
        # `encode` samples with it when given no seed: fresh noise on every call.
        self.seed_generator = keras.random.SeedGenerator(seed)

    # --- what an implementation provides ---

    @property
    def downsampling_factor(self):
        """`f`: images `[B, H, W, C]` have latents `[B, H / f, W / f, latent_channels]`."""
        raise NotImplementedError(f"{type(self).__name__} must define `downsampling_factor`.")

    def encode_distribution(self, images, batch_size=None):
        """The `LatentDistribution` of `images` (floats in [-1, 1], `[B, H, W, C]`).

        Everything that encodes goes through it: `encode` takes its mean or
        a draw, and the latent cache stores its `cache_arrays()`.
        `batch_size` encodes that many images at a time (same result,
        bounded memory). Implementations refuse bad images with
        `check_batch(images, channels, self.downsampling_factor, "images",
        "images")`: uint8 pixels, values beyond [-1.5, 1.5], NaN or Inf.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement `encode_distribution`.")

    def decode(self, latents, batch_size=None):
        """Images `[B, h * f, w * f, C]` (about [-1, 1], float32) from SCALED latents.

        `batch_size` decodes that many latents at a time: the same result
        with memory bounded by one chunk. Implementations refuse NaN or Inf
        latents with `check_batch(latents, self.latent_channels, 1,
        "latents", "scaled latents")`.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement `decode`.")

    # --- what the interface gives ---

    def latent_distribution(self, raw_mean, raw_logvar=None):
        """A `LatentDistribution` of raw parameters with this autoencoder's scaling and shift."""
        return LatentDistribution(raw_mean, raw_logvar, self.scaling_factor, self.shift_factor)

    def encode(self, images, seed=None, sample=True, batch_size=None):
        """Scaled latents of `images` (floats in [-1, 1]): a draw from `encode_distribution`, or its mean.

        `sample=False` gives the mean.

        `seed` is an int, a `keras.random.SeedGenerator`, or None for this
        model's own generator (fresh noise on every call).
        """
        check_bool("sample", sample)
        check_seed(seed, allow_generator=True)
        distribution = self.encode_distribution(images, batch_size=batch_size)
        if not sample:
            return distribution.mean
        return distribution.sample(self.seed_generator if seed is None else seed)

    def latent_shape(self, image_shape):
        """The latents' `(h, w, latent_channels)` for images of `(H, W)` or `(H, W, C)`."""
        factor = self.downsampling_factor
        if not isinstance(image_shape, (tuple, list)) or len(image_shape) not in (2, 3):
            raise ValueError(f"`image_shape` must be (height, width) or (height, width, channels); got {image_shape!r}")
        for size in image_shape:
            check_positive_int("image_shape", size)
        height, width = int(image_shape[0]), int(image_shape[1])
        if height % factor or width % factor:
            raise ValueError(
                f"`image_shape` {tuple(image_shape)} must have a height and width divisible by the "
                f"autoencoder's {factor}."
            )
        return (height // factor, width // factor, self.latent_channels)

    def scale_latents(self, raw):
        """Raw latents to the scaled space: `(raw - shift_factor) * scaling_factor`, float32."""
        return ops.multiply(ops.subtract(ops.cast(raw, "float32"), self.shift_factor), self.scaling_factor)

    def unscale_latents(self, scaled):
        """Scaled latents back to raw: `scaled / scaling_factor + shift_factor`, float32."""
        return ops.add(ops.divide(ops.cast(scaled, "float32"), self.scaling_factor), self.shift_factor)

    # --- identity, for caches and for a SiT saved without its autoencoder ---

    def identity_config(self):
        """The configuration that decides the latents: `get_config()` less `name` and `trainable`.

        A latent cache records it and is only resumed by an autoencoder
        with the same one; `LatentSiT.save_sit` records it (less `dtype` and
        `seed`) to check the autoencoder it is loaded with.
        """
        config = keras.saving.serialize_keras_object(self)["config"]
        return {key: value for key, value in config.items() if key not in ("name", "trainable")}

    def weights_fingerprint(self):
        """A SHA-256 of the weights (as float32, in `weights` order): same config and weights, same latents."""
        return weights_fingerprint(self.weights)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "latent_channels": self.latent_channels,
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor,
            "seed": self.seed,
        }
