"""Pictures of samples and training curves.

`save_image_grid` writes a batch of images as one PNG, a row per class (or
any grouping); `plot_losses` writes a `fit` history's curves. Pillow and
Matplotlib are imported when called (the `examples` extra installs them),
so the library itself does not depend on them.
"""

import numpy as np

from keras_sit.validation import check_pair, check_positive_int


def to_uint8(images):
    """Images in [-1, 1] (floats, clipped) to uint8 0..255; uint8 images pass through."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return np.round((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype("uint8")


def to_float(images):
    """uint8 images 0..255 to float32 in [-1, 1]; float images pass through."""
    images = np.asarray(images)
    return images.astype("float32") / 127.5 - 1.0 if images.dtype == np.uint8 else images


def to_rgb(images):
    """One-channel images `[..., 1]` repeated to three channels; others pass through."""
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def image_grid(images, rows, pad=1, value_range=None):
    """`[N, H, W, C]` images as one uint8 array `[rows * (H + 2 pad), N / rows * (W + 2 pad), C]`.

    One rule for every caller: uint8 images are read as 0..255, float
    images by `value_range` (default `(-1, 1)`, the data range of `SiT`),
    clipped to it and mapped onto 0..255. So `LatentSiT.generate`'s uint8
    pictures and `SiT.generate`'s floats both render as they are. Images
    fill the grid row by row; tiles are separated by `pad` grey pixels.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"`images` must be [N, height, width, channels]; got shape {images.shape}.")
    if images.shape[-1] not in (1, 3):
        raise ValueError(f"`images` must have 1 (grey) or 3 (RGB) channels; got shape {images.shape}.")
    check_positive_int("rows", rows)
    if len(images) % rows:
        raise ValueError(f"`rows` ({rows}) must divide the number of images ({len(images)}).")
    if images.dtype == np.uint8:
        if value_range is not None and tuple(value_range) != (0, 255):
            raise ValueError(
                f"`value_range` {value_range!r} does not apply to uint8 `images`, which are read as 0..255; "
                "pass float images to use another range."
            )
        tiles = images
    elif np.issubdtype(images.dtype, np.floating):
        low, high = check_pair("value_range", (-1.0, 1.0) if value_range is None else value_range, strict=True)
        if not np.all(np.isfinite(images)):
            raise ValueError("`images` hold NaN or Inf values; they have no colour to draw.")
        tiles = np.round((np.clip(images, low, high) - low) / (high - low) * 255.0).astype("uint8")
    else:
        raise TypeError(f"`images` must be uint8 (0..255) or floats (in `value_range`); got dtype {images.dtype}.")
    height, width, channels = tiles.shape[1:]
    tiles = np.pad(tiles, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=128)
    tile_height, tile_width = height + 2 * pad, width + 2 * pad
    grid = tiles.reshape(rows, -1, tile_height, tile_width, channels).transpose(0, 2, 1, 3, 4)
    return grid.reshape(rows * tile_height, -1, channels)


def save_image_grid(images, path, rows=1, pad=1, value_range=None, min_height=512):
    """Write `images` (`[N, H, W, C]`, C = 1 or 3) as a PNG grid of `rows` rows.

    uint8 images are read as 0..255 and float images by `value_range`
    (default `(-1, 1)`), as in `image_grid`: `LatentSiT.generate`'s uint8
    pictures and `SiT.generate`'s floats in [-1, 1] need no argument. Small
    images are scaled up by an integer factor (nearest neighbour) until the
    grid is at least `min_height` pixels tall, so 8x8 digits stay visible.
    """
    from PIL import Image

    grid = image_grid(images, rows, pad, value_range)
    image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    scale = max(1, min_height // grid.shape[0])
    image.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)


def plot_losses(history, path, title=None, metrics=None):
    """Plot every loss curve of a `fit` history (`History.history` or the dict) to `path`.

    `metrics` (`{name: {epoch: value}}`, e.g. `FrechetDistance.values`) adds a
    second panel beside the losses, for figures measured every few epochs.
    """
    history = getattr(history, "history", history)
    if not isinstance(history, dict):
        raise TypeError(f"`history` must be a keras History or its dict of losses; got {type(history).__name__}.")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if metrics else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0, 0]
    for name, values in history.items():
        if name.endswith("loss"):
            ax.plot(np.arange(1, len(values) + 1), values, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    if title:
        ax.set_title(title)
    if metrics:
        ax = axes[0, 1]
        for name, values in metrics.items():
            epochs = sorted(values)
            ax.plot(epochs, [values[e] for e in epochs], marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("sample quality (lower is better)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
