"""Image grids and loss plots."""

import numpy as np
import pytest
from PIL import Image

from keras_sit.visualization import image_grid, plot_losses, save_image_grid


def test_grid_places_images_row_by_row_with_grey_padding():
    images = np.stack([np.full((2, 3, 1), v) for v in (-1.0, 0.0, 1.0, 0.5, -0.5, 2.0)]).astype("float32")
    grid = image_grid(images, rows=2, pad=1)
    assert grid.shape == (2 * 4, 3 * 5, 1) and grid.dtype == np.uint8
    tile = lambda r, c: grid[r * 4 + 1 : r * 4 + 3, c * 5 + 1 : c * 5 + 4, 0]  # noqa: E731
    expected = [[0, 128, 255], [191, 64, 255]]  # (v + 1) * 127.5, rounded; 2.0 is clipped to 1
    for r in range(2):
        for c in range(3):
            assert np.all(tile(r, c) == expected[r][c])
    assert np.all(grid[0] == 128) and np.all(grid[:, 0] == 128)  # padding


def test_uint8_images_are_read_as_0_to_255_and_floats_by_value_range(tmp_path):
    """`LatentSiT.generate`'s uint8 pictures and `SiT.generate`'s floats render without arguments."""
    pixels = np.array([0, 64, 200, 255], "uint8").reshape(4, 1, 1, 1).repeat(3, axis=-1)
    np.testing.assert_array_equal(image_grid(pixels, rows=1, pad=0)[0, :, 0], [0, 64, 200, 255])
    np.testing.assert_array_equal(image_grid(pixels, rows=1, pad=0, value_range=(0, 255)), image_grid(pixels, 1, 0))
    floats = pixels.astype("float32") / 127.5 - 1.0  # the same pictures in [-1, 1]
    np.testing.assert_array_equal(image_grid(floats, rows=1, pad=0), image_grid(pixels, rows=1, pad=0))
    unit = pixels.astype("float32") / 255.0
    np.testing.assert_array_equal(image_grid(unit, rows=1, pad=0, value_range=(0, 1)), image_grid(pixels, 1, 0))
    save_image_grid(pixels, tmp_path / "grid.png", min_height=1)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "grid.png"))[1, 1::3, 0], [0, 64, 200, 255])


def test_save_image_grid_scales_small_images_up(tmp_path):
    images = np.zeros((4, 8, 8, 3), "float32")
    save_image_grid(images, tmp_path / "grid.png", rows=2, min_height=100)
    # A 2 x 2 grid of 10 x 10 tiles, scaled by 100 // 20 = 5.
    assert Image.open(tmp_path / "grid.png").size == (100, 100)
    with pytest.raises(ValueError, match="`rows`"):
        save_image_grid(images, tmp_path / "bad.png", rows=3)
    with pytest.raises(ValueError, match="`images` must be"):
        save_image_grid(images[0], tmp_path / "bad.png")


def test_plot_losses_writes_a_png(tmp_path):
    plot_losses({"loss": [1.0, 0.5, 0.25], "val_loss": [1.1, 0.6, 0.3], "lr": [1e-3] * 3}, tmp_path / "loss.png")
    assert Image.open(tmp_path / "loss.png").format == "PNG"


def test_plot_losses_with_a_quality_panel_is_wider(tmp_path):
    plot_losses({"loss": [1.0, 0.5]}, tmp_path / "one.png")
    plot_losses({"loss": [1.0, 0.5]}, tmp_path / "two.png", metrics={"fid": {1: 30.0, 2: 20.0}})
    assert Image.open(tmp_path / "two.png").size[0] == 2 * Image.open(tmp_path / "one.png").size[0]
