"""What a latent cache is written from: the sources `write_latent_cache` takes (an `ImageFolder`, an
`ArrayImages`, or a sequence of `(uint8 image, label)` pairs), their checks, and their fingerprint."""

import hashlib
import os

import numpy as np

from keras_sit.fingerprint import arrays_fingerprint
from keras_sit.images import ArrayImages, ImageFolder, UnreadableImageError
from keras_sit.validation import check_positive_int


def source_length(source):
    """`len(source)`, for a source that is a sequence of `(image, label)` pairs."""
    if isinstance(source, np.ndarray):
        raise TypeError(
            "`source` is a NumPy array; wrap uint8 images [N, S, S, 3] as `keras_sit.latents.ArrayImages(images, "
            "labels)`."
        )
    if isinstance(source, (str, bytes, os.PathLike, dict)) or not (
        hasattr(source, "__len__") and hasattr(source, "__getitem__")
    ):
        raise TypeError(
            "`source` must be an ImageFolder, an ArrayImages, or a sequence of (uint8 [S, S, 3] image, label) pairs; "
            f"got {type(source).__name__}"
            + (" (wrap a folder of images as `ImageFolder(root, image_size)`)." if isinstance(source, str) else ".")
        )
    return len(source)


def source_class_names(source):
    """The source's `class_names` as a list of str (empty where it has none)."""
    names = getattr(source, "class_names", None)
    if names is None:
        return []
    if isinstance(names, (str, bytes)) or not all(isinstance(name, str) for name in names):
        raise TypeError(f"`source.class_names` must be a list of str, or None; got {names!r}.")
    return list(names)


def first_readable(source):
    """`(index, item)` of the first item of `source` that reads; a source of unreadable images only raises."""
    for index in range(len(source)):
        try:
            return index, source[index]
        except UnreadableImageError:
            continue  # `on_error` decides when its shard is written
    raise ValueError(f"No image of `source` could be read ({len(source)} tried): the cache would be empty.")


def source_image_size(source, first):
    """The side of the source's images: its `image_size`, else that of its first readable image."""
    size = getattr(source, "image_size", None)
    if size is not None:
        check_positive_int("source.image_size", size)
        return int(size)
    index, item = first
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        check_source_item(item, index, 1, 0)  # raises, naming what the item is
    shape = np.shape(item[0])
    if len(shape) != 3 or shape[0] != shape[1] or shape[0] == 0:
        raise ValueError(f"`source[{index}]` must give a square RGB image [S, S, 3]; got shape {shape}.")
    return int(shape[0])


def check_source_item(item, index, image_size, num_classes):
    """`source[index]` as `(uint8 [S, S, 3] image, int label)`; anything else raises, naming the item.

    A label is -1 (none) or a class index, below `num_classes` where the
    source names its classes (`num_classes` > 0).
    """
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        got = f"{type(item).__name__} of shape {np.shape(item)}" if isinstance(item, np.ndarray) else repr(item)[:80]
        raise TypeError(f"`source[{index}]` must be an (image, label) pair; got {got}.")
    image, label = item
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"`source[{index}]` must give a uint8 image (0..255); got dtype {image.dtype}.")
    if image.shape != (image_size, image_size, 3):
        raise ValueError(
            f"`source[{index}]` must give an RGB image of shape ({image_size}, {image_size}, 3), the source's image "
            f"size; got shape {image.shape}."
        )
    label_array = np.asarray(label)
    if label_array.ndim != 0 or label_array.dtype.kind not in "iu":
        raise TypeError(f"`source[{index}]` must give an int label (-1 for none); got {label!r}.")
    label = int(label_array)
    if label < -1 or (num_classes and label >= num_classes):
        classes = f"0..{num_classes - 1} (its {num_classes} class names)" if num_classes else "0, 1, ..."
        raise ValueError(f"`source[{index}]` must give a label of -1 (none) or a class in {classes}; got {label}.")
    return image, label


def source_fingerprint(source, first=None):
    """A SHA-256 (hex) that identifies `source`'s images and labels, as `cache.json` records it (`"source_sha256"`).

    - `ImageFolder`: the relative paths of its files in order, their sizes
      in bytes and their labels, and the image size; no pixel is read, so
      it is cheap for millions of files. An image rewritten with the same
      size in bytes is not told apart.
    - `ArrayImages`: the bytes, dtype and shape of its images and of its
      labels.
    - any other source: its `fingerprint()`, where it has one (a str that
      changes when its images or labels do); else its class name, length,
      image size, class names, and the pixels and labels of its first
      readable and of its last item. Give a source whose other items may
      change a `fingerprint()`.
    """
    digest = hashlib.sha256()
    if isinstance(source, ImageFolder):
        digest.update(f"ImageFolder;{source.image_size};".encode())
        for path, label in source.files:
            try:
                size = os.path.getsize(path)
            except OSError:
                size = -1  # gone: read (and raised or skipped) as unreadable
            relative = os.path.relpath(path, source.root).replace(os.sep, "/")
            digest.update(f"{relative}\0{size}\0{label}\n".encode())
    elif isinstance(source, ArrayImages):
        digest.update(f"ArrayImages;{arrays_fingerprint(source.images, source.labels)}".encode())
    elif callable(getattr(source, "fingerprint", None)):
        value = source.fingerprint()
        if not isinstance(value, str):
            raise TypeError(f"`source.fingerprint()` must return a str; got {type(value).__name__}.")
        digest.update(f"{type(source).__qualname__};fingerprint;{value}".encode())
    else:
        first = first_readable(source) if first is None else first
        names = getattr(source, "class_names", None)
        digest.update(f"{type(source).__qualname__};{len(source)};{getattr(source, 'image_size', None)};".encode())
        digest.update(f"{list(names or [])};".encode())
        for index in dict.fromkeys((first[0], len(source) - 1)):
            try:
                item = source[index] if index != first[0] else first[1]
            except UnreadableImageError as error:
                digest.update(f"{index};unreadable;{error.path};".encode())
                continue
            pair = isinstance(item, (tuple, list)) and len(item) == 2  # anything else is refused when it is read
            image, label = item if pair else (item, None)
            digest.update(f"{index};{label!r};{arrays_fingerprint(np.asarray(image))};".encode())
    return digest.hexdigest()


def readable_items(source, indices, on_error, skipped, verbose):
    """The `(index, item)` of `indices`; unreadable ones raise, or are appended to `skipped`."""
    for index in indices:
        try:
            item = source[index]
        except UnreadableImageError as error:
            if on_error == "raise":
                raise
            skipped.append({"index": index, "path": error.path, "reason": error.reason})
            if verbose:
                below_progress_bar = "\n" if verbose == 1 else ""
                print(f"{below_progress_bar}Skipped the unreadable image {error.path!r}: {error.reason}")
            continue
        yield index, item
