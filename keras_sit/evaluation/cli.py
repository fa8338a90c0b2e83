"""`python -m keras_sit.evaluation`: the FID of two image folders, as `python -m pytorch_fid` computes it.

    python -m keras_sit.evaluation DIR_A DIR_B --inception pt_inception-2015-12-05-6726825d.pth

prints `FID:  <value>`. Each side is a folder of images (read recursively:
PNG, JPEG, BMP, GIF, WebP, TIFF, PPM/PGM; converted to RGB, any sizes) or an
`.npz`: pytorch-fid's statistics (`mu`, `sigma`, as `--save-stats` writes
them) or an ADM batch (statistics `mu`/`sigma`, or uint8 images in `arr_0`).
Statistics in a file are used as they are; images are passed through the
FID Inception network `--batch-size` at a time, and only the feature
statistics are kept, so memory does not grow with the number of images.

`--kid` also prints the Kernel Inception Distance (torch-fidelity's
estimator and subset draws, seed 2020) and `--isc` the Inception Score of
the first side (ADM's: the unbiased logits, `--isc-splits` contiguous
splits); both need images rather than statistics, and keep the features
they use (2048 and 1008 floats an image). `--save-stats PATH OUT.npz`
writes the statistics of PATH in pytorch-fid's format instead.
"""

import argparse
import os
import sys
import zipfile

import keras
import numpy as np

from keras_sit.evaluation.metrics import (
    FeatureStatistics,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
)
from keras_sit.evaluation.npz import DAMAGED
from keras_sit.evaluation.reference_batches import IMAGES_KEY, read_reference_batch
from keras_sit.images import IMAGE_SUFFIXES, UnreadableImageError
from keras_sit.images import read_image as read_rgb

POOL_DIM = 2048  # the FID Inception's pool features
KID_SEED = 2020  # torch-fidelity's, so that the subsets drawn are its
PROG = "python -m keras_sit.evaluation"


class InputError(ValueError):
    """A path given on the command line cannot be used; the message names the argument and the path."""


# --- inputs ------------------------------------------------------------------------------


def image_files(directory):
    """The image files under `directory` (recursively), by suffix (case-insensitive), in sorted path order."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        found.extend(os.path.join(root, name) for name in files if name.lower().endswith(IMAGE_SUFFIXES))
    return sorted(found)


def read_image(path, argument="image"):
    """An image file as uint8 RGB `[H, W, 3]` (`keras_sit.images.read_image`)."""
    try:
        return np.asarray(read_rgb(path), dtype=np.uint8)
    except UnreadableImageError as error:
        raise InputError(f"{argument}: {path!r} cannot be read as an image: {error.reason}") from error
    except FileNotFoundError as error:  # removed since the folder was listed
        raise InputError(f"{argument}: {path!r} no longer exists.") from error


class ImageFolder:
    """The images under a folder, read in batches of one size (a change of size starts a new batch)."""

    statistics = None

    def __init__(self, argument, path):
        self.argument, self.path = argument, path
        self.files = image_files(path)
        if not self.files:
            suffixes = ", ".join(suffix[1:] for suffix in IMAGE_SUFFIXES)
            raise InputError(f"{argument}: no images ({suffixes}) in the folder {path!r} or below it.")

    def __len__(self):
        return len(self.files)

    def batches(self, batch_size):
        batch = []
        for file in self.files:
            image = read_image(file, self.argument)
            if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
                yield np.stack(batch)
                batch = []
            batch.append(image)
        yield np.stack(batch)


class NpzFile:
    """pytorch-fid's statistics or an ADM batch: `statistics` `(mu, sigma)` or None, images streamed from `arr_0`."""

    def __init__(self, argument, path):
        self.argument, self.path = argument, path
        try:
            batch = read_reference_batch(path)
        except (ValueError, TypeError, OSError, EOFError, zipfile.BadZipFile) as error:
            raise InputError(f"{argument}: {path!r} is not a statistics or images .npz: {error}") from error
        self.statistics = (batch.mu, batch.sigma) if batch.has_statistics else None
        if self.statistics is not None and batch.mu.shape != (POOL_DIM,):
            raise InputError(
                f"{argument}: {path!r} holds statistics of {batch.mu.shape[0]}-d features; FID compares the "
                f"{POOL_DIM}-d pool features of the FID Inception."
            )
        self.image_shape = batch.image_shape

    def __len__(self):
        return 0 if self.image_shape is None else self.image_shape[0]

    def batches(self, batch_size):
        """`arr_0` in batches, read from the archive a batch at a time where its layout allows.

        A damaged or truncated `arr_0` ends the command with an `InputError` naming the argument and file.
        """
        try:
            yield from self._batches(batch_size)
        except DAMAGED as error:
            if isinstance(error, InputError):
                raise
            raise InputError(
                f"{self.argument}: `arr_0` in {self.path!r} cannot be read (damaged): {type(error).__name__}: {error}"
            ) from error

    def _batches(self, batch_size):
        with zipfile.ZipFile(self.path) as archive, archive.open(f"{IMAGES_KEY}.npy") as file:
            version = np.lib.format.read_magic(file)
            readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version in readers:
                shape, fortran_order, dtype = readers[version](file)
                if not fortran_order:
                    size = int(np.prod(shape[1:])) * dtype.itemsize
                    for start in range(0, shape[0], batch_size):
                        count = min(batch_size, shape[0] - start)
                        data = file.read(count * size)
                        if len(data) != count * size:
                            raise InputError(f"{self.argument}: `arr_0` in {self.path!r} is truncated.")
                        yield np.frombuffer(data, dtype).reshape(count, *shape[1:])
                    return
        with np.load(self.path, allow_pickle=False) as data:  # a layout read whole
            images = data[IMAGES_KEY]
        for start in range(0, len(images), batch_size):
            yield images[start : start + batch_size]


def open_input(argument, path):
    """An `ImageFolder` or an `NpzFile`; an `InputError` naming `argument` for anything else."""
    if not os.path.exists(path):
        raise InputError(f"{argument}: {path!r} does not exist.")
    if os.path.isdir(path):
        return ImageFolder(argument, path)
    if os.path.isfile(path) and path.lower().endswith(".npz"):
        return NpzFile(argument, path)
    raise InputError(
        f"{argument}: {path!r} is neither a folder of images nor an .npz file "
        "(statistics `mu`, `sigma`, or uint8 images in `arr_0`)."
    )


def require_images(source, purpose, minimum=1):
    if len(source) < minimum:
        what = "no images" if len(source) == 0 else f"{len(source)} image"
        needed = f"{minimum} images" if minimum > 1 else "one image"
        raise InputError(f"{source.argument}: {purpose} needs at least {needed}; {source.path!r} has {what}.")


def check_inception(path):
    if not os.path.isfile(path):
        raise InputError(f"--inception: {path!r} is not a file (pytorch-fid's pt_inception-2015-12-05-6726825d.pth).")


def load_inception(path):
    from keras_sit.convert.inception import import_fid_inception

    check_inception(path)
    try:
        return import_fid_inception(path)
    except (ValueError, TypeError, OSError) as error:
        raise InputError(f"--inception: {path!r} cannot be read as the FID Inception's weights: {error}") from error


# --- features ----------------------------------------------------------------------------


def extract(inception, source, batch_size, keep=()):
    """`(FeatureStatistics of the pool features, {name: features [N, d]} for the names in keep)` of the images."""
    statistics = FeatureStatistics(dim=POOL_DIM)
    kept = {name: [] for name in keep}
    show = sys.stderr.isatty()
    for images in source.batches(batch_size):
        features = inception.features(images)
        statistics.update(keras.ops.convert_to_numpy(features["pool"]))
        for name in keep:
            kept[name].append(np.asarray(keras.ops.convert_to_numpy(features[name]), dtype=np.float32))
        if show:
            print(f"\r{source.path}: {statistics.count}/{len(source)} images", end="", file=sys.stderr, flush=True)
    if show:
        print(file=sys.stderr)
    return statistics, {name: np.concatenate(parts) for name, parts in kept.items()}


# --- the command -------------------------------------------------------------------------


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {value}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The FID between two sets of images (folders or .npz), with pytorch-fid's FID Inception "
        "network on the Keras backend in use (KERAS_BACKEND).",
    )
    parser.add_argument(
        "path", nargs=2, help="two folders of images (searched recursively) or .npz files: pytorch-fid's statistics "
        "(mu, sigma) or an ADM batch (mu/sigma, or uint8 images in arr_0)"
    )  # fmt: skip
    parser.add_argument(
        "--inception", required=True, metavar="PTH",
        help="pytorch-fid's weights, pt_inception-2015-12-05-6726825d.pth (its fid_weights release); not downloaded",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=positive_int, default=50, help="images per network call (default 50)")
    parser.add_argument("--kid", action="store_true", help="also print the Kernel Inception Distance (needs images)")
    parser.add_argument("--kid-subsets", type=positive_int, default=100, help="KID subsets (default 100)")
    parser.add_argument("--kid-subset-size", type=positive_int, default=1000,
                        help="KID samples per subset, capped at the smaller set (default 1000)")  # fmt: skip
    parser.add_argument("--isc", action="store_true",
                        help="also print the Inception Score of the first path (needs images)")  # fmt: skip
    parser.add_argument("--isc-splits", type=positive_int, default=10,
                        help="Inception Score splits, capped at the number of images (default 10)")  # fmt: skip
    parser.add_argument(
        "--save-stats", action="store_true",
        help="write the statistics (mu, sigma) of the images at the first path to the .npz at the second, "
        "as pytorch-fid does, instead of computing the FID",
    )  # fmt: skip
    return parser


def main(argv=None):
    """Run the command on `argv` (default `sys.argv[1:]`); prints the results and returns them as a dict.

    Unusable paths end the program through argparse (exit status 2) with a message naming the argument.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.save_stats and (args.kid or args.isc):
        parser.error("--save-stats writes statistics only; it does not take --kid or --isc.")
    try:
        return save_statistics(args) if args.save_stats else compare(args)
    except InputError as error:
        parser.error(str(error))


def save_statistics(args):
    source = open_input("first path", args.path[0])
    require_images(source, "--save-stats", minimum=2)
    check_inception(args.inception)
    output = args.path[1]
    if os.path.exists(output) or os.path.exists(f"{output}.npz"):
        raise InputError(f"second path: {output!r} exists; --save-stats does not overwrite it.")
    if not os.path.isdir(os.path.dirname(output) or "."):
        raise InputError(f"second path: the folder of {output!r} does not exist; create it first.")
    statistics, _ = extract(load_inception(args.inception), source, args.batch_size)
    np.savez_compressed(output, mu=statistics.mean, sigma=statistics.covariance)
    return {"mu": statistics.mean, "sigma": statistics.covariance}


def compare(args):
    sources = [open_input(name, path) for name, path in zip(("first path", "second path"), args.path)]
    for source in sources:
        if source.statistics is None:
            require_images(source, "FID", minimum=2)
        if args.kid:
            require_images(source, "--kid", minimum=2)
    if args.isc:
        require_images(sources[0], "--isc")
    check_inception(args.inception)
    inception = None  # loaded when images are to be read
    gaussians, features = [], []
    for index, source in enumerate(sources):
        keep = ("pool",) * args.kid + ("logits_unbiased",) * (args.isc and index == 0)
        if source.statistics is not None and not keep:
            gaussians.append(source.statistics)
            features.append({})
            continue
        if inception is None:
            inception = load_inception(args.inception)
        statistics, kept = extract(inception, source, args.batch_size, keep)
        gaussians.append(source.statistics or (statistics.mean, statistics.covariance))
        features.append(kept)
    results = {"fid": frechet_distance(*gaussians[0], *gaussians[1])}
    print(f"FID:  {results['fid']}")
    if args.kid:
        results["kid"] = kernel_inception_distance(
            features[0]["pool"], features[1]["pool"], args.kid_subsets, args.kid_subset_size, seed=KID_SEED
        )
        print(f"KID:  {results['kid'][0]} (std {results['kid'][1]})")
    if args.isc:
        logits = features[0]["logits_unbiased"]
        results["inception_score"] = inception_score(logits, min(args.isc_splits, len(logits)), from_logits=True)
        print(f"IS:  {results['inception_score'][0]} (std {results['inception_score'][1]})")
    return results
