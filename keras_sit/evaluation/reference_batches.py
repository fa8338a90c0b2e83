"""ADM's `.npz` batches: reference statistics and image samples, read and written.

ADM's evaluator (openai/guided-diffusion, `evaluations/evaluator.py`) takes two
`.npz` files. A reference batch holds images in `arr_0` (uint8 NHWC) and, when
precomputed, the pool-feature statistics `mu`, `sigma` together with the
spatial (sFID) statistics `mu_s`, `sigma_s`: the evaluator reads all four
whenever `mu` is present. A sample batch holds `arr_0` only (and, from ADM's
class-conditional sampling script, the labels in `arr_1`); its statistics are
computed from the images. Writing samples here in that format lets a result
be cross-checked with ADM's evaluator.
"""

import dataclasses
import zipfile

import numpy as np

from keras_sit.evaluation.metrics import _gaussian
from keras_sit.evaluation.npz import DAMAGED, npz_output_path, open_npz, read_array
from keras_sit.validation import check_bool

IMAGES_KEY = "arr_0"
LABELS_KEY = "arr_1"


@dataclasses.dataclass
class ReferenceBatch:
    """What an ADM reference batch holds.

    `mu`/`sigma` are the pool-feature mean and covariance (float64), `mu_s`/`sigma_s`
    the spatial ones (None where absent). `images` is `arr_0`, loaded only on
    request (ImageNet's holds 10,000 images); `image_shape` is its shape either way
    (None where the file has no `arr_0`).
    """

    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None
    mu_s: np.ndarray | None = None
    sigma_s: np.ndarray | None = None
    images: np.ndarray | None = None
    image_shape: tuple | None = None

    @property
    def has_statistics(self):
        return self.mu is not None

    @property
    def has_spatial_statistics(self):
        return self.mu_s is not None


def _check_images(shape, dtype, name="images"):
    """uint8 images `[N, H, W, 3]`, N, H, W >= 1 (ADM's Inception takes 3-channel uint8 NHWC)."""
    shape, dtype = tuple(shape), np.dtype(dtype)
    if dtype != np.uint8:
        raise TypeError(f"`{name}` must be uint8 images in [0, 255]; got dtype {dtype}.")
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"`{name}` must be images of shape (num_images, height, width, 3); got shape {shape}.")
    if 0 in shape[:3]:
        raise ValueError(f"`{name}` must hold at least one image of at least 1x1 pixels; got shape {shape}.")


def _check_labels(labels, num_images, name="labels"):
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool:
        raise TypeError(f"`{name}` must be integer class indices; got dtype {labels.dtype}.")
    if labels.shape != (num_images,):
        raise ValueError(f"`{name}` must have shape ({num_images},), one per image; got shape {labels.shape}.")
    return labels


def _npz_array_header(path, data, key):
    """`(shape, dtype)` of the array `key` in an `.npz`, from its header without loading it where it can."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as file:
            version = np.lib.format.read_magic(file)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(file)
                return tuple(shape), dtype
            if version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(file)
                return tuple(shape), dtype
    except DAMAGED as error:
        raise ValueError(
            f"`path` {path!r}: the array {key!r} cannot be read (damaged): {type(error).__name__}: {error}"
        ) from error
    array = read_array(data, key, path)  # a format without a public header reader
    return array.shape, array.dtype


def _statistics_pair(path, data, mu_key, sigma_key):
    present = [key in data.files for key in (mu_key, sigma_key)]
    if not any(present):
        return None, None
    if not all(present):
        raise ValueError(f"{path} has only one of `{mu_key}` and `{sigma_key}`; they come together.")
    mu, sigma = read_array(data, mu_key, path), read_array(data, sigma_key, path)
    if not np.issubdtype(mu.dtype, np.floating) or not np.issubdtype(sigma.dtype, np.floating):
        raise TypeError(f"{path}: `{mu_key}` and `{sigma_key}` must be floats; got {mu.dtype} and {sigma.dtype}.")
    return _gaussian(f"{mu_key} (in {path})", mu, f"{sigma_key} (in {path})", sigma)


def read_reference_batch(path, load_images=False):
    """Read an ADM reference batch (or one written by `write_reference_batch`) into a `ReferenceBatch`.

    Only the statistics are loaded unless `load_images`; `arr_0`'s shape and dtype
    are checked from its header either way. A missing file raises a
    `FileNotFoundError`; a damaged or truncated `.npz`, statistics that are
    not a finite mean and covariance (positive semi-definite), and images
    that are not uint8 `[N, H, W, 3]` raise a `ValueError` or `TypeError`
    naming the file.
    """
    check_bool("load_images", load_images)
    with open_npz(path) as data:
        mu, sigma = _statistics_pair(path, data, "mu", "sigma")
        mu_s, sigma_s = _statistics_pair(path, data, "mu_s", "sigma_s")
        if mu is None and mu_s is not None:
            raise ValueError(f"{path} has spatial statistics `mu_s`/`sigma_s` but no `mu`/`sigma`.")
        image_shape = images = None
        if IMAGES_KEY in data.files:
            image_shape, dtype = _npz_array_header(path, data, IMAGES_KEY)
            _check_images(image_shape, dtype, f"arr_0 (in {path})")
            if load_images:
                images = read_array(data, IMAGES_KEY, path)
    if mu is None and image_shape is None:
        raise ValueError(f"{path} is not an ADM batch: it has neither `mu`/`sigma` nor images in `arr_0`.")
    return ReferenceBatch(mu, sigma, mu_s, sigma_s, images, image_shape)


def write_reference_batch(path, mu, sigma, mu_s=None, sigma_s=None, images=None):
    """Write statistics (and optionally images) as an ADM reference batch `.npz`, statistics in float64.

    ADM's evaluator needs `arr_0` in a reference batch (it computes precision and
    recall from its images) and reads `mu_s`/`sigma_s` whenever `mu` is present, so
    a file for ADM's evaluator takes all of them; `read_reference_batch` takes any.
    NumPy appends `.npz` to a path without it. Everything is checked before
    the file is written (see `read_reference_batch`; `path` must not be a
    folder, and its folder must exist).
    """
    npz_output_path(path)
    mu, sigma = _gaussian("mu", mu, "sigma", sigma)
    arrays = {"mu": mu, "sigma": sigma}
    if (mu_s is None) != (sigma_s is None):
        raise ValueError("`mu_s` and `sigma_s` must be given together.")
    if mu_s is not None:
        arrays["mu_s"], arrays["sigma_s"] = _gaussian("mu_s", mu_s, "sigma_s", sigma_s)
    if images is not None:
        images = np.asarray(images)
        _check_images(images.shape, images.dtype)
        arrays[IMAGES_KEY] = images
    np.savez(path, **arrays)


def write_samples(path, images, labels=None):
    """Write samples as an ADM sample batch: uint8 NHWC images in `arr_0`, labels (if any) in `arr_1`.

    The layout of ADM's `image_sample.py`, which its evaluator reads. NumPy
    appends `.npz` to a path without it. Refused before writing: images that
    are not uint8 `[N, H, W, 3]` with N >= 1, labels that are not one
    integer per image, a `path` that is a folder or in a missing folder.
    """
    npz_output_path(path)
    images = np.asarray(images)
    _check_images(images.shape, images.dtype)
    arrays = [images]
    if labels is not None:
        arrays.append(_check_labels(labels, images.shape[0]))
    np.savez(path, *arrays)


def read_samples(path):
    """`(images, labels)` of an ADM sample batch; `labels` is None where the file has no `arr_1`.

    Errors name the file, as in `read_reference_batch`.
    """
    with open_npz(path) as data:
        if IMAGES_KEY not in data.files:
            raise ValueError(f"{path} is not an ADM sample batch: it has no `arr_0`; it holds {sorted(data.files)}.")
        shape, dtype = _npz_array_header(path, data, IMAGES_KEY)
        _check_images(shape, dtype, f"arr_0 (in {path})")  # before loading the images
        images = read_array(data, IMAGES_KEY, path)
        labels = read_array(data, LABELS_KEY, path) if LABELS_KEY in data.files else None
    if labels is not None:
        labels = _check_labels(labels, images.shape[0], f"arr_1 (in {path})")
    return images, labels
