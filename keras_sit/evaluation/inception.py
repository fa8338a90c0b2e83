"""The FID Inception network (the 2015-12-05 TF Inception graph, as ported by pytorch-fid) in Keras.

FID, sFID, Inception Score and precision/recall in the diffusion literature
are computed with this network and its weights
(`pt_inception-2015-12-05-6726825d.pth`). It is written here because neither
Keras nor keras-hub has it: their InceptionV3, like torchvision's, is a
different network with other weights, and its features give other numbers.
pytorch-fid, which has it, runs on PyTorch only and needs torchvision, which
cannot always be installed beside the torch build in use.

The blocks follow torchvision's InceptionV3 building blocks with
pytorch-fid's changes: the 3x3 average pools of `InceptionA`, `InceptionC`
and the first `InceptionE` leave the zero padding out of the average (as
TensorFlow does), the second `InceptionE` max-pools instead, and the
classifier has 1008 outputs. Layer names follow the PyTorch module names, so
the checkpoint mapping (`keras_sit.convert.inception`) is one line per
weight. Only Keras layers and `keras.ops` are used, so it runs on JAX,
TensorFlow and PyTorch.

`FIDInception.features` takes uint8 images `[B, H, W, 3]` (or floats in
[0, 255]) and does pytorch-fid's input transform: a bilinear resize to
299x299 (`align_corners=False`, no antialiasing) and the scaling to [-1, 1].
ADM's TensorFlow evaluator feeds images to the TF graph itself, which
resizes and scales them its own way, so the features here match
pytorch-fid's, and ADM's only closely.
"""

import keras
from keras import ops

from keras_sit import backend
from keras_sit.validation import check_bool, check_choice, check_real_dtype

INPUT_SIZE = 299  # the network's input resolution; every image is resized to it
NUM_CLASSES = 1008  # the TF graph's classifier: 1000 ImageNet classes and 8 unused outputs
SPATIAL_CHANNELS = 7  # ADM's sFID keeps the first 7 channels of `mixed_6/conv`
SPATIAL_SIZE = 17  # `mixed_6/conv` is 17x17 at 299x299 input
BATCH_NORM_EPSILON = 1e-3  # the graph's (and torchvision's) value


def _with_channels(shape, channels):
    return (*shape[:-1], channels)


def _build_chain(layers, shape):
    """Build `layers` one after the other from `shape`; returns the output shape."""
    for layer in layers:
        layer.build(shape)
        shape = layer.compute_output_shape(shape)
    return shape


def _run_chain(layers, x):
    for layer in layers:
        x = layer(x)
    return x


@keras.saving.register_keras_serializable(package="keras_sit")
class BasicConv2d(keras.layers.Layer):
    """`ReLU(BatchNorm(conv(x)))`: a conv without bias, then an inference-mode batch norm (eps 0.001).

    `padding` is Keras' `"valid"` or `"same"`; every padded conv of the
    network has stride 1 and an odd kernel, where `"same"` is PyTorch's
    symmetric `(k - 1) / 2` padding.
    """

    def __init__(self, filters, kernel_size, strides=1, padding="valid", **kwargs):
        super().__init__(**kwargs)
        check_choice("padding", padding, ("valid", "same"))
        self.filters = filters
        self.kernel_size = tuple(kernel_size) if isinstance(kernel_size, (list, tuple)) else kernel_size
        self.strides = strides
        self.padding = padding
        self.conv = keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            use_bias=False,
            dtype=self.dtype_policy,
            name="conv",
        )
        self.bn = keras.layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, dtype=self.dtype_policy, name="bn")

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build(self.conv.compute_output_shape(input_shape))

    def call(self, x):
        return ops.relu(self.bn(self.conv(x), training=False))

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
        }


def _pool(kind, strides, padding, dtype, name):
    """A 3x3 pool. Keras' `"same"` average pool leaves the padding out of the average on every backend."""
    pool = keras.layers.AveragePooling2D if kind == "avg" else keras.layers.MaxPooling2D
    return pool(3, strides=strides, padding=padding, dtype=dtype, name=name)


def _split(branch):
    """`(layers applied in turn, the layers of the fork at its end or ())` of a branch."""
    if isinstance(branch[-1], tuple):
        return branch[:-1], branch[-1]
    return branch, ()


class _Mixed(keras.layers.Layer):
    """Parallel branches concatenated on channels, in the order `_branches()` lists them.

    A branch is a list of layers applied in turn; the InceptionE ones end in
    a fork, a tuple of two layers that both take the output before it and
    whose outputs are concatenated.
    """

    def build(self, input_shape):
        for branch in self._branches():
            chain, fork = _split(branch)
            shape = _build_chain(chain, input_shape)
            for layer in fork:
                layer.build(shape)

    def call(self, x):
        outputs = []
        for branch in self._branches():
            chain, fork = _split(branch)
            h = _run_chain(chain, x)
            outputs.extend([layer(h) for layer in fork] or [h])
        return ops.concatenate(outputs, axis=-1)

    def compute_output_shape(self, input_shape):
        channels = 0
        for branch in self._branches():
            chain, fork = _split(branch)
            shape = input_shape
            for layer in chain:
                shape = layer.compute_output_shape(shape)
            shapes = [layer.compute_output_shape(shape) for layer in fork] or [shape]
            channels += sum(s[-1] for s in shapes)
        return _with_channels(shapes[0], channels)


@keras.saving.register_keras_serializable(package="keras_sit")
class InceptionA(_Mixed):
    """35x35 block: 1x1; 1x1 -> 5x5; 1x1 -> 3x3 -> 3x3; 3x3 average pool (padding not counted) -> 1x1."""

    def __init__(self, pool_features, **kwargs):
        super().__init__(**kwargs)
        self.pool_features = pool_features
        dtype = self.dtype_policy
        self.branch1x1 = BasicConv2d(64, 1, dtype=dtype, name="branch1x1")
        self.branch5x5_1 = BasicConv2d(48, 1, dtype=dtype, name="branch5x5_1")
        self.branch5x5_2 = BasicConv2d(64, 5, padding="same", dtype=dtype, name="branch5x5_2")
        self.branch3x3dbl_1 = BasicConv2d(64, 1, dtype=dtype, name="branch3x3dbl_1")
        self.branch3x3dbl_2 = BasicConv2d(96, 3, padding="same", dtype=dtype, name="branch3x3dbl_2")
        self.branch3x3dbl_3 = BasicConv2d(96, 3, padding="same", dtype=dtype, name="branch3x3dbl_3")
        self.pool = _pool("avg", 1, "same", dtype, "pool")
        self.branch_pool = BasicConv2d(pool_features, 1, dtype=dtype, name="branch_pool")

    def _branches(self):
        return [
            [self.branch1x1],
            [self.branch5x5_1, self.branch5x5_2],
            [self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3],
            [self.pool, self.branch_pool],
        ]

    def get_config(self):
        return {**super().get_config(), "pool_features": self.pool_features}


@keras.saving.register_keras_serializable(package="keras_sit")
class InceptionB(_Mixed):
    """35x35 -> 17x17: 3x3 stride 2; 1x1 -> 3x3 -> 3x3 stride 2; 3x3 max pool stride 2."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        dtype = self.dtype_policy
        self.branch3x3 = BasicConv2d(384, 3, strides=2, dtype=dtype, name="branch3x3")
        self.branch3x3dbl_1 = BasicConv2d(64, 1, dtype=dtype, name="branch3x3dbl_1")
        self.branch3x3dbl_2 = BasicConv2d(96, 3, padding="same", dtype=dtype, name="branch3x3dbl_2")
        self.branch3x3dbl_3 = BasicConv2d(96, 3, strides=2, dtype=dtype, name="branch3x3dbl_3")
        self.pool = _pool("max", 2, "valid", dtype, "pool")

    def _branches(self):
        return [
            [self.branch3x3],
            [self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3],
            [self.pool],
        ]


@keras.saving.register_keras_serializable(package="keras_sit")
class InceptionC(_Mixed):
    """17x17 block with factorized 7x7 convs: 1x1; 1x1 -> 1x7 -> 7x1; 1x1 -> (7x1 -> 1x7) x 2;
    3x3 average pool (padding not counted) -> 1x1. `channels_7x7` is the width inside the 7x7 branches."""

    def __init__(self, channels_7x7, **kwargs):
        super().__init__(**kwargs)
        self.channels_7x7 = channels_7x7
        c7, dtype = channels_7x7, self.dtype_policy
        self.branch1x1 = BasicConv2d(192, 1, dtype=dtype, name="branch1x1")
        self.branch7x7_1 = BasicConv2d(c7, 1, dtype=dtype, name="branch7x7_1")
        self.branch7x7_2 = BasicConv2d(c7, (1, 7), padding="same", dtype=dtype, name="branch7x7_2")
        self.branch7x7_3 = BasicConv2d(192, (7, 1), padding="same", dtype=dtype, name="branch7x7_3")
        self.branch7x7dbl_1 = BasicConv2d(c7, 1, dtype=dtype, name="branch7x7dbl_1")
        self.branch7x7dbl_2 = BasicConv2d(c7, (7, 1), padding="same", dtype=dtype, name="branch7x7dbl_2")
        self.branch7x7dbl_3 = BasicConv2d(c7, (1, 7), padding="same", dtype=dtype, name="branch7x7dbl_3")
        self.branch7x7dbl_4 = BasicConv2d(c7, (7, 1), padding="same", dtype=dtype, name="branch7x7dbl_4")
        self.branch7x7dbl_5 = BasicConv2d(192, (1, 7), padding="same", dtype=dtype, name="branch7x7dbl_5")
        self.pool = _pool("avg", 1, "same", dtype, "pool")
        self.branch_pool = BasicConv2d(192, 1, dtype=dtype, name="branch_pool")

    def _branches(self):
        return [
            [self.branch1x1],
            [self.branch7x7_1, self.branch7x7_2, self.branch7x7_3],
            [self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5],
            [self.pool, self.branch_pool],
        ]

    def get_config(self):
        return {**super().get_config(), "channels_7x7": self.channels_7x7}


@keras.saving.register_keras_serializable(package="keras_sit")
class InceptionD(_Mixed):
    """17x17 -> 8x8: 1x1 -> 3x3 stride 2; 1x1 -> 1x7 -> 7x1 -> 3x3 stride 2; 3x3 max pool stride 2."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        dtype = self.dtype_policy
        self.branch3x3_1 = BasicConv2d(192, 1, dtype=dtype, name="branch3x3_1")
        self.branch3x3_2 = BasicConv2d(320, 3, strides=2, dtype=dtype, name="branch3x3_2")
        self.branch7x7x3_1 = BasicConv2d(192, 1, dtype=dtype, name="branch7x7x3_1")
        self.branch7x7x3_2 = BasicConv2d(192, (1, 7), padding="same", dtype=dtype, name="branch7x7x3_2")
        self.branch7x7x3_3 = BasicConv2d(192, (7, 1), padding="same", dtype=dtype, name="branch7x7x3_3")
        self.branch7x7x3_4 = BasicConv2d(192, 3, strides=2, dtype=dtype, name="branch7x7x3_4")
        self.pool = _pool("max", 2, "valid", dtype, "pool")

    def _branches(self):
        return [
            [self.branch3x3_1, self.branch3x3_2],
            [self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4],
            [self.pool],
        ]


@keras.saving.register_keras_serializable(package="keras_sit")
class InceptionE(_Mixed):
    """8x8 block with split 3x3 convs: 1x1; 1x1 -> (1x3 | 3x1); 1x1 -> 3x3 -> (1x3 | 3x1); 3x3 pool -> 1x1.

    `pool="avg"` (padding not counted) in `Mixed_7b`; `"max"` in `Mixed_7c`,
    as in the TF graph.
    """

    def __init__(self, pool="avg", **kwargs):
        super().__init__(**kwargs)
        check_choice("pool", pool, ("avg", "max"))
        self.pool_type = pool
        dtype = self.dtype_policy
        self.branch1x1 = BasicConv2d(320, 1, dtype=dtype, name="branch1x1")
        self.branch3x3_1 = BasicConv2d(384, 1, dtype=dtype, name="branch3x3_1")
        self.branch3x3_2a = BasicConv2d(384, (1, 3), padding="same", dtype=dtype, name="branch3x3_2a")
        self.branch3x3_2b = BasicConv2d(384, (3, 1), padding="same", dtype=dtype, name="branch3x3_2b")
        self.branch3x3dbl_1 = BasicConv2d(448, 1, dtype=dtype, name="branch3x3dbl_1")
        self.branch3x3dbl_2 = BasicConv2d(384, 3, padding="same", dtype=dtype, name="branch3x3dbl_2")
        self.branch3x3dbl_3a = BasicConv2d(384, (1, 3), padding="same", dtype=dtype, name="branch3x3dbl_3a")
        self.branch3x3dbl_3b = BasicConv2d(384, (3, 1), padding="same", dtype=dtype, name="branch3x3dbl_3b")
        self.pool = _pool(pool, 1, "same", dtype, "pool")
        self.branch_pool = BasicConv2d(192, 1, dtype=dtype, name="branch_pool")

    def _branches(self):
        return [
            [self.branch1x1],
            [self.branch3x3_1, (self.branch3x3_2a, self.branch3x3_2b)],
            [self.branch3x3dbl_1, self.branch3x3dbl_2, (self.branch3x3dbl_3a, self.branch3x3dbl_3b)],
            [self.pool, self.branch_pool],
        ]

    def get_config(self):
        return {**super().get_config(), "pool": self.pool_type}


@keras.saving.register_keras_serializable(package="keras_sit")
class Classifier(keras.layers.Layer):
    """The 1008-way classifier `fc`, in float32: `(pool @ kernel + bias, pool @ kernel)`.

    The second output, without the bias, is what the Inception Score of
    improved-GAN and ADM's evaluator take a softmax of (`pool_3` times the
    weights of `softmax/logits/MatMul`).
    """

    def __init__(self, units=NUM_CLASSES, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform", name="kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def call(self, x):
        unbiased = ops.matmul(x, self.kernel)
        return ops.add(unbiased, self.bias), unbiased

    def compute_output_shape(self, input_shape):
        shape = _with_channels(input_shape, self.units)
        return shape, shape

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def inception_preprocess(images):
    """pytorch-fid's input transform, channels-last: `[B, H, W, 3]` in [0, 255] to `[B, 299, 299, 3]` in [-1, 1].

    Scales to [0, 1], resizes bilinearly to 299x299 as
    `F.interpolate(mode="bilinear", align_corners=False)` (half-pixel
    centres, no antialiasing), then maps to `2 x - 1`.
    """
    _check_images(images)
    x = ops.divide(ops.cast(images, "float32"), 255.0)
    x = ops.image.resize(x, (INPUT_SIZE, INPUT_SIZE), interpolation="bilinear", antialias=False)
    return ops.subtract(ops.multiply(x, 2.0), 1.0)


def _check_images(images):
    shape = tuple(images.shape) if hasattr(images, "shape") else ()
    if len(shape) != 4 or shape[-1] not in (None, 3):
        raise ValueError(f"`images` must be RGB images of shape (batch, height, width, 3); got shape {shape}.")
    check_real_dtype("images", images)


@keras.saving.register_keras_serializable(package="keras_sit")
class FIDInception(keras.Model):
    """The FID Inception network, channels-last; weights from `keras_sit.convert.import_fid_inception`.

    `call(images)` and `features(images)` take `[B, H, W, 3]` images in
    [0, 255] (uint8 or float), apply pytorch-fid's transform (`inception_preprocess`)
    and return float32 features:

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
                docstring), or `images` are not RGB images.
        """
        self._check_weights()
        _check_images(images)
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
