"""The FID Inception network (the 2015-12-05 TF Inception graph, as ported by pytorch-fid) in Keras.

FID, sFID, Inception Score and precision/recall in the diffusion literature
are computed with this network and its weights
(`pt_inception-2015-12-05-6726825d.pth`). It is written here because neither
Keras nor keras-hub has it: their InceptionV3, like torchvision's, is a
different network with other weights, and its features give other numbers.
pytorch-fid, which has it, runs on PyTorch only and needs torchvision, which
cannot always be installed beside the torch build in use.

The building blocks (torchvision's InceptionV3 blocks with pytorch-fid's
changes) are in `keras_sit.evaluation.inception_blocks`. Only Keras layers
and `keras.ops` are used, so it runs on JAX, TensorFlow and PyTorch.

`FIDInception.features` takes uint8 images `[B, H, W, 3]` (or floats in
[0, 255]; `check_inception_images` says what is refused) and does
pytorch-fid's input transform: a bilinear resize to 299x299
(`align_corners=False`, no antialiasing) and the scaling to [-1, 1].
ADM's TensorFlow evaluator feeds images to the TF graph itself, which
resizes and scales them its own way, so the features here match
pytorch-fid's, and ADM's only closely.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_sit import backend
from keras_sit.autoencoders.base import value_extremes
from keras_sit.evaluation.inception_blocks import (
    NUM_CLASSES,
    BasicConv2d,
    Classifier,
    InceptionA,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE,
    _build_chain,
    _pool,
    _run_chain,
)
from keras_sit.validation import check_bool, check_real_dtype

INPUT_SIZE = 299  # the network's input resolution; every image is resized to it
SPATIAL_CHANNELS = 7  # ADM's sFID keeps the first 7 channels of `mixed_6/conv`
SPATIAL_SIZE = 17  # `mixed_6/conv` is 17x17 at 299x299 input


INPUT_TOLERANCE = 0.5  # how far float pixels may stray outside 0..255 (resampling overshoot)


def inception_preprocess(images):
    """pytorch-fid's input transform, channels-last: `[B, H, W, 3]` in [0, 255] to `[B, 299, 299, 3]` in [-1, 1].

    Scales to [0, 1], resizes bilinearly to 299x299 as
    `F.interpolate(mode="bilinear", align_corners=False)` (half-pixel
    centres, no antialiasing), then maps to `2 x - 1`. The images are
    checked first (`check_inception_images`).
    """
    check_inception_images(images)
    x = ops.divide(ops.cast(images, "float32"), 255.0)
    x = ops.image.resize(x, (INPUT_SIZE, INPUT_SIZE), interpolation="bilinear", antialias=False)
    return ops.subtract(ops.multiply(x, 2.0), 1.0)


def check_inception_images(images):
    """The FID Inception's input: RGB `[B, H, W, 3]` pixels in 0..255, or a `ValueError`/`TypeError` naming `images`.

    uint8 images are pixels as they are. Other integers must lie in 0..255.
    Floats must be finite and lie in [-0.5, 255.5] (0..255 with room for
    resampling overshoot), which refuses images in [-1, 1]; and a float
    batch whose values all lie at or below 1 with some fraction among them
    is refused as images in [0, 1] (or [-1, 1]): 0..255 pixels that dark
    are whole numbers (an all-black float batch of zeros passes). The
    values are read when the images hold them here (a NumPy array or an
    eager tensor); inside a traced function only the shape and dtype are
    checked.
    """
    shape = tuple(images.shape) if hasattr(images, "shape") else ()
    if len(shape) != 4 or shape[-1] not in (None, 3):
        raise ValueError(f"`images` must be RGB images of shape (batch, height, width, 3); got shape {shape}.")
    check_real_dtype("images", images)
    if 0 in shape[1:3]:
        raise ValueError(f"`images` height and width must be positive; got shape {shape}.")
    dtype = keras.backend.standardize_dtype(images.dtype)
    if dtype == "uint8":
        return
    extremes = value_extremes(images)
    if extremes is None:
        return
    low, high = extremes
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("`images` hold NaN or Inf values; the FID Inception needs pixels in 0..255.")
    tolerance = INPUT_TOLERANCE if keras.backend.is_float_dtype(dtype) else 0.0
    if low < -tolerance or high > 255.0 + tolerance:
        raise ValueError(
            f"`images` must be pixels in 0..255 (uint8, or floats of that range); got values in [{low:g}, {high:g}]"
            + (" (images in [-1, 1] map to 0..255 as `(x + 1) * 127.5`)." if low < 0 else ".")
        )
    if keras.backend.is_float_dtype(dtype) and high <= 1.0 and _has_fractions(images):
        raise ValueError(
            f"`images` must be pixels in 0..255; these floats lie in [{low:g}, {high:g}] with fractions, as images "
            "in [0, 1] or [-1, 1] do (scale them to 0..255: `x * 255` or `(x + 1) * 127.5`)."
        )


def _has_fractions(images):
    """Whether some value of `images` (a float array or eager tensor) is not a whole number."""
    if isinstance(images, np.ndarray):
        return bool(np.any(images != np.round(images)))
    return bool(ops.convert_to_numpy(ops.any(ops.not_equal(images, ops.round(images)))))


@keras.saving.register_keras_serializable(package="keras_sit")
class FIDInception(keras.Model):
    """The FID Inception network, channels-last; weights from `keras_sit.convert.import_fid_inception`.

    `call(images)` and `features(images)` take `[B, H, W, 3]` images in
    [0, 255] (uint8 or float; floats in [-1, 1] or [0, 1], NaN and values
    beyond 0..255 are refused, see `check_inception_images`), apply
    pytorch-fid's transform (`inception_preprocess`) and return float32
    features:

    * `"pool"` `[B, 2048]`: the global average pool after `Mixed_7c` (the TF
      graph's `pool_3`), the features of FID, KID and precision/recall;
    * `"logits"` `[B, 1008]`: the classifier `fc` (`softmax/logits`);
    * `"logits_unbiased"` `[B, 1008]`: `pool @ fc.kernel`, without the bias,
      the logits of ADM's and improved-GAN's Inception Score;
    * `"spatial"` `[B, 2023]`: ADM's sFID features, the first 7 channels of
      the TF graph's `mixed_6/conv` (the ReLU output of the 1x1 branch of the
      third 17x17 block, `Mixed_6d.branch1x1` here; 17x17 positions),
      flattened in (height, width, channel) order as ADM does.

    Under a mixed `dtype` policy the convolutions run in the compute dtype;
    the batch norms' statistics, the pool and the classifier stay float32.

    A new `FIDInception()` has Keras' default initial weights (Glorot-uniform
    kernels, zero biases, batch norms at the identity), which give features
    but no meaningful FID. `features`, `predict` and `call` therefore refuse,
    with a ValueError naming `import_fid_inception`, to run a network that
    holds no imported weights. `import_fid_inception` marks the network it
    returns, in a non-trainable variable (`holds_imported_weights`) that is
    saved and loaded with the other weights (`save`, `save_weights`,
    `load_model`, `load_weights`, `get_weights`/`set_weights`).

    Args:
        allow_random_weights: compute features without imported weights
            (for tests and for timing; the numbers mean nothing).
        dtype: the dtype policy.
    """

    def __init__(self, allow_random_weights=False, dtype=None, **kwargs):
        super().__init__(dtype=dtype, **kwargs)
        check_bool("allow_random_weights", allow_random_weights)
        self.allow_random_weights = allow_random_weights
        dtype = self.dtype_policy

        def conv(name, filters, kernel_size, strides=1, padding="valid"):
            return BasicConv2d(filters, kernel_size, strides=strides, padding=padding, dtype=dtype, name=name)

        self.Conv2d_1a_3x3 = conv("Conv2d_1a_3x3", 32, 3, strides=2)
        self.Conv2d_2a_3x3 = conv("Conv2d_2a_3x3", 32, 3)
        self.Conv2d_2b_3x3 = conv("Conv2d_2b_3x3", 64, 3, padding="same")
        self.maxpool1 = _pool("max", 2, "valid", dtype, "maxpool1")
        self.Conv2d_3b_1x1 = conv("Conv2d_3b_1x1", 80, 1)
        self.Conv2d_4a_3x3 = conv("Conv2d_4a_3x3", 192, 3)
        self.maxpool2 = _pool("max", 2, "valid", dtype, "maxpool2")
        self.Mixed_5b = InceptionA(32, dtype=dtype, name="Mixed_5b")
        self.Mixed_5c = InceptionA(64, dtype=dtype, name="Mixed_5c")
        self.Mixed_5d = InceptionA(64, dtype=dtype, name="Mixed_5d")
        self.Mixed_6a = InceptionB(dtype=dtype, name="Mixed_6a")
        self.Mixed_6b = InceptionC(128, dtype=dtype, name="Mixed_6b")
        self.Mixed_6c = InceptionC(160, dtype=dtype, name="Mixed_6c")
        self.Mixed_6d = InceptionC(160, dtype=dtype, name="Mixed_6d")
        self.Mixed_6e = InceptionC(192, dtype=dtype, name="Mixed_6e")
        self.Mixed_7a = InceptionD(dtype=dtype, name="Mixed_7a")
        self.Mixed_7b = InceptionE("avg", dtype=dtype, name="Mixed_7b")
        self.Mixed_7c = InceptionE("max", dtype=dtype, name="Mixed_7c")
        self.fc = Classifier(NUM_CLASSES, dtype="float32", name="fc")
        self.build((None, INPUT_SIZE, INPUT_SIZE, 3))

    def _layers_to_6d(self):
        return [
            self.Conv2d_1a_3x3,
            self.Conv2d_2a_3x3,
            self.Conv2d_2b_3x3,
            self.maxpool1,
            self.Conv2d_3b_1x1,
            self.Conv2d_4a_3x3,
            self.maxpool2,
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
        ]

    def _layers_after_6d(self):
        return [self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c]

    def build(self, input_shape=None):
        if self.built:
            return
        # Whatever the images' size, the network sees them at 299x299.
        shape = _build_chain(self._layers_to_6d() + self._layers_after_6d(), (None, INPUT_SIZE, INPUT_SIZE, 3))
        self.fc.build((None, shape[-1]))
        # 1 once `import_fid_inception` has filled in the weights; saved and loaded with them.
        self.weights_imported = self.add_weight(
            shape=(), initializer="zeros", dtype="int32", trainable=False, name="weights_imported"
        )
        self.built = True

    @property
    def holds_imported_weights(self):
        """Whether the weights came from `import_fid_inception` (directly or through a saved copy)."""
        return bool(ops.convert_to_numpy(self.weights_imported))

    def _check_weights(self):
        """A ValueError unless the weights were imported or random weights were asked for.

        Skipped while the call is being traced (the marker has no value then);
        `features` and `predict` check before they trace or run anything.
        """
        if self.allow_random_weights or _is_traced(self.weights_imported.value) or self.holds_imported_weights:
            return
        raise ValueError(
            "This FIDInception holds no imported weights: its features, and any FID, KID, Inception Score or "
            "precision/recall computed from them, would be meaningless. Load pytorch-fid's weights with "
            "`keras_sit.convert.import_fid_inception('pt_inception-2015-12-05-6726825d.pth')`, or construct "
            "`FIDInception(allow_random_weights=True)` to compute features with random weights on purpose."
        )

    def call(self, images):
        self._check_weights()
        mixed_6d = _run_chain(self._layers_to_6d(), inception_preprocess(images))
        # The block concatenates its 1x1 branch first, so its first channels are `mixed_6/conv`'s.
        spatial = ops.cast(mixed_6d[..., :SPATIAL_CHANNELS], "float32")
        x = _run_chain(self._layers_after_6d(), mixed_6d)
        pool = ops.mean(ops.cast(x, "float32"), axis=(1, 2))
        logits, logits_unbiased = self.fc(pool)
        return {
            "pool": pool,
            "logits": logits,
            "logits_unbiased": logits_unbiased,
            "spatial": ops.reshape(spatial, (-1, SPATIAL_SIZE * SPATIAL_SIZE * SPATIAL_CHANNELS)),
        }

    def features(self, images, batch_size=None):
        """`call(images)` for inference: no autograd graph on PyTorch, optionally `batch_size` images at a time.

        Returns the dict of float32 tensors described in the class docstring.

        Raises:
            ValueError: the network holds no imported weights (see the class
                docstring), or `images` are not RGB pixels in 0..255
                (`check_inception_images`).
            TypeError: `images` are not real numbers.
        """
        self._check_weights()
        check_inception_images(images)
        return backend.inference_in_chunks(self, images, batch_size)

    def predict(self, x, *args, **kwargs):
        self._check_weights()
        return super().predict(x, *args, **kwargs)

    def get_config(self):
        return {**super().get_config(), "allow_random_weights": self.allow_random_weights}

    def load_own_variables(self, store):
        # A file without the mark (saved before it existed) loads its weights unmarked: refused until re-imported.
        if len(store.keys()) == 0:
            return
        super().load_own_variables(store)


def _is_traced(value):
    """Whether `value` is a placeholder of a function being traced (`jax.jit`, `tf.function`), with no value yet."""
    name = keras.backend.backend()
    if name == "jax":
        import jax

        return isinstance(value, jax.core.Tracer)
    if name == "tensorflow":
        import tensorflow as tf

        return not tf.executing_eagerly()
    return False
