"""The example scripts run end to end (one short epoch) and write what they promise."""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

import keras_sit
from tests.conftest import run_without

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
SCRIPTS = ("train", "sample", "train_latent", "sample_official", "evaluate")


def other_backend():
    """A backend other than TensorFlow to run without TensorFlow: this run's, or JAX on the TensorFlow run."""
    return "jax" if keras.backend.backend() == "tensorflow" else keras.backend.backend()


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_with_one_framework_and_no_backend_set(script, tmp_path):
    """With Keras' default (TensorFlow) missing and nothing set, the examples still start: keras_sit picks one."""
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "tensorflow"}))  # what Keras writes by default
    only = other_backend()
    blocked = [name for name in ("jax", "tensorflow", "torch") if name != only]
    result = run_without(blocked, os.path.join(EXAMPLES, f"{script}.py"), "--help", keras_home=tmp_path, timeout=300)
    assert "usage:" in result.stdout and f"examples/{script}.py" in result.stdout


def test_train_on_an_image_folder_without_tensorflow(tmp_path):
    """`--data DIR` reads the folder with Pillow: it trains and samples with TensorFlow not importable."""
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(4):
            size = (int(rng.integers(10, 20)), int(rng.integers(10, 20)))  # images of several sizes and shapes
            Image.fromarray(rng.integers(0, 256, (*size, 3)).astype("uint8")).save(
                tmp_path / "data" / name / f"{i}.png"
            )
    out = tmp_path / "out"
    args = ["--data", str(tmp_path / "data"), "--image-size", "8", "--epochs", "1", "--batch-size", "4",
            "--sampling-steps", "2", "--output-dir", str(out)]  # fmt: skip
    result = run_without(["tensorflow"], os.path.join(EXAMPLES, "train.py"), *args, keras_home=tmp_path,
                         backend=other_backend())  # fmt: skip
    assert "read 8 images of 2 classes" in result.stdout
    assert Image.open(out / "samples.png").size[1] > 0 and (out / "sit.keras").stat().st_size > 0


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FEW_DIGITS = 320  # every class (about 32 each); a fifth held out, 256 to train on: 4 full batches of 64


def train_on_few_digits():
    """examples/train.py on the first `FEW_DIGITS` of scikit-learn's 1,797 digits, through its own loader.

    One epoch is then 4 steps instead of 23, and the digit classifier behind the digits FD trains its 30 epochs
    on 256 digits, which keeps these tests short; what they check (the files, the figures printed, ten rows of
    samples) does not depend on the count.
    """
    train = load("train")  # a fresh module: the replaced loader stays in this test
    load_all = train.load_digits_dataset

    def load_few():
        images, labels, class_names = load_all()
        assert len(class_names) == 10 and len(np.unique(labels[:FEW_DIGITS])) == 10
        return images[:FEW_DIGITS], labels[:FEW_DIGITS], class_names

    train.load_digits_dataset = load_few
    return train


def test_train_a_mean_flow_model_with_one_and_two_step_figures(tmp_path, capsys):
    train_on_few_digits().main(["--epochs", "1", "--output-dir", str(tmp_path), "--mean-flow", "--quality-every",
                                "1", "--quality-steps", "1", "2", "--quality-samples", "40"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "objective=MeanFlow" in printed
    assert "digits FD at 1 steps" in printed and "digits FD at 2 steps" in printed
    model = keras.saving.load_model(tmp_path / "sit.keras", safe_mode=True)
    assert isinstance(model.objectives[0], keras_sit.MeanFlow)
    assert Image.open(tmp_path / "samples.png").size[1] > 0


def test_train_then_sample(tmp_path):
    train_on_few_digits().main(["--epochs", "1", "--output-dir", str(tmp_path), "--sampling-steps", "2",
                                "--quality-every", "1", "--quality-samples", "40"])  # fmt: skip
    for name in ("sit.keras", "samples.png", "loss.png"):
        assert (tmp_path / name).stat().st_size > 0
    loss = Image.open(tmp_path / "loss.png")
    assert loss.size[0] >= 2.5 * loss.size[1]  # the loss and the digits FD side by side
    grid = Image.open(tmp_path / "samples.png")
    assert grid.size[1] > grid.size[0] * 0.9  # ten rows of ten tiles
    load("sample").main(
        [
            str(tmp_path / "sit.keras"),
            "--labels",
            "3",
            "7",
            "--per-label",
            "4",
            "--steps",
            "2",
            "--sampler",
            "heun",
            "--output",
            str(tmp_path / "grid.png"),
        ]
    )
    assert Image.open(tmp_path / "grid.png").size[0] > Image.open(tmp_path / "grid.png").size[1]  # 2 rows of 4


def test_sample_writes_under_outputs_by_default(tmp_path, monkeypatch):
    import keras_sit

    model = keras_sit.SiT(input_shape=(4, 4, 1), patch_size=2, hidden_size=8, depth=1, num_heads=2, num_classes=2)
    model.save(tmp_path / "sit.keras")
    monkeypatch.chdir(tmp_path)
    load("sample").main([str(tmp_path / "sit.keras"), "--per-label", "2", "--steps", "1"])
    assert (tmp_path / "outputs" / "samples.png").stat().st_size > 0
    assert not (tmp_path / "samples.png").exists()


def diffusers_autoencoder(directory):
    """A tiny Stable Diffusion style autoencoder with random weights, saved as users download one."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    blocks = dict(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    vae = AutoencoderKL(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4, **blocks)
    vae.save_pretrained(directory)  # config.json and diffusion_pytorch_model.safetensors
    return directory


def test_train_latent_and_sample_official(tmp_path):
    import numpy as np
    import torch

    import keras_sit

    rng = np.random.default_rng(0)
    for label in range(2):
        (tmp_path / "images" / f"class_{label}").mkdir(parents=True)
        for i in range(3):
            picture = rng.integers(0, 256, (20, 18, 3)).astype("uint8")
            Image.fromarray(picture).save(tmp_path / "images" / f"class_{label}" / f"{i}.png")
    vae = str(diffusers_autoencoder(tmp_path / "vae"))
    out = tmp_path / "latent"
    load("train_latent").main([
        "--data", str(tmp_path / "images"), "--vae", vae, "--image-size", "16", "--preset", "SiT-S/2",
        "--depth", "1", "--hidden-size", "16", "--num-heads", "2", "--epochs", "2", "--batch-size", "4",
        "--sampling-steps", "2", "--per-class", "3", "--output-dir", str(out),
    ])  # fmt: skip
    for name in ("latent_sit.keras", "samples.png", "loss.png", "cache/cache.json"):
        assert (out / name).stat().st_size > 0
    assert Image.open(out / "samples.png").size[0] > Image.open(out / "samples.png").size[1]  # 2 rows of 3

    # An official-format checkpoint (random weights, the official keys and shapes) of a small SiT.
    sit = keras_sit.SiT(input_shape=(8, 8, 4), patch_size=2, hidden_size=384, depth=1, num_heads=6, num_classes=1000,
                        learn_sigma=True, seed=0)  # fmt: skip
    state = {key: torch.from_numpy(value) for key, value in keras_sit.export_official_state_dict(sit).items()}
    torch.save(state, tmp_path / "SiT-tiny.pt")
    load("sample_official").main([
        "--checkpoint", str(tmp_path / "SiT-tiny.pt"), "--vae", vae, "--labels", "207", "360", "387", "974",
        "--sampler", "euler", "--steps", "2", "--output", str(tmp_path / "official.png"),
    ])  # fmt: skip
    assert Image.open(tmp_path / "official.png").size == (2 * 18 * 14, 2 * 18 * 14)  # 2 x 2 tiles of 16 px


def test_train_latent_with_repa_from_a_folder_to_pictures(tmp_path):
    """Folder -> cache with latents and DINOv2 tokens -> fit with alignment -> .keras -> generate -> PNG."""
    import numpy as np
    from transformers import Dinov2Config, Dinov2Model

    from keras_sit.latents import LatentDataset
    from keras_sit.objectives import RepresentationAlignment
    from tests.test_dinov2 import TINY, randomized

    rng = np.random.default_rng(0)
    for label in range(2):
        (tmp_path / "images" / f"class_{label}").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3)).astype("uint8")).save(
                tmp_path / "images" / f"class_{label}" / f"{i}.png"
            )
    vae = str(diffusers_autoencoder(tmp_path / "vae"))
    randomized(Dinov2Model(Dinov2Config(**TINY, image_size=28)), 0).save_pretrained(tmp_path / "dinov2")
    out = tmp_path / "latent"
    load("train_latent").main([
        "--data", str(tmp_path / "images"), "--vae", vae, "--image-size", "16", "--preset", "SiT-S/2",
        "--depth", "2", "--hidden-size", "16", "--num-heads", "2", "--epochs", "2", "--batch-size", "4",
        "--sampling-steps", "2", "--per-class", "2", "--output-dir", str(out), "--repa", str(tmp_path / "dinov2"),
        "--repa-depth", "1", "--normalize-latents", "--clipnorm", "1.0",
    ])  # fmt: skip
    assert Image.open(out / "samples.png").size[1] > 0 and (out / "loss.png").stat().st_size > 0
    dataset = LatentDataset(out / "cache", batch_size=4, features=True, normalize=True)  # as the model was trained
    assert dataset.feature_shapes == {"features": (16, 64)}  # a 4x4 grid of SiT tokens: DINOv2 at 56 px

    model = keras.saving.load_model(out / "latent_sit.keras", safe_mode=True)
    alignment = model.objectives[1]
    assert isinstance(alignment, RepresentationAlignment) and alignment.teachers is None
    assert (alignment.depth, alignment.feature_dims) == (1, (64,))
    assert alignment.weights and not any(np.all(keras.ops.convert_to_numpy(w) == 0) for w in alignment.weights)
    np.testing.assert_allclose(model.latent_mean, dataset.statistics["channel_mean"], rtol=1e-6)
    # The loaded model goes on training from the cache, and samples pictures.
    model.compile(optimizer="adam")
    history = model.fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["alignment"][0])
    images = model.generate(2, labels=[0, 1], num_steps=2, seed=0)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8


def test_evaluate_a_saved_latent_sit(tmp_path):
    import json

    import numpy as np
    import torch

    import keras_sit
    from keras_sit.convert import import_autoencoder
    from keras_sit.evaluation import write_reference_batch
    from tests.test_inception import random_reference

    vae = import_autoencoder(diffusers_autoencoder(tmp_path / "vae"))
    model = keras_sit.LatentSiT(autoencoder=vae, image_size=16, patch_size=2, hidden_size=16, depth=1, num_heads=2,
                                num_classes=3, seed=0)  # fmt: skip
    model.save(tmp_path / "latent_sit.keras")
    torch.save(random_reference().state_dict(), tmp_path / "inception.pth")
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3)).astype("uint8")
    write_reference_batch(tmp_path / "reference.npz", np.zeros(2048), np.eye(2048), images=images)
    out = tmp_path / "evaluation"
    load("evaluate").main([
        "--model", str(tmp_path / "latent_sit.keras"), "--inception", str(tmp_path / "inception.pth"),
        "--reference", str(tmp_path / "reference.npz"), "--num-samples", "5", "--batch-size", "5", "--steps", "2",
        "--output-dir", str(out), "--adm-npz",
    ])  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert {"fid", "inception_score", "precision", "recall"} <= set(results) and results["fid"] > 0
    assert 0.0 <= results["precision"] <= 1.0 and np.load(out / "samples.npz")["arr_0"].shape == (5, 16, 16, 3)
