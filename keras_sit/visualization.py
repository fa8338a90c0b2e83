"""Pictures of samples and training curves.

`save_image_grid` writes a batch of images as one PNG, a row per class (or
any grouping); `plot_losses` writes a `fit` history's curves. Pillow and
Matplotlib are imported when called (the `examples` extra installs them),
so the library itself does not depend on them.
"""

import os

import numpy as np

from keras_sit.validation import check_pair, check_positive_int


def _check_pixels(images, high, name="images"):
    """Float `images` hold no NaN or Inf, and are not 8-bit pixels cast to float where `high` is their top.

    Whole numbers in 0..255 with some above `high` are pixels of 0..255 in a
    float array: clipping them to a range that ends at `high` would draw a
    blank. Model samples are never all whole numbers, so they pass.
    """
    if images.size == 0:
        return
    low_value, high_value = np.min(images), np.max(images)  # NaN propagates; Inf is an extreme
    if not (np.isfinite(low_value) and np.isfinite(high_value)):
        raise ValueError(f"`{name}` hold NaN or Inf values; they have no colour to draw.")
    if low_value >= 0 and high < high_value <= 255 and np.array_equal(images, np.round(images)):
        raise ValueError(
            f"`{name}` are floats of whole numbers in 0..255 (8-bit pixels cast to float), but are read in a range "
            f"that ends at {high:g}; pass them as uint8, or give `value_range=(0, 255)` where there is one."
        )


def to_uint8(images):
    """Images in [-1, 1] (floats, clipped) to uint8 0..255; uint8 images pass through.

    Float values beyond [-1, 1] (a sample's overshoot) are clipped. Refused:
    other dtypes (a `TypeError`: ints other than uint8 have no agreed
    range), NaN or Inf, and floats that are whole numbers in 0..255 (8-bit
    pixels cast to float, which clipping would turn white): a `ValueError`.
    """
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"`images` must be uint8 (0..255) or floats in [-1, 1]; got dtype {images.dtype}.")
    _check_pixels(images, 1.0)
    return np.round((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype("uint8")


def to_float(images):
    """uint8 images 0..255 to float32 in [-1, 1]; float images pass through (other dtypes: a `TypeError`)."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype("float32") / 127.5 - 1.0
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"`images` must be uint8 (0..255) or floats in [-1, 1]; got dtype {images.dtype}.")
    return images


def to_rgb(images):
    """Images `[..., C]` with C = 1 (repeated to three channels) or 3 (passed through) as RGB."""
    shape = np.shape(images)
    if len(shape) < 3 or shape[-1] not in (1, 3):
        raise ValueError(f"`images` must be [..., height, width, 1 or 3 channels]; got shape {shape}.")
    images = np.asarray(images)
    return np.repeat(images, 3, axis=-1) if shape[-1] == 1 else images


def _check_pad(pad):
    """An int >= 0 (NumPy ints included, bools not)."""
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)):
        raise TypeError(f"`pad` must be an int >= 0 (grey pixels around each tile); got {pad!r}.")
    if pad < 0:
        raise ValueError(f"`pad` must be an int >= 0 (grey pixels around each tile); got {pad!r}.")


def image_grid(images, rows, pad=1, value_range=None):
    """`[N, H, W, C]` images as one uint8 array `[rows * (H + 2 pad), N / rows * (W + 2 pad), C]`.

    One rule for every caller: uint8 images are read as 0..255, float
    images by `value_range` (default `(-1, 1)`, the data range of `SiT`),
    clipped to it and mapped onto 0..255. So `LatentSiT.generate`'s uint8
    pictures and `SiT.generate`'s floats both render as they are. Images
    fill the grid row by row; tiles are separated by `pad` grey pixels.
    Refused: an empty batch or size, 2 or 4 channels, other dtypes, NaN or
    Inf, and floats of whole numbers in 0..255 above `value_range` (8-bit
    pixels cast to float: pass those as uint8 or with `value_range=(0, 255)`).
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"`images` must be [N, height, width, channels]; got shape {images.shape}.")
    if images.shape[-1] not in (1, 3):
        raise ValueError(f"`images` must have 1 (grey) or 3 (RGB) channels; got shape {images.shape}.")
    if 0 in images.shape:
        raise ValueError(f"`images` must hold at least one image of at least 1x1 pixels; got shape {images.shape}.")
    check_positive_int("rows", rows)
    _check_pad(pad)
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
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError(f"`value_range` must be finite; got {value_range!r}.")
        _check_pixels(images, high)
        tiles = np.round((np.clip(images, low, high) - low) / (high - low) * 255.0).astype("uint8")
    else:
        raise TypeError(f"`images` must be uint8 (0..255) or floats (in `value_range`); got dtype {images.dtype}.")
    height, width, channels = tiles.shape[1:]
    tiles = np.pad(tiles, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=128)
    tile_height, tile_width = height + 2 * pad, width + 2 * pad
    grid = tiles.reshape(rows, -1, tile_height, tile_width, channels).transpose(0, 2, 1, 3, 4)
    return grid.reshape(rows * tile_height, -1, channels)


def _check_image_path(path):
    """`path` names a new or existing image file, in an existing folder, with a suffix Pillow writes."""
    from PIL import Image

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a file name (str or os.PathLike); got {type(path).__name__}.")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"`path` {path!r} is a folder; give the name of the image file to write, e.g. 'grid.png'.")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"The folder of `path` {path!r} does not exist; create {folder!r} first.")
    suffix = os.path.splitext(path)[1].lower()
    if Image.registered_extensions().get(suffix) not in Image.SAVE:
        problem = f"Pillow writes no {suffix!r} files" if suffix else "it has no suffix"
        raise ValueError(f"`path` {path!r} must end in an image suffix such as '.png'; {problem}.")


def save_image_grid(images, path, rows=1, pad=1, value_range=None, min_height=512):
    """Write `images` (`[N, H, W, C]`, C = 1 or 3) as an image grid of `rows` rows (a PNG for a `.png` path).

    uint8 images are read as 0..255 and float images by `value_range`
    (default `(-1, 1)`), as in `image_grid`, which refuses what it cannot
    draw (NaN, 2 channels, ...): `LatentSiT.generate`'s uint8 pictures and
    `SiT.generate`'s floats in [-1, 1] need no argument. Small images are
    scaled up by an integer factor (nearest neighbour) until the grid is at
    least `min_height` (a positive int) pixels tall, so 8x8 digits stay
    visible. `path` is a file in an existing folder, its suffix one Pillow
    writes (`.png`, `.jpg`, ...); everything is checked before it is written.
    """
    from PIL import Image

    _check_image_path(path)
    check_positive_int("min_height", min_height)
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
