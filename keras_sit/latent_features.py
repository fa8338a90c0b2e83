"""Teacher features for the latent cache: a frozen vision model's patch tokens of each image, both flips.

Representation alignment (REPA) trains SiT with an extra loss that aligns
its tokens with a frozen vision model's (the teacher's) patch tokens of the
same clean image. The teacher's forward pass would cost more than the SiT's
at every step, so `write_latent_cache(..., teachers=...)` runs it once and
stores its tokens beside the latents, for each image and its mirror.

A teacher is any Keras model, layer or callable that maps float32 images
`[B, S, S, 3]` with values in 0..255 to tokens `[B, N, C]` (it resizes and
normalises them as it needs). This module checks the `teachers` argument,
runs a teacher on a batch, records what identifies it (class, configuration,
weights' SHA-256) so that a cache is only resumed with the same teachers,
and writes the batches of a shard's features as one `.npy` file without
concatenating them first (a DINOv2-B's tokens of a 1024-image shard are
0.8 GB in float16).
"""

import json
import types

import keras
import numpy as np
from keras import ops

from keras_sit import backend
from keras_sit.fingerprint import weights_fingerprint

DEFAULT_NAME = "features"
# Names that a shard or a batch already uses (a cache's files, `fit`'s dict keys).
RESERVED_NAMES = ("x", "labels", "images", "mean", "std", "sums")
TEACHER = "a Keras model, layer or callable mapping float32 images [B, S, S, 3] in 0..255 to tokens [B, N, C]"


def resolve_teachers(teachers):
    """`teachers` (None, a teacher, or a dict name -> teacher) as a dict name -> teacher."""
    if teachers is None:
        return {}
    if not isinstance(teachers, dict):
        teachers = {DEFAULT_NAME: teachers}
    elif not teachers:
        raise ValueError("`teachers` is an empty dict: pass None for a cache without features.")
    lowered = set()
    for name, teacher in teachers.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(
                f"`teachers` names must be Python identifiers (they name files and batch keys); got {name!r}."
            )
        if name.lower() in RESERVED_NAMES:
            raise ValueError(f"`teachers` name {name!r} is taken; the names {', '.join(RESERVED_NAMES)} are reserved.")
        if name.lower() in lowered:  # the files `NAME.npy` would collide on a case-insensitive file system
            raise ValueError(f"`teachers` names must differ in more than case; got {sorted(teachers)}.")
        lowered.add(name.lower())
        if not callable(teacher):
            raise TypeError(
                f"`teachers` must be {TEACHER}, or a dict of them; got {type(teacher).__name__} for {name!r}."
            )
    return dict(teachers)


def teacher_identity(teacher):
    """What a cache records of a teacher: its class, its configuration (if it has one) and its weights' SHA-256.

    The configuration is `get_config()` less `name` and `trainable`, with
    values JSON cannot hold recorded by their type's name. It includes the
    names of a Sequential or functional model's layers: build the teacher
    as it was built (in a fresh process Keras names them alike) or load it
    from its file to resume a cache.
    """
    config = None
    if isinstance(teacher, keras.layers.Layer):
        try:
            config = keras.saving.serialize_keras_object(teacher)["config"]
        except NotImplementedError:  # a subclassed model without `get_config`
            config = None
    elif hasattr(teacher, "get_config"):
        config = teacher.get_config()
    if isinstance(config, dict):
        config = {key: value for key, value in config.items() if key not in ("name", "trainable")}
    if isinstance(teacher, (types.FunctionType, types.MethodType)):
        class_name = f"{teacher.__module__}.{teacher.__qualname__}"
    else:
        class_name = type(teacher).__name__
    identity = {
        "class_name": class_name,
        "config": config,
        "weights_sha256": weights_fingerprint(getattr(teacher, "weights", None) or []),
    }
    return json.loads(json.dumps(identity, default=lambda value: type(value).__name__))


def teacher_differences(saved, given):
    """The teachers of a cache (`saved`) that `given` (both dicts name -> identity) does not match, in words."""
    saved, given = saved or {}, given or {}
    differences = []
    for name in sorted({*saved, *given}):
        if name not in given:
            differences.append(f"{name!r} (in the cache, not given)")
        elif name not in saved:
            differences.append(f"{name!r} (given, not in the cache)")
        else:
            parts = [
                words
                for key, words in (("class_name", "class"), ("config", "configuration"), ("weights_sha256", "weights"))
                if saved[name].get(key) != given[name].get(key)
            ]
            if parts:
                differences.append(f"{name!r} (another {' and '.join(parts)})")
    return differences


def teacher_features(name, teacher, images, dtype):
    """The teacher's tokens of uint8 `images` `[n, S, S, 3]` and of their mirrors, `[n, 2, N, C]` in `dtype`.

    The teacher sees float32 images in 0..255, the images and their mirrors
    in one call. Tokens that are no real numbers raise a `TypeError` naming
    the teacher; tokens beyond float16's range become infinite here, which
    the cache's writer reports with the NaN it checks for.
    """
    images = np.asarray(images).astype("float32")
    both = np.concatenate([images, images[:, :, ::-1]], axis=0)  # the images, then their mirrors
    with backend.no_grad():
        tokens = ops.convert_to_numpy(teacher(ops.convert_to_tensor(both)))
    n = len(images)
    if tokens.ndim != 3 or tokens.shape[0] != 2 * n:
        raise ValueError(
            f"`teachers` entry {name!r} must map images [B, S, S, 3] to tokens [B, N, C]; for {tuple(both.shape)} "
            f"it gave shape {tuple(tokens.shape)}."
        )
    if tokens.dtype.kind in "OSUcmM":  # objects, text, complex, times: no tokens (bfloat16 is a "V" kind)
        raise TypeError(f"`teachers` entry {name!r} must give tokens of real numbers; got dtype {tokens.dtype}.")
    with np.errstate(over="ignore"):
        return np.stack([tokens[:n], tokens[n:]], axis=1).astype(dtype)


def save_batches(file, batches):
    """Write the concatenation of `batches` (arrays alike but in their first axis) to `file` as one `.npy`."""
    first = batches[0]
    for batch in batches[1:]:
        if batch.shape[1:] != first.shape[1:] or batch.dtype != first.dtype:
            raise ValueError(
                f"A teacher gave tokens of shape {tuple(first.shape[2:])} for one batch and "
                f"{tuple(batch.shape[2:])} for another: its token count and width must not depend on the batch."
            )
    header = {
        "descr": np.lib.format.dtype_to_descr(first.dtype),
        "fortran_order": False,
        "shape": (sum(len(batch) for batch in batches), *first.shape[1:]),
    }
    np.lib.format.write_array_header_1_0(file, header)
    for batch in batches:
        file.write(np.ascontiguousarray(batch).tobytes())
