"""`RepresentationAlignment`: REPA, SiT's tokens aligned with a frozen vision teacher's.

REPA (Yu et al., ICLR 2025) adds to the interpolant loss a term that pulls the
tokens of an early SiT block, through a trainable projector, towards the patch
tokens a frozen self-supervised encoder (DINOv2) gives for the clean image:
minus their cosine similarity, per token, averaged over tokens, examples and
teachers. The blocks up to `depth` learn a representation the teacher already
has, and training reaches a given FID many times sooner.

The teacher's tokens come either from the batch (computed once into the
latent cache, `write_latent_cache(..., teachers=...)`, so that a training step
runs no teacher) or from teachers run on the batch's images during the step
(`teachers=[...]`, for data without a feature cache). Teachers are not part of
the model: `save` stores the projectors, and a loaded model trains from cached
features, or from teachers given again with `set_teachers`.

iREPA (Singh et al., 2025) is two options of the same objective: a 3x3
convolution on the token grid as projector (`projector="conv"`) and the
teacher's tokens spatially normalised, `(z - 0.6 * mean_over_tokens(z)) /
(std_over_tokens(z) + 1e-6)` (`spatial_normalization=0.6`), with weight 1.0;
`RepresentationAlignment.irepa(...)` sets the three.
"""

import math

import keras
from keras import ops

from keras_sit.objectives.base import Objective
from keras_sit.validation import check_choice, check_number, check_positive_int

PROJECTORS = ("mlp", "conv")
# `torch.nn.functional.normalize`'s floor on the norm, which REPA's loss uses.
NORM_EPSILON = 1e-12
# iREPA's `spatial_zscore`: the floor added to the tokens' standard deviation.
SPATIAL_EPSILON = 1e-6
RESERVED_KEYS = ("labels",)


@keras.saving.register_keras_serializable(package="keras_sit")
class RepresentationAlignment(Objective):
    """REPA's alignment term: negative cosine similarity of projected SiT tokens and teacher tokens.

    Args:
        depth: the SiT block whose output tokens are aligned (1-based: 8 is
            the output of the eighth block). REPA uses 8 for SiT-L/XL and 4
            for SiT-B; the blocks up to it all train through the term.
        feature_dims: the teachers' token widths (an int for one teacher, a
            tuple for several): 768 for DINOv2 ViT-B/14.
        feature_keys: the batch keys of the teachers' tokens `[B, N, C]` (one
            per teacher); the default names one teacher `"features"`, the
            name `write_latent_cache` gives a single teacher's tokens. With
            `teachers`, unused.
        projector: `"mlp"` (REPA: Dense(projector_dim) -> SiLU ->
            Dense(projector_dim) -> SiLU -> Dense(C) on each token) or
            `"conv"` (iREPA: a 3x3 convolution on the square token grid).
        projector_dim: the MLP's hidden width (REPA: 2048).
        spatial_normalization: None, or iREPA's `alpha`: the teacher's
            tokens become `(z - alpha * mean(z)) / (std(z) + 1e-6)` over the
            tokens of each example and channel (std with Bessel's
            correction, as `torch.std`).
        weight: the term's factor in the loss (REPA: 0.5).
        teachers: optional frozen teachers (Keras models or callables mapping
            `batch[image_key]` to tokens `[B, N, C]`) run in the training
            step, in place of cached features. Not saved with the model.
        image_key: the batch key the teachers read: `"images"` (a per-example
            input, e.g. the uint8-valued images a DINOv2 teacher takes) or
            `"x"` (the SiT's own data, for a SiT on pixels).
        **kwargs: `Objective` arguments (`name`, `dtype`).

    The teacher's tokens must be as many as SiT's (DINOv2 at 224 px gives
    16x16 = 256, as SiT-*/2 on 32x32 latents); each teacher gets its own
    projector.
    """

    def __init__(
        self,
        depth=8,
        feature_dims=768,
        feature_keys=None,
        projector="mlp",
        projector_dim=2048,
        spatial_normalization=None,
        weight=0.5,
        teachers=None,
        image_key="images",
        name="alignment",
        **kwargs,
    ):
        super().__init__(weight=weight, name=name, **kwargs)
        check_positive_int("depth", depth)
        check_positive_int("projector_dim", projector_dim)
        check_choice("projector", projector, PROJECTORS)
        self.depth = int(depth)
        dims = (feature_dims,) if isinstance(feature_dims, int) else tuple(feature_dims)
        if not dims or not all(isinstance(dim, int) and dim > 0 for dim in dims):
            raise ValueError(f"`feature_dims` must be a positive int or a tuple of them; got {feature_dims!r}.")
        self.feature_dims = dims
        keys = ("features",) if feature_keys is None and len(dims) == 1 else feature_keys
        if isinstance(keys, str):
            keys = (keys,)
        if keys is None or len(tuple(keys)) != len(dims) or not all(_is_batch_key(key) for key in keys):
            raise ValueError(
                f"`feature_keys` must name one batch key (a string other than 'x' and 'labels') per teacher "
                f"({len(dims)} teacher(s) by `feature_dims`); got {feature_keys!r}."
            )
        self.feature_keys = tuple(keys)
        self.projector_kind = projector
        self.projector_dim = int(projector_dim)
        if spatial_normalization is not None:
            spatial_normalization = check_number("spatial_normalization", spatial_normalization, low=0.0)
        self.spatial_normalization = spatial_normalization
        if not isinstance(image_key, str) or image_key in RESERVED_KEYS:
            raise ValueError(f"`image_key` must be 'x' or the name of a per-example input; got {image_key!r}.")
        self.image_key = image_key
        self.token_depths = (self.depth,)
        self.projectors = [self._projector(dim, index) for index, dim in enumerate(dims)]
        self.set_teachers(teachers)

    @classmethod
    def irepa(cls, **kwargs):
        """iREPA's settings: a 3x3 convolution projector, spatial normalisation 0.6, weight 1.0."""
        return cls(**{"projector": "conv", "spatial_normalization": 0.6, "weight": 1.0, **kwargs})

    def set_teachers(self, teachers):
        """Run `teachers` (one per `feature_dims`) on `batch[image_key]` in each step; None reads cached features."""
        if teachers is not None:
            teachers = tuple(teachers) if isinstance(teachers, (list, tuple)) else (teachers,)
            if len(teachers) != len(self.feature_dims) or not all(callable(teacher) for teacher in teachers):
                raise ValueError(
                    f"`teachers` must be {len(self.feature_dims)} callable(s) mapping images to tokens "
                    f"(one per `feature_dims`); got {teachers!r}."
                )
        # Set past Keras' attribute tracking: a teacher's weights are neither trained nor saved with the model.
        object.__setattr__(self, "_teachers", teachers)

    @property
    def teachers(self):
        return self._teachers

    @property
    def extra_inputs(self):
        if self._teachers is None:
            return self.feature_keys
        return () if self.image_key == "x" else (self.image_key,)

    def _projector(self, dim, index):
        if self.projector_kind == "conv":
            return keras.layers.Conv2D(dim, 3, padding="same", name=f"projector_{index}")
        return keras.Sequential(
            [
                keras.layers.Dense(self.projector_dim, activation="silu"),
                keras.layers.Dense(self.projector_dim, activation="silu"),
                keras.layers.Dense(dim),
            ],
            name=f"projector_{index}",
        )

    def build(self, token_shape):
        num_tokens, hidden_size = token_shape
        self.grid = None
        if self.projector_kind == "conv":
            side = math.isqrt(num_tokens)
            if side * side != num_tokens:
                raise ValueError(f"`projector='conv'` needs a square grid of tokens; SiT has {num_tokens}.")
            self.grid = side
            for projector in self.projectors:
                projector.build((None, side, side, hidden_size))
        else:
            for projector in self.projectors:
                projector.build((None, num_tokens, hidden_size))
        self.num_tokens = num_tokens
        self.built = True

    def project(self, tokens, index=0):
        """Teacher `index`'s projector on SiT tokens `[B, N, D]`: `[B, N, feature_dims[index]]`."""
        tokens = ops.cast(tokens, self.compute_dtype)
        if self.grid is None:
            return self.projectors[index](tokens)
        grid = ops.reshape(tokens, (-1, self.grid, self.grid, ops.shape(tokens)[-1]))
        projected = self.projectors[index](grid)
        return ops.reshape(projected, (-1, self.num_tokens, self.feature_dims[index]))

    def teacher_tokens(self, batch):
        """The teachers' tokens for `batch`, each `[B, N, C]` float32, spatially normalised if set."""
        if self._teachers is None:
            features = [batch[key] for key in self.feature_keys]
        else:
            images = batch[self.image_key]
            features = [ops.stop_gradient(teacher(images)) for teacher in self._teachers]
        features = [ops.cast(feature, "float32") for feature in features]
        for feature, dim, key in zip(features, self.feature_dims, self.feature_keys):
            shape = tuple(feature.shape)
            if len(shape) != 3 or shape[1] not in (None, self.num_tokens) or shape[2] not in (None, dim):
                raise ValueError(
                    f"The teacher tokens {key!r} must be [batch, {self.num_tokens}, {dim}] (as many tokens as "
                    f"SiT, `feature_dims` wide); got {shape}."
                )
        if self.spatial_normalization is not None:
            features = [self._normalize_spatially(feature) for feature in features]
        return features

    def _normalize_spatially(self, feature):
        mean = ops.mean(feature, axis=1, keepdims=True)
        count = ops.cast(ops.shape(feature)[1], "float32")
        variance = ops.sum(ops.square(feature - mean), axis=1, keepdims=True) / (count - 1.0)
        return (feature - self.spatial_normalization * mean) / (ops.sqrt(variance) + SPATIAL_EPSILON)

    def term(self, batch, forward, training=False):
        tokens = forward["tokens"][self.depth]
        similarities = [
            ops.mean(cosine_similarity(ops.cast(self.project(tokens, index), "float32"), feature))
            for index, feature in enumerate(self.teacher_tokens(batch))
        ]
        return -sum(similarities) / len(similarities)

    def get_config(self):
        return {
            **super().get_config(),
            "depth": self.depth,
            "feature_dims": list(self.feature_dims),
            "feature_keys": list(self.feature_keys),
            "projector": self.projector_kind,
            "projector_dim": self.projector_dim,
            "spatial_normalization": self.spatial_normalization,
            "image_key": self.image_key,
        }


def cosine_similarity(a, b):
    """Per-token cosine similarity over the last axis, with `torch.nn.functional.normalize`'s floor."""
    a = a / ops.maximum(ops.norm(a, axis=-1, keepdims=True), NORM_EPSILON)
    b = b / ops.maximum(ops.norm(b, axis=-1, keepdims=True), NORM_EPSILON)
    return ops.sum(a * b, axis=-1)


def _is_batch_key(key):
    return isinstance(key, str) and key and key not in ("x", *RESERVED_KEYS)
