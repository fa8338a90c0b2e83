"""The building blocks of the FID Inception network (`keras_sit.evaluation.inception.FIDInception`).

The blocks follow torchvision's InceptionV3 building blocks with
pytorch-fid's changes: the 3x3 average pools of `InceptionA`, `InceptionC`
and the first `InceptionE` leave the zero padding out of the average (as
TensorFlow does), the second `InceptionE` max-pools instead, and the
classifier has 1008 outputs. Layer names follow the PyTorch module names, so
the checkpoint mapping (`keras_sit.convert.inception`) is one line per
weight. Only Keras layers and `keras.ops` are used, so they run on JAX,
TensorFlow and PyTorch.
"""

import keras
from keras import ops

from keras_sit.validation import check_choice

NUM_CLASSES = 1008  # the TF graph's classifier: 1000 ImageNet classes and 8 unused outputs
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
