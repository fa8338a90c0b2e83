"""Bad input to the latent cache and the checkpoint readers raises an error that names the argument or the file.

One table, as in `tests/test_bad_inputs.py`: each row makes one call with
one bad argument or one damaged file, and gives the exception and a pattern
of its message, which names the argument (or the file) and says what was
expected. The rows run in the test's `tmp_path`; a cache to damage is copied
there from one written once. Then the behaviours behind the rows: a cache is
never resumed from another source or autoencoder and a refused call changes
no file, a NaN-producing autoencoder leaves no complete cache, the same
source and autoencoder still resume, and random bytes are never taken for
pickled code.
"""

import atexit
import functools
import json
import os
import shutil
import tempfile

import keras
import numpy as np
import pytest
from keras import ops
from PIL import Image

from keras_sit.autoencoders import Autoencoder
from keras_sit.convert import export_autoencoder_state_dict, import_autoencoder, import_dinov2, import_fid_inception
from keras_sit.convert.checkpoints import float32_arrays, read_checkpoint, weights_file
from keras_sit.files import write_atomically
from keras_sit.fingerprint import weights_fingerprint
from keras_sit.latents import (
    ArrayImages,
    ImageFolder,
    LatentDataset,
    read_cache_description,
    write_latent_cache,
)
from tests.conftest import file, folder, refusal_table, tiny_autoencoder

NAN = float("nan")
IMAGES = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3)).astype("uint8")
OTHER = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3)).astype("uint8")  # as many, as large
LABELS = np.array([0, 1, 0])
CLASSES = ["a", "b"]
# Levels 0, 50, 100, 250: only the last image is brighter than `Poisoned`'s threshold.
LEVELS = np.stack([np.full((16, 16, 3), level, "uint8") for level in (0, 50, 100, 250)])


@keras.saving.register_keras_serializable(package="keras_sit_tests_caches")
class Poisoned(Autoencoder):
    """A weightless autoencoder (2x2 pixel blocks as latents) that gives `value` for images brighter than `threshold`.

    `value` "nan" or "inf" is an autoencoder gone bad on some images; a large
    one overflows float16. It is a str, so that the configuration a cache
    records compares equal to itself (NaN does not).
    """

    def __init__(self, value="nan", threshold=0.5, **kwargs):
        kwargs.pop("latent_channels", None)
        super().__init__(12, 1.0, 0.0, **kwargs)
        self.value, self.threshold = value, threshold
        self.built = True  # no weights

    @property
    def downsampling_factor(self):
        return 2

    def encode_distribution(self, images, batch_size=None):
        x = ops.convert_to_tensor(images, "float32")
        x = ops.reshape(ops.transpose(ops.reshape(x, (-1, 8, 2, 8, 2, 3)), (0, 1, 3, 2, 4, 5)), (-1, 8, 8, 12))
        bright = ops.mean(x, axis=(1, 2, 3), keepdims=True) > self.threshold
        return self.latent_distribution(ops.where(bright, ops.full_like(x, float(self.value)), x))

    def decode(self, latents, batch_size=None):
        return ops.zeros((ops.shape(latents)[0], 16, 16, 3))

    def call(self, images):
        return self.decode(self.encode(images, sample=False))

    def get_config(self):
        return {**super().get_config(), "value": self.value, "threshold": self.threshold}


class Pairs:
    """A source that is a plain sequence of `(image, label)` pairs, with an `image_size` and `class_names`."""

    def __init__(self, pairs, image_size=16, class_names=None, fingerprint=None):
        self.pairs, self.image_size, self.class_names = pairs, image_size, class_names
        if fingerprint is not None:
            self.fingerprint = lambda: fingerprint

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        return self.pairs[index]


class FailsAt(ArrayImages):
    """`ArrayImages` whose item `index` raises once, as a writer killed there would stop."""

    def __init__(self, images, labels, index):
        super().__init__(images, labels, CLASSES)
        self.index = index

    def __getitem__(self, index):
        if index == self.index:
            self.index = None
            raise RuntimeError("interrupted")
        return super().__getitem__(index)


def nan_teacher(images):
    return np.full((images.shape[0], 4, 8), NAN, "float32")


# --- shared models and a cache, built on first use --------------------------------------------


@functools.cache
def vae():
    return tiny_autoencoder()


@functools.cache
def nan_vae():
    model = tiny_autoencoder()
    model.weights[0].assign(np.full(model.weights[0].shape, NAN, "float32"))
    return model


@functools.cache
def ae_state():
    return export_autoencoder_state_dict(vae())


@functools.cache
def template():
    """A complete cache of IMAGES (labels, two class names) in shards of 2, written once, to copy."""
    directory = tempfile.mkdtemp(prefix="keras_sit_bad_caches_")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    write_latent_cache(source(), vae(), os.path.join(directory, "c"), shard_size=2, verbose=0)
    return os.path.join(directory, "c")


def source(images=IMAGES, labels=LABELS):
    return ArrayImages(images, labels, CLASSES)


def write(src=None, directory="c", model=None, **options):
    """`write_latent_cache` of `src` (IMAGES) with `model` (the tiny KL autoencoder) in shards of 2."""
    options = {"shard_size": 2, "verbose": 0, **options}
    return write_latent_cache(source() if src is None else src, vae() if model is None else model, directory, **options)


# --- files, written into the test's working directory (its `tmp_path`) -----------------------


def torch_file(name, obj):
    import torch

    torch.save(obj, name)
    return name


def safetensors_file(name, arrays):
    from safetensors.numpy import save_file

    os.makedirs(os.path.dirname(name) or ".", exist_ok=True)
    save_file(arrays, name)
    return name


def cache(name="c"):
    """A copy of the complete cache."""
    shutil.copytree(template(), name)
    return name


def with_file(relative, content, name="c"):
    """A copy of the cache with `relative` (a path inside it) replaced by the bytes `content`."""
    cache(name)
    return file(os.path.join(name, relative), content) and name


def truncated(relative, keep=0.5, name="c"):
    cache(name)
    path = os.path.join(name, relative)
    with open(path, "rb") as f:
        content = f.read()
    return file(path, content[: int(len(content) * keep)]) and name


def with_array(relative, array, name="c"):
    cache(name)
    np.save(os.path.join(name, relative), array, allow_pickle=array.dtype == object)
    return name


def without(relative, name="c"):
    cache(name)
    path = os.path.join(name, relative)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    return name


def with_description(name="c", drop=(), **changes):
    """A copy of the cache whose cache.json has `changes` and lacks the keys `drop`."""
    cache(name)
    path = os.path.join(name, "cache.json")
    with open(path) as f:
        description = json.load(f)
    description = {key: value for key, value in {**description, **changes}.items() if key not in drop}
    with open(path, "w") as f:
        json.dump(description, f)
    return name


def pickle_bytes(name, content):
    """A file of pickle opcodes (never unpickled here)."""
    return file(name, content)


def head(name, source, keep):
    """The file `name` holding the first `keep` bytes less than the whole of the file `source`."""
    with open(source, "rb") as f:
        return file(name, f.read()[:-keep])


def torch_state(state, overrides):
    """`state` as torch tensors, with `overrides` (torch tensors) on top."""
    import torch

    return {**{key: torch.from_numpy(value) for key, value in state.items()}, **overrides}


def torch_int64(*shape):
    import torch

    return torch.zeros(shape, dtype=torch.int64)


DINO = {"patch_embed.proj.weight": np.zeros((64, 3, 14, 14), "float32")}
GARBAGE_PICKLE = b"\x93." + np.random.default_rng(3).bytes(200)  # STACK_GLOBAL, STOP: opcodes, but no pickle

# (id, call, exception, pattern of the message)
ROWS = [
    # --- write_latent_cache: arguments --------------------------------------------------------
    ("write/autoencoder", lambda: write_latent_cache(source(), "sd-vae", "c"),
     TypeError, r"`autoencoder` must be a keras_sit.autoencoders.Autoencoder .*; got str"),
    ("write/directory_type", lambda: write(directory=None),
     TypeError, r"`directory` must be a folder path \(a str or os.PathLike\); got NoneType"),
    ("write/directory_remote", lambda: write(directory="gs://bucket/cache"),
     ValueError, r"`directory` 'gs://bucket/cache' must be a local folder"),
    ("write/directory_is_a_file", lambda: write(directory=file("c")),
     ValueError, r"`directory` 'c' is a file; a folder for the latent cache was expected"),
    ("write/verbose", lambda: write(verbose=3), ValueError, r"`verbose` must be one of \(0, 1, 2\); got 3"),
    ("write/on_error", lambda: write(on_error="ignore"),
     ValueError, r"`on_error` must be one of \('raise', 'skip'\); got 'ignore'"),
    ("write/feature_dtype", lambda: write(teachers=nan_teacher, feature_dtype="int8"),
     ValueError, r"`feature_dtype` must be one of \('float32', 'float16'\); got 'int8'"),
    ("write/teachers_type", lambda: write(teachers={"dino": "dinov2"}),
     TypeError, r"`teachers` must be a Keras model, layer or callable .* got str for 'dino'"),
    # --- write_latent_cache: the source -------------------------------------------------------
    ("write/source_array", lambda: write(IMAGES),
     TypeError, r"`source` is a NumPy array; wrap uint8 images \[N, S, S, 3\] as .*ArrayImages"),
    ("write/source_path", lambda: write("images/"),
     TypeError, r"`source` must be an ImageFolder, an ArrayImages, .*; got str \(wrap a folder of images as"),
    ("write/source_int", lambda: write(3), TypeError, r"`source` must be an ImageFolder, .*; got int"),
    ("write/source_dict", lambda: write({0: (IMAGES[0], 0)}), TypeError, r"`source` must be .*; got dict"),
    ("write/source_images_without_labels", lambda: write(list(IMAGES)),
     TypeError, r"`source\[0\]` must be an \(image, label\) pair; got ndarray of shape \(16, 16, 3\)"),
    ("write/source_float_images", lambda: write(Pairs([(IMAGES[0] / 255.0, 0)])),
     TypeError, r"`source\[0\]` must give a uint8 image \(0..255\); got dtype float64"),
    ("write/source_grey_image", lambda: write([(IMAGES[0, ..., 0], 0)]),
     ValueError, r"`source\[0\]` must give a square RGB image \[S, S, 3\]; got shape \(16, 16\)"),
    ("write/source_image_size", lambda: write(Pairs([(IMAGES[0], 0)], image_size=32)),
     ValueError, r"`source\[0\]` must give an RGB image of shape \(32, 32, 3\), the source's image size; got shape"),
    ("write/source_later_image_size", lambda: write([(IMAGES[0], 0), (IMAGES[1, :8, :8], 0)]),
     ValueError, r"`source\[1\]` must give an RGB image of shape \(16, 16, 3\)"),
    ("write/source_image_size_attribute", lambda: write(Pairs([(IMAGES[0], 0)], image_size=0)),
     ValueError, r"`source.image_size` must be a positive int; got 0"),
    ("write/label_text", lambda: write(Pairs([(IMAGES[0], "cat")])),
     TypeError, r"`source\[0\]` must give an int label \(-1 for none\); got 'cat'"),
    ("write/label_float", lambda: write(Pairs([(IMAGES[0], 1.0)])),
     TypeError, r"`source\[0\]` must give an int label \(-1 for none\); got 1.0"),
    ("write/label_below_none", lambda: write(Pairs([(IMAGES[0], -2)])),
     ValueError, r"`source\[0\]` must give a label of -1 \(none\) or a class in 0, 1, ...; got -2"),
    ("write/label_beyond_class_names", lambda: write(Pairs([(IMAGES[0], 0), (IMAGES[1], 2)], class_names=CLASSES)),
     ValueError, r"`source\[1\]` must give a label of -1 \(none\) or a class in 0..1 \(its 2 class names\); got 2"),
    ("write/class_names_text", lambda: write(Pairs([(IMAGES[0], 0)], class_names="ab")),
     TypeError, r"`source.class_names` must be a list of str, or None; got 'ab'"),
    ("write/source_fingerprint_type", lambda: write(Pairs([(IMAGES[0], 0)], fingerprint=3)),
     TypeError, r"`source.fingerprint\(\)` must return a str; got int"),
    # --- write_latent_cache: a cache of something else ----------------------------------------
    ("write/other_source", lambda: write(source(OTHER), cache()),
     ValueError, r"`directory` 'c' holds a latent cache of another source, .*: `source` has other images, labels"),
    ("write/other_labels", lambda: write(source(labels=np.array([1, 1, 0])), cache()),
     ValueError, r"`directory` 'c' .*`source` has other images, labels or files \(its fingerprint differs\)"),
    ("write/other_count", lambda: write(source(IMAGES[:2], LABELS[:2]), cache()),
     ValueError, r"`source` has another number of images"),
    ("write/other_image_size", lambda: write(source(np.zeros((3, 8, 8, 3), "uint8")), cache()),
     ValueError, r"`source` has another image size"),
    ("write/other_class_names", lambda: write(ArrayImages(IMAGES, LABELS, ["x", "y"]), cache()),
     ValueError, r"`source` has other class names"),
    ("write/other_autoencoder_weights", lambda: write(model=tiny_autoencoder(seed=1), directory=cache()),
     ValueError, r"`directory` 'c' .*: `autoencoder` has other weights \(their SHA-256 differs\)"),
    ("write/other_autoencoder_config", lambda: write(model=tiny_autoencoder(scaling_factor=0.5), directory=cache()),
     ValueError, r"`autoencoder` has another configuration"),
    ("write/other_shard_size", lambda: write(directory=cache(), shard_size=3),
     ValueError, r"`shard_size` is 3 where the cache has 2"),
    ("write/other_dtype", lambda: write(directory=cache(), dtype="float16"),
     ValueError, r"`dtype` is 'float16' where the cache has 'float32'"),
    ("write/other_teachers", lambda: write(directory=cache(), teachers=nan_teacher),
     ValueError, r"`teachers` are not the ones the latent cache in 'c' was written with: 'features' \(given"),
    ("write/no_source_fingerprint", lambda: write(directory=with_description(drop=("source_sha256",))),
     ValueError, r"`directory` 'c' holds a latent cache that records no fingerprint of its source"),
    ("write/shards_without_description", lambda: write(directory=without("cache.json")),
     ValueError, r"`directory` 'c' holds latent cache shards \(shard-00000, shard-00001, ...\) but no cache.json"),
    ("write/truncated_description", lambda: write(directory=truncated("cache.json")),
     ValueError, r"'c/cache.json' is not valid JSON \(JSONDecodeError: .*\): .* damaged or truncated"),
    ("write/description_not_an_object", lambda: write(directory=with_file("cache.json", b"[1, 2]")),
     ValueError, r"'c/cache.json' must hold a JSON object \(the latent cache's description\); it holds a list"),
    ("write/damaged_skipped_record", lambda: write(directory=with_file("shard-00000/skipped.json", b"[{")),
     ValueError, r"'c/shard-00000/skipped.json' is not valid JSON .*delete 'c/shard-00000' and run"),
    ("write/damaged_labels_on_resume", lambda: write(directory=with_file("shard-00001/labels.npy", b"\x93NUMPY")),
     ValueError, r"'c/shard-00001/labels.npy' cannot be read as a NumPy array .*truncated or damaged"),
    ("write/missing_sums_on_resume", lambda: write(directory=without("shard-00001/sums.npy")),
     FileNotFoundError, r"The latent cache in 'c' lacks 'c/shard-00001/sums.npy'"),
    # --- write_latent_cache: non-finite latents and tokens --------------------------------------
    ("write/nan_autoencoder", lambda: write(model=nan_vae()),
     ValueError, r"`autoencoder` gave latents \(mean\) that are not finite \(NaN or infinity\) for 2 image\(s\) "
                 r"of `source`, index 0, 1, in shard 0 \(images 0..1 of `source`\)"),
    ("write/nan_on_one_image", lambda: write(ArrayImages(LEVELS), model=Poisoned()),
     ValueError, r"`autoencoder` gave latents \(mean\) that are not finite .* for 1 image\(s\) of `source`, index 3, "
                 r"in shard 1"),
    ("write/infinite_latents", lambda: write(ArrayImages(LEVELS), model=Poisoned(value="inf")),
     ValueError, r"not finite \(NaN or infinity\) for 1 image\(s\) of `source`, index 3"),
    ("write/float16_overflow", lambda: write(ArrayImages(LEVELS), model=Poisoned(value="1e6"), dtype="float16"),
     ValueError, r"not finite \(infinity: float16 stores values beyond 65504 as infinite; `dtype`='float32' holds"),
    ("write/nan_teacher", lambda: write(teachers={"dino": nan_teacher}),
     ValueError, r"`teachers` entry 'dino' gave tokens that are not finite \(NaN or infinity\) for 2 image\(s\)"),
    # --- LatentDataset and read_cache_description -----------------------------------------------
    ("LatentDataset/directory_type", lambda: LatentDataset(5),
     TypeError, r"`directory` must be a folder path \(a str or os.PathLike\); got int"),
    ("LatentDataset/missing", lambda: LatentDataset("nowhere"),
     FileNotFoundError, r"`directory` 'nowhere' does not exist: it holds no latent cache"),
    ("LatentDataset/file", lambda: LatentDataset(file("c")),
     ValueError, r"`directory` 'c' is a file; a latent cache is a folder with cache.json"),
    ("LatentDataset/truncated_description", lambda: LatentDataset(truncated("cache.json")),
     ValueError, r"'c/cache.json' is not valid JSON"),
    ("LatentDataset/empty_description", lambda: LatentDataset(with_file("cache.json", b"")),
     ValueError, r"'c/cache.json' is not valid JSON"),
    ("LatentDataset/description_list", lambda: LatentDataset(with_file("cache.json", b"[]")),
     ValueError, r"'c/cache.json' must hold a JSON object"),
    ("LatentDataset/description_folder", lambda: LatentDataset(folder("c/cache.json") and "c"),
     ValueError, r"'c/cache.json' is a folder; the latent cache's description is a file"),
    ("LatentDataset/unfinished", lambda: LatentDataset(with_description(complete=False)),
     ValueError, r"The latent cache in 'c' is unfinished: run `write_latent_cache` again"),
    ("LatentDataset/description_lacks_shards", lambda: LatentDataset(with_description(drop=("num_shards",))),
     ValueError, r"'c/cache.json' is damaged: a complete latent cache records 'num_shards' \(int\); got None"),
    ("LatentDataset/description_statistics", lambda: LatentDataset(with_description(statistics={"mean": 0})),
     ValueError, r"'c/cache.json' is damaged: its 'statistics' lack 'channel_mean' and 'channel_std'"),
    ("LatentDataset/garbage_npy", lambda: LatentDataset(with_file("shard-00000/mean.npy", b"garbage" * 40)),
     ValueError, r"'c/shard-00000/mean.npy' cannot be read as a NumPy array of numbers \(it is truncated or damaged\)"
                 r": the shard is damaged; delete 'c/shard-00000'"),
    ("LatentDataset/truncated_npy", lambda: LatentDataset(truncated("shard-00001/std.npy")),
     ValueError, r"'c/shard-00001/std.npy' cannot be read as a NumPy array"),
    ("LatentDataset/pickled_npy", lambda: LatentDataset(with_array("shard-00000/labels.npy", np.array([{}, {}]))),
     ValueError, r"'c/shard-00000/labels.npy' cannot be read as a NumPy array of numbers"),
    ("LatentDataset/missing_npy", lambda: LatentDataset(without("shard-00001/labels.npy")),
     FileNotFoundError, r"The latent cache in 'c' lacks 'c/shard-00001/labels.npy': the shard is incomplete"),
    ("LatentDataset/missing_shard", lambda: LatentDataset(without("shard-00001")),
     FileNotFoundError, r"lacks 'c/shard-00001/mean.npy'.*run `write_latent_cache` again"),
    ("LatentDataset/latent_shape", lambda: LatentDataset(with_array("shard-00000/mean.npy", np.zeros((2, 2, 4, 4, 4)))),
     ValueError, r"'c/shard-00000/mean.npy' holds float64 \(2, 2, 4, 4, 4\), where floats \[2, 2, 8, 8, 4\] was "
                 r"expected \(cache.json records latents \[8, 8, 4\]\)"),
    ("LatentDataset/std_rows", lambda: LatentDataset(with_array("shard-00001/std.npy", np.zeros((2, 2, 8, 8, 4)))),
     ValueError, r"'c/shard-00001/std.npy' holds float64 \(2, 2, 8, 8, 4\), where floats \[1, 2, 8, 8, 4\]"),
    ("LatentDataset/float_labels", lambda: LatentDataset(with_array("shard-00000/labels.npy", np.zeros(2))),
     ValueError, r"'c/shard-00000/labels.npy' holds float64 \(2,\), where integer labels \[n\] was expected"),
    ("LatentDataset/mixed_labels", lambda: LatentDataset(with_array("shard-00000/labels.npy", np.array([0, -1]))),
     ValueError, r"The latent cache in 'c' mixes labelled examples with unlabelled ones \(label -1\)"),
    ("LatentDataset/labels_beyond_classes",
     lambda: LatentDataset(with_array("shard-00000/labels.npy", np.array([0, 5]))),
     ValueError, r"The latent cache in 'c' holds labels beyond its 2 class names"),
    ("LatentDataset/num_cached", lambda: LatentDataset(with_description(num_cached=5)),
     ValueError, r"The latent cache in 'c' holds 3 examples in its shards, but cache.json records 5"),
    ("read_cache_description/type", lambda: read_cache_description(["c"]),
     TypeError, r"`directory` must be a folder path \(a str or os.PathLike\); got list"),
    ("read_cache_description/missing", lambda: read_cache_description("nowhere"),
     FileNotFoundError, r"`directory` 'nowhere' does not exist"),
    ("read_cache_description/file", lambda: read_cache_description(file("c")),
     ValueError, r"`directory` 'c' is a file"),
    ("read_cache_description/truncated", lambda: read_cache_description(truncated("cache.json", keep=0.9)),
     ValueError, r"'c/cache.json' is not valid JSON"),
    # --- fingerprints and files ---------------------------------------------------------------
    ("weights_fingerprint/model", lambda: weights_fingerprint(vae()),
     TypeError, r"`weights` must be a list or tuple of tensors, variables or arrays \(a model's `weights`\); "
                r"got AutoencoderKL"),
    ("weights_fingerprint/text", lambda: weights_fingerprint(["kernel"]),
     TypeError, r"`weights\[0\]` must be a tensor, variable or array of real numbers; got str"),
    ("write_atomically/missing_folder", lambda: write_atomically("nope/x.json", lambda f: f.write(b"{}")),
     FileNotFoundError, r"The folder of 'nope/x.json' does not exist"),
    ("write_atomically/folder", lambda: write_atomically(folder("x.json"), lambda f: f.write(b"{}")),
     ValueError, r"'x.json' is a folder; a file was expected there"),
    # --- read_checkpoint ----------------------------------------------------------------------
    ("read_checkpoint/type", lambda: read_checkpoint(3),
     TypeError, r"`path` must be the path of a checkpoint file \(a str or os.PathLike\); got int"),
    ("read_checkpoint/folder", lambda: read_checkpoint(folder("weights.pt")),
     ValueError, r"`path` 'weights.pt' is a folder; a checkpoint file \(.safetensors, .pt, .pth, .bin, .ckpt\)"),
    ("read_checkpoint/allowed_globals", lambda: read_checkpoint(file("w.pt"), allowed_globals=3),
     TypeError, r"`allowed_globals` must be a list or tuple of classes \(e.g. \[argparse.Namespace\]\); got int"),
    ("read_checkpoint/allowed_globals_names", lambda: read_checkpoint(file("w.pt"), allowed_globals=["os.system"]),
     TypeError, r"`allowed_globals` must hold classes or functions .*; got 'os.system'"),
    ("read_checkpoint/opcodes_no_pickle", lambda: read_checkpoint(pickle_bytes("random.ckpt", GARBAGE_PICKLE)),
     ValueError, r"`path` 'random.ckpt' is not a PyTorch checkpoint \(a zip archive or pickle of tensors\)"),
    ("read_checkpoint/opcodes_after_junk", lambda: read_checkpoint(pickle_bytes("random.pth", b"h\xd3\x93.\xacuY")),
     ValueError, r"`path` 'random.pth' is not a PyTorch checkpoint"),
    ("read_checkpoint/ints_as_names", lambda: read_checkpoint(pickle_bytes("ints.pth", b"KK\x93.")),
     ValueError, r"`path` 'ints.pth' is not a PyTorch checkpoint"),
    ("read_checkpoint/empty", lambda: read_checkpoint(file("empty.pt", b"")),
     ValueError, r"`path` 'empty.pt' is not a PyTorch checkpoint"),
    ("read_checkpoint/code", lambda: read_checkpoint(pickle_bytes("code.pt", b"cos\nsystem\n.")),
     ValueError, r"Refused to load `path` 'code.pt': it holds objects other than tensors and containers "
                 r"\(os.system\), and unpickling them could run code"),
    ("read_checkpoint/truncated_safetensors",
     lambda: read_checkpoint(head("w.safetensors", safetensors_file("x.safetensors", DINO), 9)),
     ValueError, r"`path` 'w.safetensors' is not a safetensors file"),
    # --- float32_arrays: what becomes a weight ------------------------------------------------
    ("float32_arrays/list", lambda: float32_arrays([np.zeros(2)]),
     TypeError, r"`source` must be a state dict \(a dict of arrays or tensors\); got list"),
    ("float32_arrays/int_key", lambda: float32_arrays({0: np.zeros(2)}),
     TypeError, r"`source` must have string keys, as a state dict has; got the key 0"),
    ("float32_arrays/int64", lambda: float32_arrays({"w": np.arange(4)}),
     ValueError, r"`source\['w'\]` holds int64 values; weights must be floating-point \(float16, bfloat16, float32"),
    ("float32_arrays/bool", lambda: float32_arrays({"mask": np.ones(3, bool)}),
     ValueError, r"`source\['mask'\]` holds bool values; weights must be floating-point"),
    ("float32_arrays/complex", lambda: float32_arrays({"w": np.ones(3, complex)}),
     ValueError, r"`source\['w'\]` holds complex128 values"),
    ("float32_arrays/nan", lambda: float32_arrays({"w": np.array([1.0, NAN])}),
     ValueError, r"`source\['w'\]` holds 1 NaN or infinite value\(s\) of 2; weights must be finite"),
    ("float32_arrays/float64_overflow", lambda: float32_arrays({"w": np.array([1e300])}),
     ValueError, r"`source\['w'\]` holds 1 NaN or infinite value\(s\) of 1"),
    ("float32_arrays/none", lambda: float32_arrays({"w": None}),
     ValueError, r"`source\['w'\]` is not an array of weights: NoneType"),
    # --- import_autoencoder -------------------------------------------------------------------
    ("import_autoencoder/int64_safetensors",
     lambda: import_autoencoder(safetensors_file("vae.safetensors", {**ae_state(), "encoder.conv_in.weight":
                                                                     ae_state()["encoder.conv_in.weight"].astype("int64")})),
     ValueError, r"`path_or_state\['encoder.conv_in.weight'\]` holds int64 values; weights must be floating-point"),
    ("import_autoencoder/int64_pickle",
     lambda: import_autoencoder(
         torch_file("vae.pt", torch_state(ae_state(), {"decoder.conv_out.bias": torch_int64(3)}))),
     ValueError, r"`path_or_state\['decoder.conv_out.bias'\]` holds torch.int64 values"),
    ("import_autoencoder/bool", lambda: import_autoencoder({**ae_state(), "quant_conv.bias": np.ones(8, bool)}),
     ValueError, r"`path_or_state\['quant_conv.bias'\]` holds bool values"),
    ("import_autoencoder/nan",
     lambda: import_autoencoder({**ae_state(), "quant_conv.bias": np.full(8, NAN, "float32")}),
     ValueError, r"`path_or_state\['quant_conv.bias'\]` holds 8 NaN or infinite value\(s\) of 8"),
    ("import_autoencoder/int_key", lambda: import_autoencoder({0: np.zeros(2, "float32")}),
     TypeError, r"`path_or_state` must have string keys, as a state dict has; got the key 0"),
    ("import_autoencoder/conv_rank",
     lambda: import_autoencoder({**ae_state(), "encoder.conv_in.weight": np.zeros(3, "float32")}),
     ValueError, r"`path_or_state\['encoder.conv_in.weight'\]` must be a conv weight \(out, in, h, w\); got "
                 r"shape \(3,\)"),
    ("import_autoencoder/file_of_a_list", lambda: import_autoencoder(torch_file("vae.pt", [1, 2])),
     ValueError, r"`path_or_state` 'vae.pt' holds a list, not a state dict of an autoencoder"),
    ("import_autoencoder/truncated_config",
     lambda: (safetensors_file("vae/diffusion_pytorch_model.safetensors", ae_state()),
              import_autoencoder(file("vae/config.json", b'{"_class_name": "Autoenc') and "vae")),
     ValueError, r"'vae/config.json' is not valid JSON \(JSONDecodeError: .*\): the model's config.json is damaged"),
    ("import_autoencoder/config_list",
     lambda: (safetensors_file("vae/diffusion_pytorch_model.safetensors", ae_state()),
              import_autoencoder(file("vae/config.json", b"[4]") and "vae")),
     ValueError, r"'vae/config.json' must hold a JSON object \(the model's config.json\); it holds a list"),
    ("import_autoencoder/config_folder",
     lambda: (safetensors_file("vae/diffusion_pytorch_model.safetensors", ae_state()), folder("vae/config.json"),
              import_autoencoder("vae/diffusion_pytorch_model.safetensors")),
     ValueError, r"'vae/config.json' is a folder; the model's config.json is a file"),
    # --- import_dinov2 ------------------------------------------------------------------------
    ("import_dinov2/int64", lambda: import_dinov2({**DINO, "cls_token": np.zeros((1, 1, 64), "int64")}),
     ValueError, r"`path_or_state\['cls_token'\]` holds int64 values; weights must be floating-point"),
    ("import_dinov2/patch_rank", lambda: import_dinov2({"patch_embed.proj.weight": np.zeros((64, 3), "float32")}),
     ValueError, r"`path_or_state\['patch_embed.proj.weight'\]` must have 4 dimensions; got shape \(64, 3\)"),
    ("import_dinov2/register_rank",
     lambda: import_dinov2({**DINO, "blocks.0.mlp.fc1.weight": np.zeros((8, 64), "float32"),
                            "register_tokens": np.zeros(64, "float32")}),
     ValueError, r"`path_or_state\['register_tokens'\]` must have 3 dimensions; got shape \(64,\)"),
    ("import_dinov2/mlp_rank", lambda: import_dinov2({**DINO, "blocks.0.mlp.fc1.weight": np.zeros((), "float32")}),
     ValueError, r"`path_or_state\['blocks.0.mlp.fc1.weight'\]` must have 2 dimensions; got shape \(\)"),
    ("import_dinov2/fused_shapes",
     lambda: import_dinov2({"embeddings.patch_embeddings.projection.weight": np.zeros((64, 3, 14, 14), "float32"),
                            **{f"encoder.layer.0.attention.attention.{p}.weight": np.zeros((64, w), "float32")
                               for p, w in (("query", 64), ("key", 64), ("value", 32))}}),
     ValueError, r"`path_or_state` has parts of a fused projection whose shapes do not stack"),
    ("import_dinov2/truncated_config",
     lambda: (safetensors_file("dino/model.safetensors", DINO),
              import_dinov2(file("dino/config.json", b"{") and "dino")),
     ValueError, r"'dino/config.json' is not valid JSON"),
    ("import_dinov2/config_number",
     lambda: (safetensors_file("dino/model.safetensors", DINO),
              import_dinov2(file("dino/config.json", b"3") and "dino")),
     ValueError, r"'dino/config.json' must hold a JSON object \(the model's config.json\); it holds a int"),
    # --- import_fid_inception -----------------------------------------------------------------
    ("import_fid_inception/file_of_a_list", lambda: import_fid_inception(torch_file("inception.pth", [1])),
     ValueError, r"`path_or_state` 'inception.pth' holds a list, not a state dict of the FID Inception"),
    ("import_fid_inception/int64", lambda: import_fid_inception({"fc.weight": np.zeros((2, 2), "int64")}),
     ValueError, r"`path_or_state\['fc.weight'\]` holds int64 values"),
    ("import_fid_inception/nan", lambda: import_fid_inception({"fc.bias": np.full(3, NAN, "float32")}),
     ValueError, r"`path_or_state\['fc.bias'\]` holds 3 NaN or infinite value\(s\) of 3"),
    ("weights_file/type", lambda: weights_file(None, ("model.safetensors",)),
     TypeError, r"`path` must be a file or folder path \(a str or os.PathLike\); got NoneType"),
]  # fmt: skip


test_bad_input = refusal_table(ROWS)


def test_the_table_is_large_and_distinct():
    assert len(ROWS) >= 55 and len({row[0] for row in ROWS}) == len(ROWS)


# --- the behaviours behind the rows ----------------------------------------------------------


def snapshot(directory):
    """Every file under `directory`, by relative path, as bytes."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = f.read()
    return files


def image_folder(root, images, labels):
    for index, (image, label) in enumerate(zip(images, labels)):
        os.makedirs(root / CLASSES[label], exist_ok=True)
        Image.fromarray(image).save(root / CLASSES[label] / f"{index}.png")
    return ImageFolder(root, 16)


def test_another_source_of_the_same_size_is_refused_and_no_file_changes(tmp_path):
    directory = tmp_path / "arrays"
    description = write(source(), directory)
    assert description["source_sha256"] and LatentDataset(directory).source_fingerprint == description["source_sha256"]
    before = snapshot(directory)
    for other in (source(OTHER), source(labels=np.array([1, 0, 0]))):  # other pixels, other labels: as many, as large
        with pytest.raises(ValueError, match=f"`directory` '{directory}' .*`source` has other images, labels or files"):
            write(other, directory)
        assert snapshot(directory) == before
    # A partial cache is not completed from another source either.
    shutil.rmtree(directory / "shard-00001")
    before = snapshot(directory)
    with pytest.raises(ValueError, match="`source` has other images"):
        write(source(OTHER), directory)
    assert snapshot(directory) == before and not (directory / "shard-00001").exists()

    # An image folder: a file moved to another class, or replaced by one of another size, is another source.
    folder = image_folder(tmp_path / "images", IMAGES, LABELS)
    write(folder, tmp_path / "folder")
    before = snapshot(tmp_path / "folder")
    os.rename(tmp_path / "images" / "a" / "2.png", tmp_path / "images" / "b" / "2.png")
    with pytest.raises(ValueError, match="`source` has other images, labels or files"):
        write(ImageFolder(tmp_path / "images", 16), tmp_path / "folder")
    os.rename(tmp_path / "images" / "b" / "2.png", tmp_path / "images" / "a" / "2.png")
    Image.fromarray(np.zeros((16, 16, 3), "uint8")).save(tmp_path / "images" / "a" / "2.png")  # compresses smaller
    with pytest.raises(ValueError, match="`source` has other images, labels or files"):
        write(ImageFolder(tmp_path / "images", 16), tmp_path / "folder")
    assert snapshot(tmp_path / "folder") == before

    # Another autoencoder: refused the same way, naming it.
    before = snapshot(directory)
    with pytest.raises(ValueError, match=f"`directory` '{directory}' .*`autoencoder` has other weights"):
        write(source(), directory, model=tiny_autoencoder(seed=2))
    assert snapshot(directory) == before


def test_a_nan_autoencoder_leaves_no_complete_cache(tmp_path):
    # The last of four images gives NaN: the first shard is written, the second is not, and the cache stays unfinished.
    directory = tmp_path / "levels"
    with pytest.raises(ValueError, match=r"index 3, in shard 1 \(images 2..3 of `source`\): the shard is not written"):
        write(ArrayImages(LEVELS), directory, model=Poisoned())
    assert sorted(os.listdir(directory)) == ["cache.json", "shard-00000"]  # no shard-00001, no partial shard
    assert not json.loads((directory / "cache.json").read_text()).get("complete")
    with pytest.raises(ValueError, match="unfinished"):
        LatentDataset(directory)
    first = snapshot(directory)
    with pytest.raises(ValueError, match="index 3"):  # a rerun refuses the same way and changes nothing
        write(ArrayImages(LEVELS), directory, model=Poisoned())
    assert snapshot(directory) == first
    # The images below the threshold alone make a finite, complete cache.
    description = write(ArrayImages(LEVELS[:3]), tmp_path / "finite", model=Poisoned())
    assert description["complete"] and np.all(np.isfinite(description["statistics"]["channel_mean"]))

    # NaN in the first shard of a new folder: nothing is left, as before the call.
    for name, model in (("kl", nan_vae()), ("teacher", vae())):
        teachers = {"dino": nan_teacher} if name == "teacher" else None
        with pytest.raises(ValueError, match="not finite"):
            write(source(), tmp_path / name, model=model, teachers=teachers)
        assert not (tmp_path / name).exists()
    # In an existing folder the folder stays, and holds no complete cache.
    (tmp_path / "kept").mkdir()
    with pytest.raises(ValueError, match="not finite"):
        write(source(), tmp_path / "kept", model=nan_vae())
    assert os.listdir(tmp_path / "kept") == ["cache.json"]
    assert not json.loads((tmp_path / "kept" / "cache.json").read_text()).get("complete")


def test_the_same_source_and_autoencoder_resume_to_the_same_cache(tmp_path):
    images = np.random.default_rng(4).integers(0, 256, (5, 16, 16, 3)).astype("uint8")
    labels = np.array([0, 1, 1, 0, 1])
    # Interrupted in the third shard (index 4): two shards are written.
    with pytest.raises(RuntimeError, match="interrupted"):
        write(FailsAt(images, labels, 4), tmp_path / "resumed")
    assert sorted(os.listdir(tmp_path / "resumed")) == ["cache.json", "shard-00000", "shard-00001"]
    kept = snapshot(tmp_path / "resumed" / "shard-00000")
    resumed = write(source(images, labels), tmp_path / "resumed")  # same images and labels: the same fingerprint
    fresh = write(source(images, labels), tmp_path / "fresh")
    assert resumed == fresh and resumed["complete"] and resumed["num_cached"] == 5
    assert snapshot(tmp_path / "resumed" / "shard-00000") == kept  # finished shards are not rewritten
    assert snapshot(tmp_path / "resumed") == snapshot(tmp_path / "fresh")
    # Rerunning a complete cache gives it back, unchanged.
    assert write(source(images, labels), tmp_path / "resumed") == fresh
    assert snapshot(tmp_path / "resumed") == snapshot(tmp_path / "fresh")

    # An image folder resumes too, with the recorded fingerprint.
    folder = image_folder(tmp_path / "images", images, labels)
    description = write(folder, tmp_path / "folder")
    shutil.rmtree(tmp_path / "folder" / "shard-00002")
    assert write(ImageFolder(tmp_path / "images", 16), tmp_path / "folder") == description
    # The fingerprint of the autoencoder is read back for the model to compare.
    dataset = LatentDataset(tmp_path / "folder")
    assert dataset.autoencoder_fingerprint == vae().weights_fingerprint() == description["autoencoder_weights_sha256"]
    assert dataset.autoencoder_config == vae().identity_config()
    assert dataset.source_fingerprint == description["source_sha256"]


def test_a_cache_without_a_source_fingerprint_is_read_but_not_resumed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    directory = with_description(drop=("source_sha256",))
    dataset = LatentDataset(directory, batch_size=3, shuffle=False)
    assert dataset.source_fingerprint is None and dataset.num_examples == 3 and len(dataset[0][0]) == 3
    before = snapshot(directory)
    with pytest.raises(ValueError, match="records no fingerprint of its source"):
        write(source(), directory)
    assert snapshot(directory) == before


def test_random_bytes_are_not_taken_for_pickled_code(tmp_path):
    # Random files that parse as pickle opcodes up to a STOP (b"\x93." is STACK_GLOBAL, STOP), and others.
    rng = np.random.default_rng(0)
    samples = [b"\x93." + rng.bytes(100), b"Q\x93." + rng.bytes(60), b"(\x93.", b"KK\x93."]
    samples += [rng.bytes(int(rng.integers(1, 300))) for _ in range(40)]
    for index, content in enumerate(samples):
        path = tmp_path / f"random-{index}.ckpt"
        path.write_bytes(content)
        with pytest.raises(ValueError, match="is not a PyTorch checkpoint") as caught:
            read_checkpoint(path)
        assert "could run code" not in str(caught.value)
