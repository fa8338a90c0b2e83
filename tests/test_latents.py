"""The latent cache: ADM's crop, both flips' posterior moments (and teacher features) in atomic shards, resuming,
streaming, normalising."""

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from PIL import Image

from keras_sit import latents
from keras_sit.fingerprint import weights_fingerprint
from keras_sit.latents import ArrayImages, ImageFolder, LatentDataset, center_crop, write_latent_cache
from tests.conftest import tiny_autoencoder, to_numpy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def autoencoder():
    return tiny_autoencoder(seed=0)


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3)).astype("uint8")


def tiny_teacher(seed=0, channels=8, name="teacher"):
    """A teacher: 16x16x3 images in 0..255 -> 16 patch tokens of `channels` (a 4x4 strided convolution)."""
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3), name="images"),
            keras.layers.Conv2D(channels, 4, strides=4, name="patches"),
            keras.layers.Reshape((16, channels), name="tokens"),
        ],
        name=name,
    )
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.normal(0, 0.01, size=variable.shape).astype("float32"))
    return model


def shard_arrays(directory):
    """Every array of every shard (and the text of its other files), by file name."""
    names = sorted(n for n in os.listdir(directory) if n.startswith("shard-"))
    files = [(n, f) for n in names for f in sorted(os.listdir(os.path.join(directory, n)))]
    return {
        f"{n}/{f}": np.load(path) if f.endswith(".npy") else np.array(open(path).read())
        for n, f in files
        for path in [os.path.join(directory, n, f)]
    }


# --- preparing images ------------------------------------------------------------------------


def test_center_crop_keeps_the_middle_at_scale_one():
    columns = np.tile(np.arange(100, dtype="uint8")[None, :, None], (60, 1, 3))  # value = column index
    out = center_crop(Image.fromarray(columns), 60)  # short side already 60: no resize, crop 20 each side
    assert out.shape == (60, 60, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, 0], np.arange(20, 80))


def test_center_crop_downsamples_large_images_and_upsamples_small_ones():
    flat = Image.fromarray(np.full((300, 520, 3), 77, "uint8"))  # box halvings to 75x130, then bicubic
    np.testing.assert_array_equal(center_crop(flat, 32), np.full((32, 32, 3), 77, "uint8"))
    small = center_crop(Image.fromarray(np.full((10, 12, 3), 200, "uint8")), 32)
    assert small.shape == (32, 32, 3) and np.all(small == 200)
    gray = center_crop(Image.fromarray(np.full((40, 40), 9, "uint8"), mode="L"), 16)  # converted to RGB
    assert gray.shape == (16, 16, 3)


def test_image_folder_orders_classes_and_files(tmp_path):
    for name, value in (("zebra", 10), ("ant", 200)):
        os.makedirs(tmp_path / name)
        for i in range(2):
            Image.fromarray(np.full((20, 24, 3), value + i, "uint8")).save(tmp_path / name / f"{i}.png")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    folder = ImageFolder(tmp_path, 16)
    assert folder.class_names == ["ant", "zebra"] and len(folder) == 4
    image, label = folder[3]
    assert image.shape == (16, 16, 3) and label == 1 and np.all(image == 11)
    with pytest.raises(ValueError, match="no images"):
        ImageFolder(tmp_path / "ant", 16)


def odd_folder(root):
    """Class `a`: two good PNGs, a truncated PNG and garbage bytes named .jpg; class `b`: a CMYK JPEG, a
    16-bit greyscale PNG and an RGBA PNG. With `shard_size=2` the second shard holds only the two broken files."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        os.makedirs(root / name)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (16, 20, 3)).astype("uint8")).save(root / "a" / f"{i}.png")
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3)).astype("uint8")).save(buffer, format="PNG")
    (root / "a" / "2.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (root / "a" / "3.jpg").write_bytes(rng.bytes(3000))
    Image.new("CMYK", (20, 16), (0, 255, 255, 0)).save(root / "b" / "0.jpg")  # red
    Image.fromarray(wide_grey()).save(root / "b" / "1.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 4)).astype("uint8")).save(root / "b" / "2.png")
    return root


def wide_grey():
    """A 16-bit greyscale ramp over the whole range, 16x16."""
    return np.linspace(0, 65535, 256).round().astype("uint16").reshape(16, 16)


BROKEN = [os.path.join("a", "2.png"), os.path.join("a", "3.jpg")]


def test_unreadable_images_raise_naming_the_file(tmp_path, autoencoder):
    folder = ImageFolder(odd_folder(tmp_path / "images"), 16)
    for index, name in ((2, BROKEN[0]), (3, BROKEN[1])):
        with pytest.raises(ValueError, match=re.escape(str(tmp_path / "images" / name))) as caught:
            folder[index]
        assert isinstance(caught.value, latents.UnreadableImageError) and isinstance(caught.value.__cause__, OSError)
        assert caught.value.path == str(tmp_path / "images" / name)
    assert [path for path, _ in folder.find_unreadable()] == [str(tmp_path / "images" / n) for n in BROKEN]
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "images" / BROKEN[0]))):
        write_latent_cache(folder, autoencoder, tmp_path / "cache", shard_size=2, verbose=0)  # on_error="raise"
    with pytest.raises(ValueError, match="`on_error` must be one of"):
        write_latent_cache(folder, autoencoder, tmp_path / "cache", on_error="ignore")


def test_cmyk_wide_grey_and_alpha_images_convert_to_rgb(tmp_path):
    folder = ImageFolder(odd_folder(tmp_path), 16)
    cmyk, grey, rgba = (folder[i][0] for i in (4, 5, 6))
    assert all(image.shape == (16, 16, 3) and image.dtype == np.uint8 for image in (cmyk, grey, rgba))
    np.testing.assert_allclose(cmyk.reshape(-1, 3).mean(0), [255, 0, 0], atol=3)
    # 0..65535 scaled to 0..255, not clipped at 255 (what Pillow's own convert("RGB") gives).
    np.testing.assert_allclose(grey[..., 0], np.round(wide_grey() / 257.0), atol=1)
    assert np.all(grey[..., 0] == grey[..., 2]) and grey.min() == 0 and grey.max() == 255
    assert 100 < grey.mean() < 155
    assert latents.to_rgb(Image.fromarray(wide_grey().astype("int32"))).getpixel((15, 15)) == (255, 255, 255)


def test_skipped_images_are_recorded_and_resumed(tmp_path, autoencoder, capsys):
    folder = ImageFolder(odd_folder(tmp_path / "images"), 16)
    cache = tmp_path / "cache"
    description = write_latent_cache(folder, autoencoder, cache, shard_size=2, verbose=1, on_error="skip")
    skipped = [str(tmp_path / "images" / name) for name in BROKEN]
    assert description["skipped"] == skipped and description["num_skipped"] == 2
    assert description["num_examples"] == 7 and description["num_cached"] == 5 and description["num_shards"] == 4
    assert json.loads((cache / "cache.json").read_text()) == description
    output = capsys.readouterr().out
    assert "Skipped 2 unreadable image(s) of 7" in output and all(path in output for path in skipped)
    assert [len(np.load(cache / f"shard-0000{s}" / "labels.npy")) for s in range(4)] == [2, 0, 2, 1]

    # The same as a cache of the readable images alone.
    readable = [0, 1, 4, 5, 6]
    pairs = [folder[i] for i in readable]
    expected = write_latent_cache(
        ArrayImages(np.stack([image for image, _ in pairs]), np.array([label for _, label in pairs])),
        autoencoder,
        tmp_path / "expected",
        shard_size=2,
        verbose=0,
    )
    assert description["statistics"] == pytest.approx(expected["statistics"])
    dataset = LatentDataset(cache, batch_size=2, shuffle=False, flip=False, sample=False)
    reference = LatentDataset(tmp_path / "expected", batch_size=2, shuffle=False, flip=False, sample=False)
    assert dataset.num_examples == 5 and len(dataset) == 3 and dataset.num_classes == 2
    for index in range(3):
        np.testing.assert_array_equal(dataset[index][0], reference[index][0])
        np.testing.assert_array_equal(dataset[index][1], reference[index][1])
    shuffled = LatentDataset(cache, batch_size=5, seed=0)
    assert sorted(shuffled[0][1]) == [0, 0, 1, 1, 1]

    # Resuming keeps what the finished shards skipped.
    before = shard_arrays(cache)
    for shard in ("shard-00001", "shard-00003"):
        shutil.rmtree(cache / shard)
    assert write_latent_cache(folder, autoencoder, cache, shard_size=2, verbose=0, on_error="skip") == description
    after = shard_arrays(cache)
    assert sorted(after) == sorted(before)
    for name, array in before.items():
        np.testing.assert_array_equal(after[name], array, err_msg=name)
    # A shard written under "skip" keeps its record when the cache is completed under "raise".
    shutil.rmtree(cache / "shard-00003")
    assert write_latent_cache(folder, autoencoder, cache, shard_size=2, verbose=0) == description


def test_a_cache_of_unreadable_images_only_is_refused(tmp_path, autoencoder):
    (tmp_path / "images" / "a").mkdir(parents=True)
    (tmp_path / "images" / "a" / "0.png").write_bytes(b"not a picture")
    folder = ImageFolder(tmp_path / "images", 16)
    with pytest.raises(ValueError, match="No image of `source` could be read"):
        write_latent_cache(folder, autoencoder, tmp_path / "cache", verbose=0, on_error="skip")


# --- writing -------------------------------------------------------------------------------------


def test_cache_holds_both_flips_moments_and_statistics(tmp_path, autoencoder, images):
    labels = np.array([0, 1, 2, 1, 0])
    description = write_latent_cache(
        ArrayImages(images, labels), autoencoder, tmp_path, shard_size=2, batch_size=3, verbose=0
    )
    assert description["complete"] and description["num_shards"] == 3 and description["latent_shape"] == [8, 8, 4]
    mean = np.concatenate([np.load(tmp_path / f"shard-0000{s}" / "mean.npy") for s in range(3)])
    std = np.concatenate([np.load(tmp_path / f"shard-0000{s}" / "std.npy") for s in range(3)])
    assert mean.shape == (5, 2, 8, 8, 4)
    x = images.astype("float32") / 127.5 - 1.0
    for flip, view in enumerate((x, x[:, :, ::-1])):
        raw_mean, logvar = autoencoder.encode_moments(view)
        np.testing.assert_allclose(mean[:, flip], to_numpy(autoencoder.scale_latents(raw_mean)), rtol=1e-5, atol=1e-5)
        expected_std = np.exp(0.5 * to_numpy(logvar)) * autoencoder.scaling_factor
        np.testing.assert_allclose(std[:, flip], expected_std, rtol=1e-5, atol=1e-7)
    stored = np.concatenate([np.load(tmp_path / f"shard-0000{s}" / "labels.npy") for s in range(3)])
    np.testing.assert_array_equal(stored, labels)
    per_channel = mean.reshape(-1, 4).astype("float64")
    np.testing.assert_allclose(description["statistics"]["channel_mean"], per_channel.mean(0), rtol=1e-6, atol=1e-9)
    sample_var = per_channel.var(0) + np.square(std.reshape(-1, 4).astype("float64")).mean(0)
    np.testing.assert_allclose(description["statistics"]["channel_std"], np.sqrt(sample_var), rtol=1e-6)
    assert json.loads((tmp_path / "cache.json").read_text()) == description


def test_a_cache_of_something_else_is_refused(tmp_path, autoencoder, images):
    write_latent_cache(ArrayImages(images), autoencoder, tmp_path, shard_size=4, verbose=0)
    with pytest.raises(ValueError, match="another source, autoencoder or setting"):
        write_latent_cache(ArrayImages(images), autoencoder, tmp_path, shard_size=2, verbose=0)
    with pytest.raises(ValueError, match="another source, autoencoder or setting"):
        write_latent_cache(ArrayImages(images), tiny_autoencoder(seed=1), tmp_path, shard_size=4, verbose=0)


WRITER = """
import sys, time
import keras, numpy as np
import keras_sit
from keras_sit.latents import ArrayImages, write_latent_cache

class Slow(ArrayImages):
    def __getitem__(self, index):
        time.sleep(0.3)
        return super().__getitem__(index)

autoencoder = keras.saving.load_model(sys.argv[1])
teachers = {name: keras.saving.load_model(path) for name, path in zip(sys.argv[4::2], sys.argv[5::2])} or None
write_latent_cache(Slow(np.load(sys.argv[2]), np.arange(7) % 3), autoencoder, sys.argv[3], shard_size=2,
                   batch_size=1, verbose=0, teachers=teachers)
"""


@pytest.mark.parametrize("with_features", [False, True], ids=["latents", "features"])
def test_killed_writer_resumes_to_the_same_cache(tmp_path, autoencoder, with_features):
    images = np.random.default_rng(1).integers(0, 256, (7, 16, 16, 3)).astype("uint8")
    autoencoder.save(tmp_path / "vae.keras")
    np.save(tmp_path / "images.npy", images)
    # With features: two teachers, run in the killed writer as loaded from their files.
    teachers = {"dino": tiny_teacher(0, name="dino"), "mae": tiny_teacher(1, channels=4, name="mae")}
    teacher_arguments = []
    if with_features:
        for name, teacher in teachers.items():
            teacher.save(tmp_path / f"{name}.keras")
            teacher_arguments += [name, str(tmp_path / f"{name}.keras")]
    else:
        teachers = None
    resumed = tmp_path / "resumed"
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WRITER,
            str(tmp_path / "vae.keras"),
            str(tmp_path / "images.npy"),
            str(resumed),
            *teacher_arguments,
        ],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    deadline = time.time() + 300
    while not (resumed / "shard-00001").exists():  # two shards done, two to go
        assert process.poll() is None and time.time() < deadline, "the writer ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (resumed / "shard-00003").exists()
    assert not json.loads((resumed / "cache.json").read_text()).get("complete")
    with pytest.raises(ValueError, match="unfinished"):
        LatentDataset(resumed)
    options = dict(shard_size=2, batch_size=1, verbose=0, teachers=teachers)
    resumed_description = write_latent_cache(ArrayImages(images, np.arange(7) % 3), autoencoder, resumed, **options)
    fresh = tmp_path / "fresh"
    fresh_description = write_latent_cache(ArrayImages(images, np.arange(7) % 3), autoencoder, fresh, **options)
    assert resumed_description == fresh_description
    resumed_arrays, fresh_arrays = shard_arrays(resumed), shard_arrays(fresh)
    # Per shard: mean, std, labels and sums, and with features dino and mae.
    assert sorted(resumed_arrays) == sorted(fresh_arrays) and len(fresh_arrays) == (24 if with_features else 16)
    if with_features:
        assert fresh_description["features"] == {
            "dino": {"shape": [16, 8], "dtype": "float16"},
            "mae": {"shape": [16, 4], "dtype": "float16"},
        }
        assert fresh_arrays["shard-00003/dino.npy"].shape == (1, 2, 16, 8)
    for name, array in fresh_arrays.items():
        np.testing.assert_array_equal(resumed_arrays[name], array, err_msg=name)
    assert not [n for n in os.listdir(resumed) if n.endswith(".partial")]


# --- reading -------------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path, autoencoder, images):
    write_latent_cache(ArrayImages(images, np.array([0, 1, 2, 1, 0])), autoencoder, tmp_path, shard_size=2, verbose=0)
    return tmp_path


def test_dataset_in_order_gives_the_means(cache):
    means = np.concatenate([np.load(cache / f"shard-0000{s}" / "mean.npy") for s in range(3)])
    dataset = LatentDataset(cache, batch_size=2, shuffle=False, flip=False, sample=False)
    assert len(dataset) == 3 and dataset.num_classes == 3 and dataset.latent_shape == (8, 8, 4)
    assert isinstance(dataset._means[0], np.memmap)  # read from disk, batch by batch
    batches = [dataset[i] for i in range(len(dataset))]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), means[:, 0])
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), [0, 1, 2, 1, 0])
    assert len(LatentDataset(cache, batch_size=2, drop_remainder=True)) == 2


def test_dataset_draws_fresh_latents_and_flips_every_epoch(cache):
    mean = np.load(cache / "shard-00000" / "mean.npy")[0]
    std = np.load(cache / "shard-00000" / "std.npy")[0]
    dataset = LatentDataset(cache, batch_size=1, shuffle=False, seed=3)
    draws, flips = [], []
    for _ in range(400):
        latent = dataset[0][0][0]
        flip = int(np.abs(latent - mean[1]).sum() < np.abs(latent - mean[0]).sum())
        flips.append(flip)
        draws.append((latent - mean[flip]) / std[flip])
        dataset.on_epoch_end()
    assert 150 < sum(flips) < 250  # both flips, about half each
    noise = np.stack(draws)  # standard normal if latents are mean + std * eps
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1.0) < 0.02
    again = LatentDataset(cache, batch_size=1, shuffle=False, seed=3)
    np.testing.assert_array_equal(again[0][0], LatentDataset(cache, batch_size=1, shuffle=False, seed=3)[0][0])
    shuffled = LatentDataset(cache, batch_size=5, seed=0)
    first = shuffled[0][1]
    shuffled.on_epoch_end()
    assert sorted(first) == sorted(shuffled[0][1]) == [0, 0, 1, 1, 2]


def test_unlabelled_cache_yields_latents_only(tmp_path, autoencoder, images):
    write_latent_cache(ArrayImages(images), autoencoder, tmp_path, verbose=0)
    batch = LatentDataset(tmp_path, batch_size=4)[0]
    assert isinstance(batch, np.ndarray) and batch.shape == (4, 8, 8, 4)


def test_bad_arguments(tmp_path, autoencoder, images):
    with pytest.raises(ValueError, match="holds no latent cache"):
        LatentDataset(tmp_path)
    with pytest.raises(TypeError, match="`images` must be uint8"):
        ArrayImages(images.astype("float32"))
    with pytest.raises(ValueError, match="`images` must be square RGB"):
        ArrayImages(images[..., :1])
    with pytest.raises(ValueError, match="`dtype` must be one of"):
        write_latent_cache(ArrayImages(images), autoencoder, tmp_path, dtype="int8")
    with pytest.raises(ValueError, match="`shard_size` must be a positive int"):
        write_latent_cache(ArrayImages(images), autoencoder, tmp_path, shard_size=0)


def test_float16_cache_halves_the_moments(tmp_path, autoencoder, images):
    write_latent_cache(ArrayImages(images), autoencoder, tmp_path, dtype="float16", verbose=0)
    assert np.load(tmp_path / "shard-00000" / "mean.npy").dtype == np.float16
    assert LatentDataset(tmp_path, batch_size=2)[0].dtype == np.float32
    assert latents.read_cache_description(tmp_path)["dtype"] == "float16"


# --- teacher features ----------------------------------------------------------------------------


def test_cache_stores_the_teachers_tokens_of_both_flips(tmp_path, autoencoder, images):
    labels = np.array([0, 1, 2, 1, 0])
    dino, mae = tiny_teacher(0, name="dino"), tiny_teacher(1, channels=4, name="mae")
    options = dict(shard_size=2, batch_size=3, verbose=0)
    description = write_latent_cache(
        ArrayImages(images, labels),
        autoencoder,
        tmp_path / "both",
        teachers={"dino": dino, "mae": mae},
        feature_dtype="float32",
        **options,
    )
    assert description["features"] == {
        "dino": {"shape": [16, 8], "dtype": "float32"},
        "mae": {"shape": [16, 4], "dtype": "float32"},
    }
    assert description["feature_dtype"] == "float32"
    record = description["teachers"]["dino"]
    assert record["class_name"] == "Sequential" and record["weights_sha256"] == weights_fingerprint(dino.weights)
    assert "name" not in record["config"] and record["config"]["layers"][1]["config"]["filters"] == 8
    assert json.loads((tmp_path / "both" / "cache.json").read_text()) == description
    # The teachers see float32 images in 0..255, the images and their mirrors.
    pixels = images.astype("float32")
    for name, teacher in (("dino", dino), ("mae", mae)):
        stored = np.concatenate([np.load(tmp_path / "both" / f"shard-0000{s}" / f"{name}.npy") for s in range(3)])
        assert stored.dtype == np.float32 and stored.shape == (5, 2, *description["features"][name]["shape"])
        for flip, view in enumerate((pixels, pixels[:, :, ::-1])):
            np.testing.assert_allclose(stored[:, flip], to_numpy(teacher(view)), rtol=1e-5, atol=1e-5)
    # The latents, labels and statistics are those of a cache without features, exactly.
    plain = write_latent_cache(ArrayImages(images, labels), autoencoder, tmp_path / "plain", **options)
    assert "features" not in plain and "teachers" not in plain
    assert description["statistics"] == plain["statistics"]
    arrays, plain_arrays = shard_arrays(tmp_path / "both"), shard_arrays(tmp_path / "plain")
    assert sorted(arrays) == sorted(
        [*plain_arrays, *(f"shard-0000{s}/{n}.npy" for s in range(3) for n in ("dino", "mae"))]
    )
    for name, array in plain_arrays.items():
        np.testing.assert_array_equal(arrays[name], array, err_msg=name)
    # One teacher is stored as `features`, in float16 by default.
    single = write_latent_cache(ArrayImages(images, labels), autoencoder, tmp_path / "single", teachers=dino, **options)
    assert single["features"] == {"features": {"shape": [16, 8], "dtype": "float16"}}
    features = np.load(tmp_path / "single" / "shard-00000" / "features.npy")
    assert features.dtype == np.float16
    np.testing.assert_array_equal(features, np.load(tmp_path / "both" / "shard-00000" / "dino.npy").astype("float16"))


def test_features_of_a_shard_of_skipped_images_only(tmp_path, autoencoder):
    folder = ImageFolder(odd_folder(tmp_path / "images"), 16)
    write_latent_cache(
        folder, autoencoder, tmp_path / "cache", shard_size=2, verbose=0, on_error="skip", teachers=tiny_teacher()
    )
    assert np.load(tmp_path / "cache" / "shard-00001" / "features.npy").shape == (0, 2, 16, 8)
    dataset = LatentDataset(tmp_path / "cache", batch_size=5, shuffle=False, flip=False, sample=False, features=True)
    inputs, labels = dataset[0]
    pixels = np.stack([folder[i][0] for i in (0, 1, 4, 5, 6)]).astype("float32")
    np.testing.assert_allclose(inputs["features"], to_numpy(tiny_teacher()(pixels)), rtol=1e-2, atol=1e-2)  # float16
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 1])


def test_a_cache_is_resumed_with_its_teachers_only(tmp_path, autoencoder, images):
    source = ArrayImages(images)
    options = dict(shard_size=2, verbose=0)
    description = write_latent_cache(source, autoencoder, tmp_path, teachers={"dino": tiny_teacher(0)}, **options)
    shutil.rmtree(tmp_path / "shard-00001")
    with pytest.raises(ValueError, match=r"`teachers` are not the ones .*: 'dino' \(another weights\)"):
        write_latent_cache(source, autoencoder, tmp_path, teachers={"dino": tiny_teacher(1)}, **options)
    with pytest.raises(ValueError, match=r"'dino' \(another configuration and weights\)"):
        write_latent_cache(source, autoencoder, tmp_path, teachers={"dino": tiny_teacher(0, channels=4)}, **options)
    with pytest.raises(ValueError, match=r"'dino' \(in the cache, not given\)"):
        write_latent_cache(source, autoencoder, tmp_path, **options)
    with pytest.raises(ValueError, match=r"'dino' \(in the cache, not given\), 'features' \(given, not in the cache\)"):
        write_latent_cache(source, autoencoder, tmp_path, teachers=tiny_teacher(0), **options)
    with pytest.raises(ValueError, match="another source, autoencoder or setting"):
        write_latent_cache(
            source, autoencoder, tmp_path, teachers={"dino": tiny_teacher(0)}, feature_dtype="float32", **options
        )
    assert not (tmp_path / "shard-00001").exists()
    # The same teacher, built anew, resumes it.
    assert (
        write_latent_cache(source, autoencoder, tmp_path, teachers={"dino": tiny_teacher(0)}, **options) == description
    )
    write_latent_cache(source, autoencoder, tmp_path / "plain", **options)
    with pytest.raises(ValueError, match=r"'dino' \(given, not in the cache\)"):
        write_latent_cache(source, autoencoder, tmp_path / "plain", teachers={"dino": tiny_teacher(0)}, **options)


def test_bad_teachers(tmp_path, autoencoder, images):
    def write(teachers, **options):
        write_latent_cache(ArrayImages(images), autoencoder, tmp_path, verbose=0, teachers=teachers, **options)

    for name in ("mean", "labels", "x", "Std", "sums", "images"):
        with pytest.raises(ValueError, match=f"`teachers` name '{name}' is taken"):
            write({name: tiny_teacher()})
    with pytest.raises(ValueError, match="`teachers` names must be Python identifiers .*got 'dino v2'"):
        write({"dino v2": tiny_teacher()})
    with pytest.raises(ValueError, match="differ in more than case"):
        write({"dino": tiny_teacher(), "DINO": tiny_teacher()})
    with pytest.raises(ValueError, match="`teachers` is an empty dict"):
        write({})
    with pytest.raises(
        TypeError, match="`teachers` must be a Keras model, layer or callable .* got str for 'features'"
    ):
        write("dinov2")
    with pytest.raises(ValueError, match="`feature_dtype` must be one of"):
        write(tiny_teacher(), feature_dtype="bfloat16")
    with pytest.raises(ValueError, match=r"'features' must map images \[B, S, S, 3\] to tokens \[B, N, C\]"):
        write(lambda x: x)  # images, not tokens
    assert not os.path.exists(tmp_path / "shard-00000")


def test_dataset_yields_the_features_of_each_latents_flip(tmp_path, autoencoder, images):
    teachers = {"dino": tiny_teacher(0, name="dino"), "mae": tiny_teacher(1, channels=4, name="mae")}
    write_latent_cache(
        ArrayImages(images, np.array([0, 1, 2, 1, 0])),
        autoencoder,
        tmp_path,
        shard_size=2,
        verbose=0,
        teachers=teachers,
    )
    means = np.concatenate([np.load(tmp_path / f"shard-0000{s}" / "mean.npy") for s in range(3)])
    stored = {
        n: np.concatenate([np.load(tmp_path / f"shard-0000{s}" / f"{n}.npy") for s in range(3)]) for n in teachers
    }
    flips = []
    for seed in range(4):
        dataset = LatentDataset(tmp_path, batch_size=5, shuffle=False, sample=False, seed=seed, features=True)
        assert dataset.features == ("dino", "mae") and dataset.feature_shapes == {"dino": (16, 8), "mae": (16, 4)}
        inputs, labels = dataset[0]
        assert sorted(inputs) == ["dino", "mae", "x"] and inputs["dino"].dtype == np.float32
        np.testing.assert_array_equal(labels, [0, 1, 2, 1, 0])
        # The latents are those of a dataset without features, exactly.
        plain = LatentDataset(tmp_path, batch_size=5, shuffle=False, sample=False, seed=seed)[0][0]
        np.testing.assert_array_equal(inputs["x"], plain)
        for row in range(5):
            flip = [f for f in (0, 1) if np.array_equal(inputs["x"][row], means[row, f])]
            assert len(flip) == 1
            flips.append(flip[0])
            for name in teachers:
                np.testing.assert_array_equal(inputs[name][row], stored[name][row, flip[0]].astype("float32"))
    assert set(flips) == {0, 1}
    # Shuffled: still the tokens of the chosen flip, example by example.
    dataset = LatentDataset(tmp_path, batch_size=3, seed=7, sample=False, features="mae")
    for index in range(len(dataset)):
        inputs, labels = dataset[index]
        assert sorted(inputs) == ["mae", "x"]
        for row, example in enumerate(dataset._order[index * 3 : (index + 1) * 3]):
            (flip,) = [f for f in (0, 1) if np.array_equal(inputs["x"][row], means[example, f])]
            np.testing.assert_array_equal(inputs["mae"][row], stored["mae"][example, flip].astype("float32"))
    assert sorted(LatentDataset(tmp_path, batch_size=5, features=("dino",))[0][0]) == ["dino", "x"]
    with pytest.raises(ValueError, match=r"`features` must name distinct features .* stores \['dino', 'mae'\]"):
        LatentDataset(tmp_path, features="clip")
    with pytest.raises(ValueError, match="`features` must name distinct features"):
        LatentDataset(tmp_path, features=("dino", "dino"))
    with pytest.raises(TypeError, match="`features` must be a bool, a feature name or a tuple of names; got 3"):
        LatentDataset(tmp_path, features=3)


def test_unlabelled_cache_with_features_yields_a_dict(tmp_path, autoencoder, images):
    write_latent_cache(ArrayImages(images), autoencoder, tmp_path, verbose=0, teachers=tiny_teacher())
    batch = LatentDataset(tmp_path, batch_size=4, features=True)[0]
    assert isinstance(batch, dict) and batch["x"].shape == (4, 8, 8, 4) and batch["features"].shape == (4, 16, 8)
    write_latent_cache(ArrayImages(images), autoencoder, tmp_path / "plain", verbose=0)
    with pytest.raises(ValueError, match="stores none .*teachers="):
        LatentDataset(tmp_path / "plain", features=True)


# --- normalisation -------------------------------------------------------------------------------


def test_normalized_dataset_subtracts_the_mean_and_divides_by_the_std(cache):
    description = latents.read_cache_description(cache)
    mean = np.asarray(description["statistics"]["channel_mean"], "float32")
    std = np.asarray(description["statistics"]["channel_std"], "float32")
    dataset = LatentDataset(cache, batch_size=5, seed=3, normalize=True)
    assert dataset.statistics == description["statistics"]
    raw = LatentDataset(cache, batch_size=5, seed=3)
    for _ in range(2):
        (normalized, labels), (drawn, raw_labels) = dataset[0], raw[0]
        np.testing.assert_allclose(normalized, (drawn - mean) / std, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(labels, raw_labels)
        dataset.on_epoch_end(), raw.on_epoch_end()
    # Over both flips' means, the normalised latents have about zero mean per channel.
    means = LatentDataset(cache, batch_size=5, shuffle=False, flip=False, sample=False, normalize=True)[0][0]
    flipped = [
        (x - mean) / std for x in np.concatenate([np.load(cache / f"shard-0000{s}" / "mean.npy") for s in range(3)])
    ]
    np.testing.assert_allclose(means, np.stack(flipped)[:, 0], rtol=1e-6, atol=1e-6)
    both = np.stack(flipped).reshape(-1, 4)
    np.testing.assert_allclose(both.mean(0), 0.0, atol=1e-5)
    with pytest.raises(TypeError, match="`normalize` must be a bool"):
        LatentDataset(cache, normalize="yes")
