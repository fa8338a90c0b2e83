"""Bad pictures, latents, statistics and evaluation files are refused clearly, before any work.

The first table is `tests/test_bad_inputs.py`'s for images, the autoencoder's
input, the FID Inception's input, the metrics and the evaluation's files:
each row makes one call with one bad input, and gives the exception and a
pattern of its message, which names the argument or the file and says what
was expected. The second table holds inputs at the edge that are handled
correctly (a 16-bit PNG is scaled, an all-black float batch is valid FID
input, ...), each with a check of the result. The last test makes refused
calls over files already on disk and checks that every byte is as it was.

No row runs a network: the FID Inception is not built (its `features` and
`call` are called on a stand-in that passes the weights guard, since they
refuse bad images before running anything), and the tiny autoencoder and
SiT are built once and never trained.
"""

import contextlib
import functools
import io
import json
import os
import types

import keras
import numpy as np
import pytest
from PIL import Image

import keras_sit
from keras_sit import images as pictures
from keras_sit import visualization
from keras_sit.autoencoders.base import check_batch
from keras_sit.evaluation import (
    EvaluationSamples,
    FeatureStatistics,
    FIDInception,
    ReferenceBatch,
    cli,
    evaluate,
    frechet_distance,
    generate_for_evaluation,
    inception_preprocess,
    inception_score,
    kernel_inception_distance,
    precision_recall,
    read_reference_batch,
    read_samples,
    write_reference_batch,
    write_samples,
)
from keras_sit.evaluation.inception import check_inception_images
from keras_sit.images import ArrayImages, ImageFolder, UnreadableImageError, center_crop, read_image
from tests.conftest import file, folder, refusal_table, tiny_autoencoder

NAN, INF = float("nan"), float("inf")
TINY = dict(input_shape=(4, 4, 1), patch_size=2, hidden_size=8, depth=1, num_heads=2, num_classes=3, seed=0)
IMAGES = np.zeros((2, 16, 16, 3), "float32")  # a batch for the tiny autoencoder, in [-1, 1]
LATENTS = np.zeros((2, 8, 8, 4), "float32")
UINT8 = np.zeros((4, 8, 8, 3), "uint8")
RAMP = (np.arange(4 * 8 * 8 * 3) % 251).astype("uint8").reshape(4, 8, 8, 3)  # bytes found again in a file
# Larger than one read of zipfile's (4 KiB): reading its header does not reach its end, where the CRC is checked.
BIG_RAMP = (np.arange(4 * 32 * 32 * 3) % 251).astype("uint8").reshape(4, 32, 32, 3)


def full(shape, value, dtype="float32"):
    return np.full(shape, value, dtype)


def tensor(array):
    """`array` as the backend's own tensor: the checks read tensors as well as NumPy arrays."""
    return keras.ops.convert_to_tensor(array)


def features(rows, dim=3):
    return np.random.default_rng(rows).normal(size=(rows, dim))


def gaussian(dim):
    return np.zeros(dim), np.eye(dim)


# --- shared models, built on first use --------------------------------------------------------


@functools.cache
def sit():
    return keras_sit.SiT(**TINY)


@functools.cache
def vae():
    return tiny_autoencoder()


@functools.cache
def latent_sit():
    return keras_sit.LatentSiT(vae(), image_size=16, **{k: v for k, v in TINY.items() if k != "input_shape"})


# `FIDInception.features` and `call` check their images before the network runs; a stand-in with the
# weights guard passed calls them without building the 24M-parameter network.
INCEPTION = types.SimpleNamespace(_check_weights=lambda: None, _layers_to_6d=lambda: [])


# --- files, written into the test's working directory (its `tmp_path`) -----------------------


def npz(name, *args, **arrays):
    np.savez(name, *args, **arrays)
    return name


def truncated(name):
    """The file cut to half its length."""
    with open(name, "rb") as f:
        content = f.read()
    return file(name, content[: len(content) // 2])


def damaged_npz(name, key, **arrays):
    """An `.npz` of `arrays` with bytes of `arrays[key]` changed in it: the archive opens, but not that member."""
    np.savez(name, **arrays)
    with open(name, "rb") as f:
        content = f.read()
    data = arrays[key].tobytes()
    start, length = content.index(data) + len(data) // 4, max(1, len(data) // 4)
    changed = bytes(255 - b for b in content[start : start + length])
    return file(name, content[:start] + changed + content[start + length :])


def picture(name, array, **options):
    Image.fromarray(array).save(name, **options)
    return name


def image_folder(root, *names, content=None):
    """`root/a/<name>` for each name: a real 8x8 PNG, or `content` bytes when given."""
    folder(os.path.join(root, "a"))
    for name in names:
        path = os.path.join(root, "a", name)
        if content is None:
            picture(path, np.zeros((8, 8, 3), "uint8"))
        else:
            file(path, content)
    return root


def stats_npz(name, mu=None, sigma=None, count=None):
    """A file of `FeatureStatistics.save`'s keys: 3-d statistics of 5 features unless told otherwise."""
    mu, sigma = np.zeros(3) if mu is None else mu, np.eye(3) if sigma is None else sigma
    return npz(name, mu=mu, sigma=sigma, count=np.int64(5) if count is None else count)


def samples_dir(name, num_samples=4, batch_size=4, **chunk_features):
    """A folder as `generate_for_evaluation` leaves it, its chunks holding `chunk_features` (`[B, d]`)."""
    folder(name)
    plan = {"num_samples": num_samples, "batch_size": batch_size, "seed": 0, "num_classes": None, "generate": {}}
    file(os.path.join(name, "samples.json"), json.dumps(plan).encode())
    for chunk in range(-(-num_samples // batch_size)):
        count = min(batch_size, num_samples - chunk * batch_size)
        arrays = {"images": np.zeros((count, 4, 4, 3), "uint8"), "labels": np.full(count, -1, "int32")}
        arrays.update({f"feature_{key}": value[:count] for key, value in chunk_features.items()})
        np.savez(os.path.join(name, f"chunk-{chunk:05d}.npz"), **arrays)
    return name


class CommandLineError(Exception):
    """The command line ended with an exit status; its message is what it printed to stderr."""


def command(*argv):
    """`python -m keras_sit.evaluation ARGV`, in process; a refusal raises a CommandLineError with the message."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            return cli.main(list(argv))
        except SystemExit as exit:
            raise CommandLineError(f"exit status {exit.code}: {stderr.getvalue()}") from None


PD_NEGATIVE = -np.eye(3)
INDEFINITE = np.diag([1.0, -5.0, 1.0])

# (id, call, exception, pattern of the message)
ROWS = [
    # --- image files ----------------------------------------------------------------------------
    ("read_image/truncated", lambda: read_image(truncated(picture("cut.png", RAMP[0]))),
     UnreadableImageError, r"Could not read the image 'cut.png': "),
    ("read_image/garbage", lambda: read_image(file("garbage.jpg")),
     UnreadableImageError, r"Could not read the image 'garbage.jpg': UnidentifiedImageError"),
    ("read_image/folder", lambda: read_image(folder("photo.png")),
     UnreadableImageError, r"Could not read the image 'photo.png': it is a folder, not an image file"),
    ("read_image/missing", lambda: read_image("missing.png"),
     FileNotFoundError, r"No image file at `path` 'missing.png'"),
    ("read_image/type", lambda: read_image(None),
     TypeError, r"`path` must be a path to an image file \(str or os.PathLike\); got NoneType"),
    ("read_image/float_tiff", lambda: read_image(picture("float.tif", full((4, 4), 0.5))),
     UnreadableImageError, r"'float.tif': ValueError: `image` has 32-bit float pixels \(mode 'F'\), whose range"),
    ("read_image/wide_int_tiff", lambda: read_image(picture("wide.tif", full((4, 4), 70000, "int32"))),
     UnreadableImageError, r"'wide.tif': .*\(mode 'I'\) in \[70000, 70000\], outside the 16-bit range 0..65535"),
    ("images.to_rgb/type", lambda: pictures.to_rgb(UINT8[0]), TypeError, r"`image` must be a PIL.Image; got ndarray"),
    ("images.to_rgb/float", lambda: pictures.to_rgb(Image.fromarray(full((4, 4), 200.0))),
     ValueError, r"`image` has 32-bit float pixels \(mode 'F'\), whose range \(0..1 or 0..255\) is not recorded"),
    ("images.to_rgb/negative_int", lambda: pictures.to_rgb(Image.fromarray(full((4, 4), -5, "int32"))),
     ValueError, r"`image` has integer pixels \(mode 'I'\) in \[-5, -5\], outside the 16-bit range"),
    ("center_crop/path", lambda: center_crop("photo.png", 8), TypeError, r"`image` must be a PIL.Image; got str"),
    ("center_crop/no_pixels", lambda: center_crop(Image.new("RGB", (0, 4)), 8),
     ValueError, r"`image` has no pixels: its size is \(0, 4\)"),
    ("ImageFolder/type", lambda: ImageFolder(None, 8),
     TypeError, r"`root` must be a path to a folder \(str or os.PathLike\); got NoneType"),
    ("ImageFolder/file", lambda: ImageFolder(file("images.zip"), 8),
     ValueError, r"`root` must be a folder of class sub-folders; 'images.zip' is not a folder"),
    ("ImageFolder/unreadable", lambda: ImageFolder(image_folder("images", "x.png", content=b"junk"), 8)[0],
     UnreadableImageError, r"Could not read the image 'images/a/x.png'"),
    ("ArrayImages/empty", lambda: ArrayImages(UINT8[:0]),
     ValueError, r"`images` must hold at least one image of at least 1x1 pixels; got shape \(0, 8, 8, 3\)"),
    ("ArrayImages/uint16", lambda: ArrayImages(UINT8.astype("uint16")),
     TypeError, r"`images` must be uint8 \(0..255\); got dtype uint16"),
    ("ArrayImages/negative_label", lambda: ArrayImages(UINT8, labels=[0, 1, -1, 0]),
     ValueError, r"`labels` must be class indices >= 0 \(for unlabelled images pass `labels=None`\); got -1"),
    ("ArrayImages/bool_labels", lambda: ArrayImages(UINT8, labels=[True, False, True, False]),
     TypeError, r"`labels` must be integer class indices; got dtype bool"),
    ("ArrayImages/class_names_type", lambda: ArrayImages(UINT8, class_names="cats"),
     TypeError, r"`class_names` must be a list of strings; got 'cats'"),
    ("ArrayImages/class_names_short", lambda: ArrayImages(UINT8, labels=[0, 1, 2, 0], class_names=["a", "b"]),
     ValueError, r"`class_names` must name every label: labels go up to 2, but there are 2 names"),
    # --- pictures out -------------------------------------------------------------------------
    ("to_uint8/nan", lambda: visualization.to_uint8(full((2, 4, 4, 3), NAN)),
     ValueError, r"`images` hold NaN or Inf values; they have no colour to draw"),
    ("to_uint8/int64", lambda: visualization.to_uint8(full((2, 4, 4, 3), 200, "int64")),
     TypeError, r"`images` must be uint8 \(0..255\) or floats in \[-1, 1\]; got dtype int64"),
    ("to_uint8/pixels_as_floats", lambda: visualization.to_uint8(RAMP.astype("float32")),
     ValueError, r"`images` are floats of whole numbers in 0..255 \(8-bit pixels cast to float\), but are read in "
     r"a range that ends at 1"),
    ("to_float/int64", lambda: visualization.to_float(full((2, 4, 4, 3), 200, "int64")),
     TypeError, r"`images` must be uint8 \(0..255\) or floats in \[-1, 1\]; got dtype int64"),
    ("to_float/strings", lambda: visualization.to_float(full((2, 2), "x", object)),
     TypeError, r"`images` must be uint8 \(0..255\) or floats in \[-1, 1\]; got dtype object"),
    ("visualization.to_rgb/two_channels", lambda: visualization.to_rgb(UINT8[..., :2]),
     ValueError, r"`images` must be \[..., height, width, 1 or 3 channels\]; got shape \(4, 8, 8, 2\)"),
    ("image_grid/empty", lambda: visualization.image_grid(UINT8[:0], rows=1),
     ValueError, r"`images` must hold at least one image of at least 1x1 pixels; got shape \(0, 8, 8, 3\)"),
    ("image_grid/pixels_as_floats", lambda: visualization.image_grid(RAMP.astype("float32"), rows=2),
     ValueError, r"`images` are floats of whole numbers in 0..255 .* give `value_range=\(0, 255\)`"),
    ("image_grid/pad_negative", lambda: visualization.image_grid(UINT8, rows=2, pad=-1),
     ValueError, r"`pad` must be an int >= 0 \(grey pixels around each tile\); got -1"),
    ("image_grid/pad_float", lambda: visualization.image_grid(UINT8, rows=2, pad=1.5),
     TypeError, r"`pad` must be an int >= 0 .*; got 1.5"),
    ("image_grid/value_range_inf", lambda: visualization.image_grid(IMAGES, rows=1, value_range=(-INF, 1)),
     ValueError, r"`value_range` must be finite; got \(-inf, 1\)"),
    ("save_image_grid/two_channels", lambda: visualization.save_image_grid(IMAGES[..., :2], "grid.png"),
     ValueError, r"`images` must have 1 \(grey\) or 3 \(RGB\) channels; got shape \(2, 16, 16, 2\)"),
    ("save_image_grid/nan", lambda: visualization.save_image_grid(full((2, 4, 4, 3), NAN), "grid.png"),
     ValueError, r"`images` hold NaN or Inf values"),
    ("save_image_grid/min_height_zero", lambda: visualization.save_image_grid(UINT8, "grid.png", min_height=0),
     ValueError, r"`min_height` must be a positive int; got 0"),
    ("save_image_grid/min_height_string", lambda: visualization.save_image_grid(UINT8, "grid.png", min_height="64"),
     TypeError, r"`min_height` must be a positive int; got '64'"),
    ("save_image_grid/folder", lambda: visualization.save_image_grid(UINT8, folder("grids")),
     ValueError, r"`path` 'grids' is a folder; give the name of the image file to write"),
    ("save_image_grid/no_suffix", lambda: visualization.save_image_grid(UINT8, "grid"),
     ValueError, r"`path` 'grid' must end in an image suffix such as '.png'; it has no suffix"),
    ("save_image_grid/unknown_suffix", lambda: visualization.save_image_grid(UINT8, "grid.txt"),
     ValueError, r"`path` 'grid.txt' must end in an image suffix such as '.png'; Pillow writes no '.txt' files"),
    ("save_image_grid/missing_folder", lambda: visualization.save_image_grid(UINT8, "out/grid.png"),
     FileNotFoundError, r"The folder of `path` 'out/grid.png' does not exist; create 'out' first"),
    ("save_image_grid/path_type", lambda: visualization.save_image_grid(UINT8, 3),
     TypeError, r"`path` must be a file name \(str or os.PathLike\); got int"),
    # --- the autoencoder's input ----------------------------------------------------------------
    ("AutoencoderKL.encode/uint8", lambda: vae().encode(np.zeros((2, 16, 16, 3), "uint8")),
     TypeError, r"`images` must be floats in \[-1, 1\]; got dtype uint8 \(convert uint8 pixels with "
     r"`keras_sit.visualization.to_float`\)"),
    ("AutoencoderKL.encode/int32", lambda: vae().encode(np.zeros((2, 16, 16, 3), "int32")),
     TypeError, r"`images` must be floats in \[-1, 1\]; got dtype int32"),
    ("AutoencoderKL.encode/pixels_as_floats", lambda: vae().encode(full((2, 16, 16, 3), 200.0)),
     ValueError, r"`images` must be floats in \[-1, 1\]; got values in \[200, 200\] \(for pixels in 0..255"),
    ("AutoencoderKL.encode/negative", lambda: vae().encode(full((2, 16, 16, 3), -3.0)),
     ValueError, r"`images` must be floats in \[-1, 1\]; got values in \[-3, -3\]"),
    ("AutoencoderKL.encode/nan", lambda: vae().encode(full((2, 16, 16, 3), NAN)),
     ValueError, r"`images` hold NaN or Inf values; images must be finite"),
    ("AutoencoderKL.encode/inf_tensor", lambda: vae().encode(tensor(full((2, 16, 16, 3), INF))),
     ValueError, r"`images` hold NaN or Inf values"),
    ("AutoencoderKL.encode/pixels_tensor", lambda: vae().encode(tensor(full((2, 16, 16, 3), 255.0))),
     ValueError, r"`images` must be floats in \[-1, 1\]; got values in \[255, 255\]"),
    ("AutoencoderKL.encode/no_height", lambda: vae().encode(np.zeros((2, 0, 16, 3), "float32")),
     ValueError, r"`images` height and width must be positive; got shape \(2, 0, 16, 3\)"),
    ("AutoencoderKL.encode/empty", lambda: vae().encode(IMAGES[:0]),
     ValueError, r"`images` must hold at least one of the images; got shape \(0, 16, 16, 3\)"),
    ("AutoencoderKL.decode/empty", lambda: vae().decode(LATENTS[:0]),
     ValueError, r"`latents` must hold at least one of the scaled latents; got shape \(0, 8, 8, 4\)"),
    ("AutoencoderKL.encode_distribution/pixels", lambda: vae().encode_distribution(full((1, 16, 16, 3), 128.0)),
     ValueError, r"`images` must be floats in \[-1, 1\]; got values in \[128, 128\]"),
    ("AutoencoderKL.encode_moments/nan", lambda: vae().encode_moments(full((1, 16, 16, 3), NAN)),
     ValueError, r"`images` hold NaN or Inf values"),
    ("AutoencoderKL.decode/nan", lambda: vae().decode(full((2, 8, 8, 4), NAN)),
     ValueError, r"`latents` hold NaN or Inf values; scaled latents must be finite"),
    ("AutoencoderKL.decode/inf_tensor", lambda: vae().decode(tensor(full((2, 8, 8, 4), -INF))),
     ValueError, r"`latents` hold NaN or Inf values"),
    ("AutoencoderKL.decode/no_width", lambda: vae().decode(np.zeros((2, 8, 0, 4), "float32")),
     ValueError, r"`latents` height and width must be positive; got shape \(2, 8, 0, 4\)"),
    ("check_batch/range", lambda: check_batch(full((1, 4, 4, 3), 5.0), 3, 2, "images", "images"),
     ValueError, r"`images` must be floats in \[-1, 1\]; got values in \[5, 5\]"),
    ("LatentSiT.encode_images/pixels_as_floats", lambda: latent_sit().encode_images(full((2, 16, 16, 3), 255.0)),
     ValueError, r"`images` must be floats in \[-1, 1\]; got values in \[255, 255\]"),
    ("LatentSiT.encode_images/int64", lambda: latent_sit().encode_images(full((2, 16, 16, 3), 3, "int64")),
     TypeError, r"`images` must be uint8 \(0..255\) or floats in \[-1, 1\]; got dtype int64"),
    ("LatentSiT.decode_latents/nan", lambda: latent_sit().decode_latents(full((2, 8, 8, 4), NAN)),
     ValueError, r"`latents` hold NaN or Inf values"),
    # --- the FID Inception's input -------------------------------------------------------------
    ("inception_preprocess/minus_one_to_one",
     lambda: inception_preprocess(np.linspace(-1, 1, 192, dtype="float32").reshape(1, 8, 8, 3)),
     ValueError, r"`images` must be pixels in 0..255 .*; got values in \[-1, 1\] \(images in \[-1, 1\] map to "
     r"0..255 as `\(x \+ 1\) \* 127.5`\)"),
    ("inception_preprocess/zero_to_one",
     lambda: inception_preprocess(np.linspace(0, 1, 192, dtype="float32").reshape(1, 8, 8, 3)),
     ValueError, r"`images` must be pixels in 0..255; these floats lie in \[0, 1\] with fractions, as images in "
     r"\[0, 1\] or \[-1, 1\] do"),
    ("inception_preprocess/zero_to_one_tensor", lambda: inception_preprocess(tensor(full((1, 8, 8, 3), 0.25))),
     ValueError, r"these floats lie in \[0.25, 0.25\] with fractions"),
    ("inception_preprocess/nan", lambda: inception_preprocess(full((1, 8, 8, 3), NAN)),
     ValueError, r"`images` hold NaN or Inf values; the FID Inception needs pixels in 0..255"),
    ("inception_preprocess/above_255", lambda: inception_preprocess(full((1, 8, 8, 3), 300.0)),
     ValueError, r"`images` must be pixels in 0..255 \(uint8, or floats of that range\); got values in \[300, 300\]"),
    ("inception_preprocess/int_above_255", lambda: inception_preprocess(full((1, 8, 8, 3), 256, "int32")),
     ValueError, r"`images` must be pixels in 0..255 .*; got values in \[256, 256\]"),
    ("inception_preprocess/no_height", lambda: inception_preprocess(UINT8[:, :0]),
     ValueError, r"`images` height and width must be positive; got shape \(4, 0, 8, 3\)"),
    ("check_inception_images/list", lambda: check_inception_images([[[[0, 0, 0]]]]),
     ValueError, r"`images` must be RGB images of shape \(batch, height, width, 3\); got shape \(\)"),
    ("FIDInception.features/minus_one_to_one", lambda: FIDInception.features(INCEPTION, full((2, 8, 8, 3), -1.0)),
     ValueError, r"`images` must be pixels in 0..255 .*; got values in \[-1, -1\]"),
    ("FIDInception.features/bools", lambda: FIDInception.features(INCEPTION, UINT8.astype(bool)),
     TypeError, r"`images` must be an array of real numbers"),
    ("FIDInception.call/nan", lambda: FIDInception.call(INCEPTION, tensor(full((2, 8, 8, 3), NAN))),
     ValueError, r"`images` hold NaN or Inf values"),
    # --- metrics --------------------------------------------------------------------------------
    ("frechet_distance/negative_sigma1", lambda: frechet_distance(np.zeros(3), PD_NEGATIVE, *gaussian(3)),
     ValueError, r"`sigma1` must be a covariance matrix \(positive semi-definite\); it has the negative eigenvalue -1"),
    ("frechet_distance/indefinite_sigma2", lambda: frechet_distance(*gaussian(3), np.zeros(3), INDEFINITE),
     ValueError, r"`sigma2` must be a covariance matrix \(positive semi-definite\); it has the negative eigenvalue -5"),
    ("frechet_distance/sigma2_vector", lambda: frechet_distance(*gaussian(3), np.zeros(3), np.ones(3)),
     ValueError, r"`sigma2` must be a covariance of shape \(3, 3\) to match `mu2`; got shape \(3,\)"),
    ("frechet_distance/no_dimensions", lambda: frechet_distance(np.zeros(0), np.zeros((0, 0)), *gaussian(1)),
     ValueError, r"`mu1` must have at least one dimension; got shape \(0,\)"),
    ("frechet_distance/inf_sigma", lambda: frechet_distance(np.zeros(2), full((2, 2), INF), *gaussian(2)),
     ValueError, r"`sigma1` must be finite; it holds 4 NaN or inf values"),
    ("kernel_inception_distance/no_features", lambda: kernel_inception_distance(np.zeros((5, 0)), np.zeros((5, 0))),
     ValueError, r"`features1` must have at least one feature per sample; got shape \(5, 0\)"),
    ("inception_score/no_classes", lambda: inception_score(np.zeros((4, 0)), splits=1),
     ValueError, r"`logits_or_probs` must have at least one feature per sample; got shape \(4, 0\)"),
    ("precision_recall/no_features", lambda: precision_recall(np.zeros((5, 0)), np.zeros((5, 0))),
     ValueError, r"`real_features` must have at least one feature per sample; got shape \(5, 0\)"),
    ("precision_recall/nan", lambda: precision_recall(features(5), full((5, 3), NAN)),
     ValueError, r"`fake_features` must be finite; it holds 15 NaN or inf values"),
    ("FeatureStatistics.update/no_features", lambda: FeatureStatistics().update(np.zeros((3, 0))),
     ValueError, r"`features` must have at least one feature per sample; got shape \(3, 0\)"),
    ("FeatureStatistics.load/garbage", lambda: FeatureStatistics.load(file("stats.npz")),
     ValueError, r"`path` 'stats.npz' is not an .npz file: it is not a zip archive \(truncated, damaged, or another"),
    ("FeatureStatistics.load/truncated", lambda: FeatureStatistics.load(truncated(stats_npz("stats.npz"))),
     ValueError, r"`path` 'stats.npz' is not an .npz file"),
    ("FeatureStatistics.load/missing", lambda: FeatureStatistics.load("stats.npz"),
     FileNotFoundError, r"No file at `path` 'stats.npz'; expected an .npz file"),
    ("FeatureStatistics.load/folder", lambda: FeatureStatistics.load(folder("stats.npz")),
     ValueError, r"`path` 'stats.npz' is a folder; expected an .npz file"),
    ("FeatureStatistics.load/negative_sigma", lambda: FeatureStatistics.load(stats_npz("stats.npz", sigma=PD_NEGATIVE)),
     ValueError, r"`sigma \(in stats.npz\)` must be a covariance matrix \(positive semi-definite\)"),
    ("FeatureStatistics.load/nan_mu", lambda: FeatureStatistics.load(stats_npz("stats.npz", mu=full(3, NAN))),
     ValueError, r"`mu \(in stats.npz\)` must be finite; it holds 3 NaN or inf values"),
    ("FeatureStatistics.load/objects", lambda: FeatureStatistics.load(stats_npz("stats.npz", mu=np.array([None] * 3))),
     ValueError, r"`path` 'stats.npz': the array 'mu' cannot be read \(damaged, or objects that need pickle\)"),
    ("FeatureStatistics.load/float_count", lambda: FeatureStatistics.load(stats_npz("stats.npz", count=np.float64(5))),
     ValueError, r"stats.npz: `count` must be an integer >= 2"),
    ("FeatureStatistics.save/folder", lambda: FeatureStatistics.from_features(features(4)).save(folder("stats.npz")),
     ValueError, r"`path` 'stats.npz' names a folder \('stats.npz'\); give the name of the .npz file to write"),
    ("FeatureStatistics.save/missing_folder", lambda: FeatureStatistics.from_features(features(4)).save("out/s.npz"),
     FileNotFoundError, r"The folder of `path` 'out/s.npz' does not exist; create 'out' first"),
    # --- ADM batches ----------------------------------------------------------------------------
    ("read_reference_batch/garbage", lambda: read_reference_batch(file("ref.npz")),
     ValueError, r"`path` 'ref.npz' is not an .npz file: it is not a zip archive"),
    ("read_reference_batch/truncated", lambda: read_reference_batch(truncated(npz("ref.npz", arr_0=RAMP))),
     ValueError, r"`path` 'ref.npz' is not an .npz file"),
    ("read_reference_batch/damaged_images",
     lambda: read_reference_batch(damaged_npz("ref.npz", "arr_0", arr_0=RAMP), load_images=True),
     ValueError, r"`path` 'ref.npz': the array 'arr_0' cannot be read \(damaged.*\): BadZipFile: Bad CRC-32"),
    ("read_reference_batch/damaged_mu",
     lambda: read_reference_batch(damaged_npz("ref.npz", "mu", mu=np.arange(3.0) + 0.5, sigma=np.eye(3))),
     ValueError, r"`path` 'ref.npz': the array 'mu' cannot be read"),
    ("read_reference_batch/missing", lambda: read_reference_batch("ref.npz"),
     FileNotFoundError, r"No file at `path` 'ref.npz'; expected an .npz file"),
    ("read_reference_batch/type", lambda: read_reference_batch(3),
     TypeError, r"`path` must be a path to an .npz file \(str or os.PathLike\); got int"),
    ("read_reference_batch/nan_sigma",
     lambda: read_reference_batch(npz("ref.npz", mu=np.zeros(2), sigma=full((2, 2), NAN))),
     ValueError, r"`sigma \(in ref.npz\)` must be finite"),
    ("read_reference_batch/negative_sigma",
     lambda: read_reference_batch(npz("ref.npz", mu=np.zeros(3), sigma=INDEFINITE)),
     ValueError, r"`sigma \(in ref.npz\)` must be a covariance matrix \(positive semi-definite\)"),
    ("read_reference_batch/negative_sigma_s",
     lambda: read_reference_batch(npz("ref.npz", mu=np.zeros(3), sigma=np.eye(3), mu_s=np.zeros(3),
                                      sigma_s=PD_NEGATIVE)),
     ValueError, r"`sigma_s \(in ref.npz\)` must be a covariance matrix"),
    ("read_reference_batch/int_mu",
     lambda: read_reference_batch(npz("ref.npz", mu=np.zeros(3, "int64"), sigma=np.eye(3))),
     TypeError, r"ref.npz: `mu` and `sigma` must be floats; got int64 and float64"),
    ("read_reference_batch/no_images", lambda: read_reference_batch(npz("ref.npz", arr_0=UINT8[:0])),
     ValueError, r"`arr_0 \(in ref.npz\)` must hold at least one image of at least 1x1 pixels; got shape "
     r"\(0, 8, 8, 3\)"),
    ("read_samples/garbage", lambda: read_samples(file("samples.npz")),
     ValueError, r"`path` 'samples.npz' is not an .npz file"),
    ("read_samples/damaged", lambda: read_samples(damaged_npz("samples.npz", "arr_0", arr_0=RAMP)),
     ValueError, r"`path` 'samples.npz': the array 'arr_0' cannot be read"),
    ("read_samples/float_labels", lambda: read_samples(npz("samples.npz", UINT8, np.zeros(4))),
     TypeError, r"`arr_1 \(in samples.npz\)` must be integer class indices; got dtype float64"),
    ("read_samples/grey_images", lambda: read_samples(npz("samples.npz", UINT8[..., :1])),
     ValueError, r"`arr_0 \(in samples.npz\)` must be images of shape \(num_images, height, width, 3\)"),
    ("write_samples/empty", lambda: write_samples("samples.npz", UINT8[:0]),
     ValueError, r"`images` must hold at least one image of at least 1x1 pixels; got shape \(0, 8, 8, 3\)"),
    ("write_samples/folder", lambda: write_samples(folder("samples.npz"), UINT8),
     ValueError, r"`path` 'samples.npz' names a folder"),
    ("write_reference_batch/negative_sigma", lambda: write_reference_batch("ref.npz", np.zeros(3), PD_NEGATIVE),
     ValueError, r"`sigma` must be a covariance matrix \(positive semi-definite\)"),
    ("write_reference_batch/missing_folder", lambda: write_reference_batch("out/ref.npz", *gaussian(3)),
     FileNotFoundError, r"The folder of `path` 'out/ref.npz' does not exist"),
    # --- the evaluation runner ------------------------------------------------------------------
    ("generate_for_evaluation/directory_is_file", lambda: generate_for_evaluation(sit(), file("samples"), 4),
     ValueError, r"`directory` 'samples' is a file; give a folder \(new, or of these samples\) to write to"),
    ("generate_for_evaluation/directory_type", lambda: generate_for_evaluation(sit(), None, 4),
     TypeError, r"`directory` must be a path to a folder \(str or os.PathLike\); got NoneType"),
    ("generate_for_evaluation/model", lambda: generate_for_evaluation("SiT-XL/2", "samples", 4),
     TypeError, r"`model` must be a keras_sit SiT or LatentSiT; got str"),
    ("generate_for_evaluation/feature_extractor", lambda: generate_for_evaluation(sit(), "samples", 4,
                                                                                  feature_extractor="inception"),
     TypeError, r"`feature_extractor` must be callable or None; got str"),
    ("generate_for_evaluation/verbose", lambda: generate_for_evaluation(sit(), "samples", 4, verbose=3),
     ValueError, r"`verbose` must be 0, 1 or 2; got 3"),
    ("generate_for_evaluation/unrecordable", lambda: generate_for_evaluation(sit(), "samples", 4, sampler=object()),
     TypeError, r"`sampler` must be a number, string, bool, None or a list of them \(the runner records the "
     r"`generate` settings in samples.json\); got object"),
    ("generate_for_evaluation/damaged_plan",
     lambda: (file(os.path.join(folder("samples"), "samples.json"), b'{"num_sam'),
              generate_for_evaluation(sit(), "samples", 4)),
     ValueError, r"'samples/samples.json' is damaged \(not the JSON `generate_for_evaluation` writes\)"),
    ("EvaluationSamples/truncated_plan", lambda: EvaluationSamples(truncated(os.path.join(samples_dir("s"),
                                                                                        "samples.json")) and "s"),
     ValueError, r"'s/samples.json' is damaged \(not the JSON `generate_for_evaluation` writes\)"),
    ("EvaluationSamples/plan_without_counts",
     lambda: EvaluationSamples(file(os.path.join(folder("s"), "samples.json"), b'{"seed": 0}') and "s"),
     ValueError, r"'s/samples.json' is damaged: it lacks the positive `num_samples` and `batch_size`"),
    ("EvaluationSamples/type", lambda: EvaluationSamples(7),
     TypeError, r"`directory` must be a path to a folder \(str or os.PathLike\); got int"),
    ("EvaluationSamples.chunks/garbage", lambda: list(EvaluationSamples(
        file(os.path.join(samples_dir("s"), "chunk-00000.npz")) and "s").chunks()),
     ValueError, r"The sample chunk 's/chunk-00000.npz' is not an .npz file"),
    ("EvaluationSamples.chunks/no_images",
     lambda: list(EvaluationSamples(npz(os.path.join(samples_dir("s"), "chunk-00000.npz"), labels=np.zeros(4, "int32"))
                                    and "s").chunks()),
     ValueError, r"The sample chunk 's/chunk-00000.npz' lacks \['images'\]: it was not written by "
     r"`generate_for_evaluation`"),
    ("EvaluationSamples.write_adm_npz/folder",
     lambda: EvaluationSamples(samples_dir("s")).write_adm_npz(folder("a.npz")),
     ValueError, r"`path` 'a.npz' names a folder"),
    ("evaluate/nothing",
     lambda: evaluate(EvaluationSamples(samples_dir("s")), ReferenceBatch(image_shape=(4, 8, 8, 3))),
     ValueError, r"`evaluate` has nothing to compute: the samples in 's' hold the features \[\], `reference` holds "
     r"neither statistics nor loaded images, and `feature_extractor` is None. FID \(sFID\) needs"),
    ("evaluate/images_without_extractor",
     lambda: evaluate(EvaluationSamples(samples_dir("s", pool=features(4))), ReferenceBatch(images=UINT8)),
     ValueError, r"`evaluate` has nothing to compute: the samples in 's' hold the features \['pool'\], `reference` "
     r"holds images, and `feature_extractor` is None"),
    ("evaluate/dimensions",
     lambda: evaluate(EvaluationSamples(samples_dir("s", pool=features(4))), ReferenceBatch(*gaussian(5))),
     ValueError, r"The samples' 'pool' features are 3-d, but `reference`'s statistics of them are 5-d"),
    ("evaluate/samples", lambda: evaluate("samples/", ReferenceBatch(*gaussian(3))),
     TypeError, r"`samples` must be EvaluationSamples \(from `generate_for_evaluation`\); got str"),
    ("evaluate/reference", lambda: evaluate(EvaluationSamples(samples_dir("s")), "ref.npz"),
     TypeError, r"`reference` must be a ReferenceBatch \(from `read_reference_batch`\); got str"),
    ("evaluate/feature_extractor",
     lambda: evaluate(EvaluationSamples(samples_dir("s")), ReferenceBatch(*gaussian(3)), feature_extractor=3),
     TypeError, r"`feature_extractor` must be callable or None; got int"),
    # --- the command line -----------------------------------------------------------------------
    ("cli/garbage_npz", lambda: cli.open_input("first path", file("stats.npz")),
     cli.InputError, r"first path: 'stats.npz' is not a statistics or images .npz: `path` 'stats.npz' is not an "
     r".npz file"),
    ("cli/nan_statistics", lambda: cli.open_input("second path", npz("stats.npz", mu=full(3, NAN), sigma=np.eye(3))),
     cli.InputError, r"second path: 'stats.npz' is not a statistics or images .npz: `mu \(in stats.npz\)` must be "
     r"finite"),
    ("cli/not_a_covariance", lambda: cli.open_input("first path", npz("stats.npz", mu=np.zeros(3), sigma=PD_NEGATIVE)),
     cli.InputError, r"first path: 'stats.npz' .*`sigma \(in stats.npz\)` must be a covariance matrix"),
    ("cli/float_images", lambda: cli.open_input("first path", npz("images.npz", arr_0=UINT8.astype("float32"))),
     cli.InputError, r"first path: 'images.npz' .*`arr_0 \(in images.npz\)` must be uint8 images in \[0, 255\]; "
     r"got dtype float32"),
    ("cli/damaged_images", lambda: cli.open_input("first path", damaged_npz("images.npz", "arr_0", arr_0=RAMP)),
     cli.InputError, r"first path: 'images.npz' is not a statistics or images .npz: `path` 'images.npz': the array "
     r"'arr_0' cannot be read \(damaged\): BadZipFile: Bad CRC-32"),
    ("cli/damaged_images_in_batches",
     lambda: list(cli.open_input("first path", damaged_npz("images.npz", "arr_0", arr_0=BIG_RAMP)).batches(2)),
     cli.InputError, r"first path: `arr_0` in 'images.npz' cannot be read \(damaged\): BadZipFile: Bad CRC-32"),
    ("cli/float_picture", lambda: list(cli.open_input("first path", (image_folder("pictures", "0.png"),
                                                                      picture("pictures/1.tif", full((8, 8), 0.5)))[0]
                                                      ).batches(2)),
     cli.InputError, r"first path: 'pictures/1.tif' cannot be read as an image: ValueError: `image` has 32-bit float"),
    ("cli/save_stats_missing_folder",
     lambda: command(image_folder("pictures", "0.png", "1.png"), "out/stats.npz", "--save-stats",
                     "--inception", file("inception.pth")),
     CommandLineError, r"(?s)exit status 2: .*second path: the folder of 'out/stats.npz' does not exist"),
]  # fmt: skip


test_bad_input = refusal_table(ROWS)


# --- inputs at the edge, handled correctly -----------------------------------------------------


def read_array(path):
    return np.asarray(read_image(path))


def wide_grey_png():
    """A 16-bit PNG (Pillow mode I;16) of values across 0..65535, and the uint8 values it must read as."""
    values = np.array([[0, 128, 129, 257, 32896, 65535]], "uint16")
    return picture("grey16.png", values), np.array([[0, 0, 1, 1, 128, 255]], "uint8")


def check_wide_grey():
    path, expected = wide_grey_png()
    assert Image.open(path).mode == "I;16"
    image = read_array(path)
    assert image.dtype == np.uint8 and image.shape == (1, 6, 3)
    np.testing.assert_array_equal(image[..., 0], expected)  # round(value / 257), not clipped to white
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def check_32_bit_grey():
    path, expected = wide_grey_png()
    image = pictures.to_rgb(Image.open(path).convert("I"))  # the mode some Pillow versions open 16-bit PNGs in
    np.testing.assert_array_equal(np.asarray(image)[..., 1], expected)


def check_modes():
    palette = Image.new("P", (2, 2))
    palette.putpalette([255, 0, 0] + [0] * 765)
    cases = [
        (picture("bits.png", np.ones((2, 2), bool)), (255, 255, 255)),  # 1-bit white
        (Image.new("LA", (2, 2), (100, 7)).save("la.png") or "la.png", (100, 100, 100)),  # alpha dropped
        (palette.save("palette.png") or "palette.png", (255, 0, 0)),
        (Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save("cmyk.tif") or "cmyk.tif", (255, 0, 0)),  # red
        (Image.new("RGBA", (2, 2), (10, 20, 30, 0)).save("rgba.png") or "rgba.png", (10, 20, 30)),
    ]
    for path, colour in cases:
        image = read_array(path)
        assert image.shape == (2, 2, 3) and image.dtype == np.uint8, path
        np.testing.assert_array_equal(image[0, 0], colour, err_msg=path)
    premultiplied = np.asarray(pictures.to_rgb(Image.new("La", (2, 2), (100, 255))))
    np.testing.assert_array_equal(premultiplied[0, 0], (100, 100, 100))


def check_black_float_pixels_are_fid_input():
    black = np.zeros((2, 8, 8, 3), "float32")  # an all-black 0..255 float batch: whole numbers
    for images in (black, tensor(black)):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(inception_preprocess(images)), -1.0)
    white = np.full((1, 8, 8, 3), 255.3, "float32")  # a little resampling overshoot
    assert keras.ops.convert_to_numpy(inception_preprocess(white)).max() == pytest.approx(1.0, abs=1e-2)
    pixels = keras.ops.convert_to_numpy(inception_preprocess(RAMP.astype("float32")))
    np.testing.assert_allclose(pixels, keras.ops.convert_to_numpy(inception_preprocess(RAMP)), atol=1e-6)


def check_autoencoder_takes_slight_overshoot_and_uint8_through_latent_sit():
    overshoot = np.full((1, 16, 16, 3), 1.2, "float32")
    assert tuple(vae().encode(overshoot, sample=False).shape) == (1, 8, 8, 4)
    assert tuple(vae().encode(tensor(-overshoot), sample=False).shape) == (1, 8, 8, 4)
    uint8 = np.full((2, 16, 16, 3), 255, "uint8")  # LatentSiT converts uint8 pixels before encoding
    expected = keras.ops.convert_to_numpy(vae().encode(np.ones((2, 16, 16, 3), "float32"), sample=False))
    np.testing.assert_allclose(latent_sit().encode_images(uint8), expected, rtol=1e-5, atol=1e-5)


def check_pictures_out():
    noise = np.random.default_rng(0).normal(0, 3, (4, 4, 4, 3)).astype("float32")  # a sampler's overshoot
    grid = visualization.to_uint8(noise)
    assert grid.min() == 0 and grid.max() == 255  # clipped, not refused
    np.testing.assert_array_equal(visualization.image_grid(RAMP.astype("float32"), 2, value_range=(0, 255)),
                                  visualization.image_grid(RAMP, 2))  # fmt: skip
    binary = np.array([0.0, 1.0], "float32").reshape(2, 1, 1, 1)  # whole numbers, but within [-1, 1]
    np.testing.assert_array_equal(visualization.image_grid(binary, 1, pad=0).ravel(), [128, 255])
    visualization.save_image_grid(UINT8, "grid.jpg", rows=2, min_height=1)
    assert Image.open("grid.jpg").format == "JPEG"


def check_covariances_at_rounding_level():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 64))  # fewer samples than dimensions: rank-deficient
    sigma = np.cov(x, rowvar=False).astype("float32").astype("float64")  # stored in single precision
    assert np.linalg.eigvalsh(sigma)[0] < 0  # rounding made it slightly indefinite
    assert frechet_distance(x.mean(0), sigma, x.mean(0), sigma) == pytest.approx(0.0, abs=1e-3)
    assert frechet_distance(np.zeros(2), np.zeros((2, 2)), np.ones(2), np.zeros((2, 2))) == pytest.approx(2.0)


def check_statistics_files():
    statistics = FeatureStatistics.from_features(features(6))
    statistics.save("stats")  # NumPy's suffix
    assert FeatureStatistics.load("stats.npz").count == 6
    write_samples("samples", RAMP, labels=np.arange(4))
    images, labels = read_samples("samples.npz")
    np.testing.assert_array_equal(images, RAMP)
    np.testing.assert_array_equal(labels, np.arange(4))


def check_evaluate_with_logits_alone():
    logits = np.random.default_rng(0).normal(size=(4, 5))
    results = evaluate(EvaluationSamples(samples_dir("s", logits_unbiased=logits)), ReferenceBatch())
    assert set(results) == {"inception_score"}
    assert results["inception_score"] == pytest.approx(inception_score(logits, splits=1, from_logits=True)[0])


HANDLED = [
    ("read_image/16_bit_png", check_wide_grey),
    ("to_rgb/32_bit_integer_grey", check_32_bit_grey),
    ("read_image/modes", check_modes),
    ("inception_preprocess/black_float_pixels", check_black_float_pixels_are_fid_input),
    ("autoencoder/overshoot_and_uint8", check_autoencoder_takes_slight_overshoot_and_uint8_through_latent_sit),
    ("visualization/clipping_and_ranges", check_pictures_out),
    ("frechet_distance/rounding", check_covariances_at_rounding_level),
    ("files/round_trips", check_statistics_files),
    ("evaluate/logits_alone", check_evaluate_with_logits_alone),
]


@pytest.mark.parametrize("check", [row[1] for row in HANDLED], ids=[row[0] for row in HANDLED])
def test_handled_input(check, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check()


# --- a refused call leaves the files on disk as they were -------------------------------------


def snapshot(root="."):
    """Every file under `root` with its bytes, and every folder."""
    found = {}
    for directory, folders, files in os.walk(root):
        for name in folders:
            found[os.path.join(directory, name)] = None
        for name in files:
            with open(os.path.join(directory, name), "rb") as f:
                found[os.path.join(directory, name)] = f.read()
    return found


def existing_files():
    """What the refused calls below find on disk: earlier samples, statistics, a grid, a file in the way."""
    samples_dir("samples", pool=features(4))
    file("in_the_way")
    write_samples("adm.npz", RAMP)
    write_reference_batch("ref.npz", *gaussian(3))
    FeatureStatistics.from_features(features(4)).save("stats.npz")
    visualization.save_image_grid(UINT8, "grid.png", rows=2, min_height=1)
    image_folder("pictures", "0.png", "1.png")
    file("inception.pth")


UNCHANGED = [
    ("generate_for_evaluation/other_settings", lambda: generate_for_evaluation(sit(), "samples", 8, verbose=0),
     ValueError),
    ("generate_for_evaluation/file", lambda: generate_for_evaluation(sit(), "in_the_way", 4, verbose=0), ValueError),
    ("generate_for_evaluation/new_folder_bad_extractor",
     lambda: generate_for_evaluation(sit(), "fresh", 4, feature_extractor="inception"), TypeError),
    ("write_samples/empty", lambda: write_samples("adm.npz", RAMP[:0]), ValueError),
    ("write_reference_batch/not_a_covariance", lambda: write_reference_batch("ref.npz", np.zeros(3), INDEFINITE),
     ValueError),
    ("FeatureStatistics.save/too_few", lambda: FeatureStatistics.from_features(features(1)).save("stats.npz"),
     ValueError),
    ("save_image_grid/nan", lambda: visualization.save_image_grid(full((4, 8, 8, 3), NAN), "grid.png", rows=2),
     ValueError),
    ("save_image_grid/pixels_as_floats",
     lambda: visualization.save_image_grid(RAMP.astype("float32"), "grid.png", rows=2), ValueError),
    ("EvaluationSamples.write_adm_npz/missing_folder",
     lambda: EvaluationSamples("samples").write_adm_npz("out/adm.npz"), FileNotFoundError),
    ("cli/save_stats_existing",
     lambda: command("pictures", "stats.npz", "--save-stats", "--inception", "inception.pth"), CommandLineError),
]  # fmt: skip


@pytest.mark.parametrize("call, error", [row[1:] for row in UNCHANGED], ids=[row[0] for row in UNCHANGED])
def test_refused_calls_leave_files_as_they_were(call, error, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    existing_files()
    before = snapshot()
    with pytest.raises(error):
        call()
    assert snapshot() == before
