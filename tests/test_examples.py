"""The example scripts run end to end (one short epoch) and write what they promise."""

import importlib.util
import os

from PIL import Image

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_then_sample(tmp_path):
    load("train").main(["--epochs", "1", "--output-dir", str(tmp_path), "--sampling-steps", "2"])
    for name in ("sit.keras", "samples.png", "loss.png"):
        assert (tmp_path / name).stat().st_size > 0
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
