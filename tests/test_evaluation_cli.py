"""`python -m keras_sit.evaluation`: its FID, KID and Inception Score of image folders and `.npz` files against
the metrics computed directly from the same network's features, its statistics files, and its refusals.

The network has random weights (the reference of `tests/test_inception.py`, so that activations stay of order
one) saved with `torch.save` as pytorch-fid's weights file. Few, small images keep the 299x299 network cheap.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from keras_sit.convert import import_fid_inception
from keras_sit.evaluation.cli import image_files, main
from keras_sit.evaluation.metrics import frechet_distance, inception_score, kernel_inception_distance
from tests.conftest import to_numpy
from tests.test_inception import random_reference, smooth_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUMBER = re.compile(r"-?\d+(?:\.\d*)?(?:e[-+]?\d+)?", re.IGNORECASE)


def printed(text):
    """`{"FID": [value], "KID": [mean, std], ...}` from the command's output."""
    values = {}
    for line in text.splitlines():
        key, colon, rest = line.partition(":")
        if colon:
            values[key] = [float(number) for number in NUMBER.findall(rest)]
    return values


def save_images(directory, named_images):
    for name, image in named_images.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two folders, the weights file, and each folder's features computed directly."""
    root = tmp_path_factory.mktemp("cli")
    weights = root / "pt_inception-random.pth"
    torch.save(random_reference(seed=1).state_dict(), weights)
    rng = np.random.default_rng(0)
    # Noise in two sizes and three formats, one size in a subfolder; the sorted paths keep this order.
    small = rng.integers(0, 256, size=(3, 24, 24, 3), dtype=np.uint8)
    wide = rng.integers(0, 256, size=(2, 32, 40, 3), dtype=np.uint8)
    save_images(root / "noise", {"a0.png": small[0], "a1.png": small[1], "a2.png": small[2],
                                 "more/a3.bmp": wide[0], "more/a4.tif": wide[1]})  # fmt: skip
    (root / "noise" / "notes.txt").write_text("not an image")
    photos = smooth_images(4)
    save_images(root / "photos", {f"b{i}.PNG": image for i, image in enumerate(photos)})
    inception = import_fid_inception(weights)
    noise_features = [inception.features(small), inception.features(wide)]
    photo_features = inception.features(photos)
    noise_pool = np.concatenate([to_numpy(f["pool"]) for f in noise_features]).astype(np.float64)
    photo_pool = to_numpy(photo_features["pool"]).astype(np.float64)
    return {
        "root": root,
        "weights": str(weights),
        "noise": str(root / "noise"),
        "photos": str(root / "photos"),
        "photo_images": photos,
        "noise_pool": noise_pool,
        "noise_logits": np.concatenate([to_numpy(f["logits_unbiased"]) for f in noise_features]).astype(np.float64),
        "photo_pool": photo_pool,
        # The folders' FID computed directly, once: a 2048-d eigendecomposition takes seconds on CI.
        "fid": frechet_distance(*gaussian(noise_pool), *gaussian(photo_pool)),
    }


def gaussian(features):
    return features.mean(0), np.cov(features, rowvar=False)


def test_fid_kid_and_inception_score_of_two_folders(data, capsys):
    assert [os.path.relpath(path, data["noise"]) for path in image_files(data["noise"])] == [
        "a0.png", "a1.png", "a2.png", os.path.join("more", "a3.bmp"), os.path.join("more", "a4.tif")
    ]  # fmt: skip
    results = main([data["noise"], data["photos"], "--inception", data["weights"], "--kid", "--kid-subsets", "5",
                    "--isc", "--isc-splits", "2"])  # fmt: skip
    shown = printed(capsys.readouterr().out)
    expected = data["fid"]
    assert expected > 1.0
    np.testing.assert_allclose(shown["FID"], [expected], rtol=1e-6)
    kid = kernel_inception_distance(data["noise_pool"], data["photo_pool"], num_subsets=5, seed=2020)
    np.testing.assert_allclose(shown["KID"], kid, rtol=1e-5, atol=1e-9)
    score = inception_score(data["noise_logits"], splits=2, from_logits=True)
    assert score[0] > 1.0
    np.testing.assert_allclose(shown["IS"], score, rtol=1e-5)
    assert results["fid"] == shown["FID"][0]


def test_statistics_files_give_the_folders_fid(data, capsys, tmp_path):
    # An ADM batch (images in arr_0) read in batches of 3, its statistics written in pytorch-fid's format.
    np.savez(tmp_path / "photos_adm.npz", data["photo_images"])
    stats = tmp_path / "photos_stats.npz"
    main(["--save-stats", str(tmp_path / "photos_adm.npz"), str(stats), "--inception", data["weights"],
          "--batch-size", "3"])  # fmt: skip
    with np.load(stats) as saved:
        assert sorted(saved.files) == ["mu", "sigma"]
        mu, sigma = gaussian(data["photo_pool"])
        np.testing.assert_allclose(saved["mu"], mu, rtol=1e-5, atol=1e-5 * np.abs(mu).max())
        np.testing.assert_allclose(saved["sigma"], sigma, rtol=1e-4, atol=1e-4 * np.abs(sigma).max())
    with pytest.raises(SystemExit):
        main(["--save-stats", data["photos"], str(stats), "--inception", data["weights"]])
    assert "exists" in capsys.readouterr().err

    # pytorch-fid's statistics of the noise folder, written here, against the photo folder.
    np.savez_compressed(tmp_path / "noise_stats.npz", **dict(zip(("mu", "sigma"), gaussian(data["noise_pool"]))))
    expected = data["fid"]
    main([data["photos"], str(tmp_path / "noise_stats.npz"), "--inception", data["weights"]])
    np.testing.assert_allclose(printed(capsys.readouterr().out)["FID"], [expected], rtol=1e-6)

    # Statistics on both sides: the network is not needed.
    main([str(tmp_path / "noise_stats.npz"), str(stats), "--inception", data["weights"]])
    np.testing.assert_allclose(printed(capsys.readouterr().out)["FID"], [expected], rtol=1e-4)

    # Statistics against a folder of two images.
    save_images(tmp_path / "two", {"b0.png": data["photo_images"][0], "b1.png": data["photo_images"][1]})
    main([str(tmp_path / "noise_stats.npz"), str(tmp_path / "two"), "--inception", data["weights"]])
    expected = frechet_distance(*gaussian(data["noise_pool"]), *gaussian(data["photo_pool"][:2]))
    np.testing.assert_allclose(printed(capsys.readouterr().out)["FID"], [expected], rtol=1e-6)

    # The entry point, in a fresh interpreter.
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-m", "keras_sit.evaluation", "--help"], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0 and "usage: python -m keras_sit.evaluation" in done.stdout
    assert "--inception" in done.stdout and "--save-stats" in done.stdout


def test_unusable_inputs_are_refused_naming_them(data, capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    single = tmp_path / "single"
    save_images(single, {"only.png": data["photo_images"][0]})
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    stats = tmp_path / "stats.npz"
    np.savez(stats, mu=np.zeros(2048), sigma=np.eye(2048))
    small_stats = tmp_path / "small_stats.npz"
    np.savez(small_stats, mu=np.zeros(64), sigma=np.eye(64))
    text = tmp_path / "images.txt"
    text.write_text("a list of images")
    photos, weights = data["photos"], ["--inception", data["weights"]]
    cases = [
        ([str(tmp_path / "missing"), photos, *weights], rf"first path: '{re.escape(str(tmp_path))}/missing' does not"),
        ([photos, str(empty), *weights], "second path: no images .* in the folder .*empty"),
        ([photos, str(text), *weights], "second path: .*images.txt' is neither a folder of images nor an .npz"),
        ([photos, str(other), *weights], "second path: .*other.npz' is not a statistics or images .npz"),
        ([photos, str(small_stats), *weights], "second path: .*small_stats.npz' holds statistics of 64-d features"),
        ([str(single), photos, *weights], "first path: FID needs at least 2 images; .*single' has 1 image"),
        ([photos, str(stats), "--kid", *weights], "second path: --kid needs at least 2 images; .*stats.npz' has no"),
        ([str(stats), photos, "--isc", *weights], "first path: --isc needs at least one image; .*stats.npz' has no"),
        ([photos, photos, "--inception", str(tmp_path / "none.pth")], "--inception: .*none.pth' is not a file"),
        ([photos, photos, "--inception", str(text)], "--inception: .*images.txt' cannot be read"),
        (["--save-stats", photos, str(tmp_path / "out.npz"), "--kid", *weights], "does not take --kid"),
        ([photos, photos, "--batch-size", "0", *weights], "--batch-size: .*positive integer"),
        ([photos, *weights], "the following arguments are required|expected 2 arguments"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        error = capsys.readouterr().err
        assert re.search(message, error), (message, error)

    # An unreadable image is found while reading, after the network is loaded: still named, with no traceback.
    broken = tmp_path / "broken"
    save_images(broken, {"b.png": data["photo_images"][1]})
    (broken / "a.png").write_text("not a PNG")
    with pytest.raises(SystemExit):
        main([str(broken), photos, *weights])
    assert re.search(r"first path: .*a\.png' cannot be read as an image", capsys.readouterr().err)
