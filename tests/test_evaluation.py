"""Sampling for evaluation (chunked, resumable, streamed statistics) and the quality callbacks."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from PIL import Image

from keras_sit.callbacks import FrechetDistance, SampleGrid
from keras_sit.evaluation.metrics import FeatureStatistics, frechet_distance
from keras_sit.evaluation.reference_batches import read_samples
from keras_sit.evaluation.runner import EvaluationSamples, balanced_labels, generate_for_evaluation
from keras_sit.visualization import to_uint8
from tests.conftest import randomize, tiny_sit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECTION = np.random.default_rng(7).normal(size=(4 * 4 * 3, 6))


def projection_features(images):
    """A cheap fixed feature extractor: a random projection of the pixels, and its square."""
    flat = images.reshape(len(images), -1).astype("float64") / 255.0
    return {"pool": flat @ PROJECTION, "logits": np.square(flat @ PROJECTION[:, :3])}


def rgb_model(rng):
    model = tiny_sit(input_shape=(4, 4, 3), num_classes=3)
    randomize(model, rng)
    return model


def test_balanced_labels_and_uint8():
    labels = balanced_labels(10, 3, seed=0)
    assert sorted(np.bincount(labels)) == [3, 3, 4] and labels.dtype == np.int32
    assert not np.array_equal(labels, np.arange(10) % 3)  # shuffled
    np.testing.assert_array_equal(to_uint8(np.array([-1.0, 0.0, 1.0, 2.0])), [0, 128, 255, 255])


def test_chunks_hold_images_labels_features_and_give_the_statistics(tmp_path, rng):
    model = rgb_model(rng)
    samples = generate_for_evaluation(model, tmp_path, num_samples=10, batch_size=4, num_steps=2,
                                      feature_extractor=projection_features, verbose=0)  # fmt: skip
    assert samples.num_chunks == 3 and sorted(np.bincount(samples.labels())) == [3, 3, 4]
    images = np.concatenate([chunk["images"] for chunk in samples.chunks()])
    assert images.shape == (10, 4, 4, 3) and images.dtype == np.uint8
    np.testing.assert_allclose(samples.features("pool"), projection_features(images)["pool"], rtol=1e-5, atol=1e-6)
    streamed = samples.statistics("pool")
    whole = samples.features("pool").astype("float64")
    np.testing.assert_allclose(streamed.mean, whole.mean(0), rtol=1e-10)
    np.testing.assert_allclose(streamed.covariance, np.cov(whole, rowvar=False), rtol=1e-9, atol=1e-12)
    # Each chunk is what `generate` draws with the chunk's seed and labels.
    first = next(samples.chunks())
    expected = to_uint8(model.generate(4, labels=first["labels"], seed=0, num_steps=2))
    np.testing.assert_array_equal(first["images"], expected)
    samples.write_adm_npz(tmp_path / "samples.npz")
    adm_images, _ = read_samples(tmp_path / "samples.npz")
    np.testing.assert_array_equal(adm_images, images)
    with pytest.raises(ValueError, match="No feature 'spatial'"):
        samples.statistics("spatial")
    with pytest.raises(ValueError, match="other settings"):
        generate_for_evaluation(model, tmp_path, num_samples=10, batch_size=4, num_steps=3, verbose=0)
    with pytest.raises(ValueError, match="`labels` is chosen by the runner"):
        generate_for_evaluation(model, tmp_path / "other", num_samples=10, labels=[0] * 10)


RUNNER = """
import sys, time
import keras
import keras_sit
from keras_sit.evaluation.runner import generate_for_evaluation
from tests.test_evaluation import projection_features

def slow(images):
    time.sleep(1.0)
    return projection_features(images)

model = keras.saving.load_model(sys.argv[1])
generate_for_evaluation(model, sys.argv[2], num_samples=12, batch_size=3, num_steps=2, feature_extractor=slow,
                        verbose=0)
"""


def test_killed_runner_resumes_to_the_same_samples(tmp_path, rng):
    model = rgb_model(rng)
    model.save(tmp_path / "sit.keras")
    resumed = tmp_path / "resumed"
    process = subprocess.Popen([sys.executable, "-c", RUNNER, str(tmp_path / "sit.keras"), str(resumed)], cwd=ROOT,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})  # fmt: skip
    deadline = time.time() + 300
    while not (resumed / "chunk-00001.npz").exists():  # two of four chunks done
        assert process.poll() is None and time.time() < deadline, "the runner ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (resumed / "chunk-00003.npz").exists()
    with pytest.raises(ValueError, match="unfinished"):
        EvaluationSamples(resumed)
    options = dict(num_samples=12, batch_size=3, num_steps=2, feature_extractor=projection_features, verbose=0)
    loaded = keras.saving.load_model(tmp_path / "sit.keras")
    after = generate_for_evaluation(loaded, resumed, **options)
    fresh = generate_for_evaluation(loaded, tmp_path / "fresh", **options)
    for ours, theirs in zip(after.chunks(), fresh.chunks()):
        assert sorted(ours) == sorted(theirs)
        for name in ours:
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    a, b = after.statistics(), fresh.statistics()
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.covariance, b.covariance)
    assert json.loads((resumed / "samples.json").read_text()) == json.loads(
        (tmp_path / "fresh" / "samples.json").read_text()
    )


def test_sample_grid_and_frechet_distance_during_fit(tmp_path, rng):
    model = rgb_model(rng)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images = rng.uniform(-1, 1, (12, 4, 4, 3)).astype("float32")
    labels = rng.integers(0, 3, 12).astype("int32")
    grid = SampleGrid(str(tmp_path / "grid_{epoch}.png"), per_class=2, every=2, num_steps=2)
    distance = FrechetDistance(images, lambda x: projection_features(x)["pool"], num_samples=12, every=1, num_steps=2)
    history = model.fit(images, labels, batch_size=6, epochs=2, verbose=0, callbacks=[grid, distance]).history
    assert sorted(os.listdir(tmp_path)) == ["grid_2.png"]
    assert Image.open(tmp_path / "grid_2.png").size[1] > 0
    assert len(history["fid"]) == 2 and history["fid"] == [distance.values[1], distance.values[2]]
    # The logged value is the Frechet distance of the features, computed independently here.
    real = projection_features(to_uint8(images))["pool"]
    fake = projection_features(to_uint8(model.generate(12, labels=balanced_labels(12, 3, 0), seed=0, num_steps=2)))
    expected = frechet_distance(real.mean(0), np.cov(real, rowvar=False), fake["pool"].mean(0),
                                np.cov(fake["pool"], rowvar=False))  # fmt: skip
    assert history["fid"][-1] == pytest.approx(expected, rel=1e-6)
    assert FeatureStatistics.from_features(real).count == 12
    with pytest.raises(ValueError, match="`path` must contain"):
        SampleGrid(str(tmp_path / "grid.png"))
    with pytest.raises(TypeError, match="`feature_extractor` must be callable"):
        FrechetDistance(images, feature_extractor="inception")
