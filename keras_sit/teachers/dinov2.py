"""`DINOv2Teacher`: a frozen DINOv2 ViT whose patch tokens REPA aligns SiT's tokens with.

REPA (Yu et al., 2024) regresses SiT's intermediate tokens onto the patch
tokens of a frozen DINOv2 ViT-B/14 (`forward_features(x)["x_norm_patchtokens"]`:
the tokens after the final LayerNorm, class and register tokens dropped).
This is that network (facebookresearch/dinov2's `DinoVisionTransformer`,
the same as transformers' `Dinov2Model`) in Keras, with REPA's input
transform as its first step, so that the teacher takes the same images as
the rest of keras_sit and runs on JAX, TensorFlow and PyTorch.

It is written here rather than taken from keras-hub's `DINOV2Backbone`:
keras-hub (0.32) requires `tensorflow-text`, which requires the full
`tensorflow`, on Linux and macOS whatever the Keras backend; and REPA's
teacher needs PyTorch's bicubic resize of the images and timm's resampling
of the position table, which `keras.ops.image.resize` does not give on every
backend (`keras_sit.teachers.interpolation`).

Weights come from `keras_sit.convert.import_dinov2` (Hugging Face
`facebook/dinov2-*` or torch hub `dinov2_vit*14*_pretrain.pth` files).
"""

import keras
import numpy as np
from keras import ops

from keras_sit import backend
from keras_sit.teachers.dinov2_layers import (
    MLP_TYPES,
    DINOv2Block,
    DINOv2Embeddings,
    RepaPreprocessing,
    check_count,
    layer_norm,
)
from keras_sit.validation import (
    check_bool,
    check_choice,
    check_float_dtype,
    check_positive_int,
    check_real_dtype,
    check_seed,
)

PATCH_SIZE = 14
REPA_BASE_SIZE = 256  # REPA feeds DINOv2 224 * (S // 256) pixels for S-pixel images
REPA_TEACHER_SIZE = 224

# The released DINOv2 architectures, as facebookresearch/dinov2's hub (`dinov2_vit{s,b,l,g}14[_reg]`) and
# transformers' `facebook/dinov2-{small,base,large,giant}` configs define them. Every one has 64-wide heads and a
# 4x MLP; ViT-g's SwiGLU keeps two thirds of it, rounded up to a multiple of 8: (int(6144 * 2 / 3) + 7) // 8 * 8.
_ARCHITECTURES = {
    "s": {"hidden_size": 384, "depth": 12, "num_heads": 6, "mlp_hidden_size": 1536, "mlp_type": "gelu"},
    "b": {"hidden_size": 768, "depth": 12, "num_heads": 12, "mlp_hidden_size": 3072, "mlp_type": "gelu"},
    "l": {"hidden_size": 1024, "depth": 24, "num_heads": 16, "mlp_hidden_size": 4096, "mlp_type": "gelu"},
    "g": {"hidden_size": 1536, "depth": 40, "num_heads": 24, "mlp_hidden_size": 4096, "mlp_type": "swiglu"},
}
DINOV2_CONFIGS = {
    **{f"dinov2_vit{size}14": {**config, "num_register_tokens": 0} for size, config in _ARCHITECTURES.items()},
    **{f"dinov2_vit{size}14_reg": {**config, "num_register_tokens": 4} for size, config in _ARCHITECTURES.items()},
}
HEAD_DIM = 64  # of every released DINOv2
LINEAR_INIT_STD = 0.02  # DINOv2's (timm's) initialisation of the Linear layers and of the position table
TOKEN_INIT_STD = 1e-6  # of the class and register tokens


def repa_resized_size(image_size):
    """The side REPA resizes `image_size`-pixel images to before DINOv2: `224 * (image_size // 256)`."""
    check_positive_int("image_size", image_size)
    if image_size < REPA_BASE_SIZE:
        raise ValueError(
            f"REPA resizes S-pixel images to 224 * (S // 256) pixels, which is 0 for `image_size`={image_size}: "
            f"pass `resized_size` (a multiple of {PATCH_SIZE}) for images under {REPA_BASE_SIZE} pixels."
        )
    return REPA_TEACHER_SIZE * (image_size // REPA_BASE_SIZE)


@keras.saving.register_keras_serializable(package="keras_sit")
class DINOv2Teacher(keras.Model):
    """DINOv2's patch tokens of images, after REPA's preprocessing: `[B, S, S, 3]` in 0..255 to `[B, N, C]`.

    `call(images)` takes float (or integer) images `[B, S, S, 3]`,
    channels-last, with pixel values in 0..255, `S = image_size`. It divides
    them by 255, normalises them with ImageNet's mean and standard deviation,
    resizes them bicubically to `resized_size` (REPA's
    `preprocess_raw_image`), and runs DINOv2: patch tokens, class token,
    position table, register tokens, `depth` blocks, the final LayerNorm.
    It returns the `N = (resized_size // patch_size) ** 2` patch tokens
    after that norm, row-major over the grid, in float32 (REPA's
    `x_norm_patchtokens`); the class and register tokens are dropped.

    The teacher is frozen: `trainable=False` by default, so its weights are
    non-trainable and `fit` never updates them when it is part of a model.
    Pass `trainable=True` to fine-tune it.

    A new teacher has random weights drawn as DINOv2 initialises them
    (`initialize_weights`); `keras_sit.convert.import_dinov2` builds one
    holding released weights, the only ones whose tokens mean anything to
    REPA, and `from_preset` a random one of a released architecture.

    Args:
        image_size: `S`, the side of the images it is given.
        resized_size: the side they are resized to, a multiple of
            `patch_size`; by default REPA's `224 * (S // 256)` (224 for 256
            pixels, 448 for 512), which needs `S >= 256`.
        patch_size: the side of a patch (14 for every DINOv2).
        hidden_size: `C`, the width of the tokens.
        depth: the number of blocks.
        num_heads: attention heads per block.
        mlp_hidden_size: the hidden width of the MLP (for "swiglu", of each
            half of `w12`).
        mlp_type: "gelu" (ViT-S/B/L) or "swiglu" (ViT-g).
        num_register_tokens: 0, or 4 for the `_reg` variants.
        trainable: whether the weights train (False: frozen).
        seed: seed of `initialize_weights`.
        dtype: the dtype policy; the preprocessing and the returned tokens
            are float32 under any policy.
    """

    def __init__(
        self,
        image_size=REPA_BASE_SIZE,
        resized_size=None,
        patch_size=PATCH_SIZE,
        hidden_size=768,
        depth=12,
        num_heads=12,
        mlp_hidden_size=3072,
        mlp_type="gelu",
        num_register_tokens=0,
        trainable=False,
        seed=None,
        dtype=None,
        **kwargs,
    ):
        for name, value in (
            ("image_size", image_size),
            ("patch_size", patch_size),
            ("hidden_size", hidden_size),
            ("depth", depth),
            ("num_heads", num_heads),
            ("mlp_hidden_size", mlp_hidden_size),
        ):
            check_positive_int(name, value)
        resized_size = repa_resized_size(image_size) if resized_size is None else resized_size
        check_positive_int("resized_size", resized_size)
        if resized_size % patch_size:
            raise ValueError(
                f"`resized_size` ({resized_size}) must be a multiple of `patch_size` ({patch_size}), so the patches "
                "tile the resized image."
            )
        if hidden_size % num_heads:
            raise ValueError(f"`hidden_size` ({hidden_size}) must be divisible by `num_heads` ({num_heads}).")
        check_choice("mlp_type", mlp_type, MLP_TYPES)
        check_count("num_register_tokens", num_register_tokens)
        check_bool("trainable", trainable)
        check_seed(seed)
        check_float_dtype("dtype", dtype)
        super().__init__(trainable=trainable, dtype=dtype, **kwargs)
        self.image_size = int(image_size)
        self.resized_size = int(resized_size)
        self.patch_size = int(patch_size)
        self.hidden_size = int(hidden_size)
        self.depth = int(depth)
        self.num_heads = int(num_heads)
        self.mlp_hidden_size = int(mlp_hidden_size)
        self.mlp_type = mlp_type
        self.num_register_tokens = int(num_register_tokens)
        self.seed = seed

        dtype = self.dtype_policy
        self.preprocessing = RepaPreprocessing(image_size, resized_size, dtype="float32", name="preprocessing")
        self.embeddings = DINOv2Embeddings(
            patch_size, hidden_size, self.grid_size, num_register_tokens, dtype=dtype, name="embeddings"
        )
        self.blocks = [
            DINOv2Block(hidden_size, num_heads, mlp_hidden_size, mlp_type, dtype=dtype, name=f"block_{index}")
            for index in range(depth)
        ]
        self.norm = layer_norm("norm", dtype)
        self.build((None, image_size, image_size, 3))
        self.initialize_weights(seed)
        if not trainable:
            # `trainable=False` reached `Layer.__init__` before the sublayers existed; freeze them too.
            for layer in (self.preprocessing, self.embeddings, *self.blocks, self.norm):
                layer.trainable = False

    @classmethod
    def from_preset(cls, name, **overrides):
        """A teacher with random weights of a released architecture: a key of `DINOV2_CONFIGS` (`"dinov2_vitb14"`)."""
        check_choice("name", name, tuple(DINOV2_CONFIGS))
        return cls(**{**DINOV2_CONFIGS[name], **overrides})

    def initialize_weights(self, seed=None):
        """DINOv2's initial weights, drawn with NumPy, so a `seed` gives the same weights on every backend.

        Linear kernels and the position table N(0, 0.02) (timm's truncated
        normal, cut at +-2, which these never reach), the class and register
        tokens N(0, 1e-6), the patch convolution PyTorch's default
        U(+-1/sqrt(fan_in)), biases zero, norm and layer scales one.
        """
        check_seed(seed)
        rng = np.random.default_rng(seed)
        for variable in self.weights:
            shape, name = tuple(variable.shape), variable.name
            if name == "kernel" and len(shape) == 4:  # (kh, kw, in, out)
                limit = 1.0 / np.sqrt(np.prod(shape[:-1]))
                values = rng.uniform(-limit, limit, size=shape).astype(np.float32)
            elif name in ("kernel", "position_embeddings"):
                values = LINEAR_INIT_STD * rng.standard_normal(shape, dtype=np.float32)
            elif name in ("cls_token", "register_tokens"):
                values = TOKEN_INIT_STD * rng.standard_normal(shape, dtype=np.float32)
            else:  # biases and norm shifts 0; norm and layer scales (`gamma`) 1
                values = np.full(shape, 1.0 if name == "gamma" else 0.0, np.float32)
            variable.assign(values)

    @property
    def grid_size(self):
        """`G`: the patch tokens form a `G x G` grid."""
        return self.resized_size // self.patch_size

    @property
    def num_patches(self):
        """`N = G * G`, the number of tokens the teacher returns per image."""
        return self.grid_size**2

    def build(self, input_shape=None):
        if self.built:
            return
        resized = (None, self.resized_size, self.resized_size, 3)
        tokens = (None, 1 + self.num_register_tokens + self.num_patches, self.hidden_size)
        self.preprocessing.build((None, self.image_size, self.image_size, 3))
        self.embeddings.build(resized)
        for block in self.blocks:
            block.build(tokens)
        self.norm.build(tokens)
        self.built = True

    def _check_images(self, images):
        shape = tuple(images.shape) if hasattr(images, "shape") else ()
        expected = (self.image_size, self.image_size, 3)
        if len(shape) != 4 or any(size is not None and size != want for size, want in zip(shape[1:], expected)):
            raise ValueError(
                f"`images` must be RGB images of shape (batch, {self.image_size}, {self.image_size}, 3) with pixel "
                f"values in 0..255 (this teacher's `image_size` is {self.image_size}); got shape {shape}."
            )
        check_real_dtype("images", images)

    def call(self, images):
        self._check_images(images)
        x = ops.cast(self.preprocessing(images), self.compute_dtype)
        tokens = self.embeddings(x)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        return ops.cast(tokens[:, 1 + self.num_register_tokens :], "float32")

    def features(self, images, batch_size=None):
        """`call(images)` for inference: no autograd graph on PyTorch, optionally `batch_size` images at a time."""
        self._check_images(images)
        return backend.inference_in_chunks(self, images, batch_size)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_patches, self.hidden_size)

    def get_config(self):
        return {
            **super().get_config(),
            "image_size": self.image_size,
            "resized_size": self.resized_size,
            "patch_size": self.patch_size,
            "hidden_size": self.hidden_size,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "mlp_hidden_size": self.mlp_hidden_size,
            "mlp_type": self.mlp_type,
            "num_register_tokens": self.num_register_tokens,
            "seed": self.seed,
        }
