"""Image sources: files and arrays of pictures as uint8 RGB, prepared as the field prepares ImageNet.

- `read_image` decodes a file whole with Pillow and converts any mode to
  8-bit RGB (`to_rgb`: 16-bit greyscale is scaled, not clipped; float and
  out-of-range 32-bit integer pixels, whose scale is unknown, are refused);
  a file that does not decode raises an `UnreadableImageError` naming it.
- `center_crop` is ADM's (and DiT's and SiT's) preparation of a picture at
  a square size.
- `ImageFolder` (class sub-folders) and `ArrayImages` (arrays in memory)
  give `(uint8 [S, S, 3] image, label)` pairs, the source that
  `keras_sit.latents.write_latent_cache` encodes and `examples/train.py`
  trains on; the evaluation command line reads its folders with
  `read_image` too.

Pillow is imported when an image is read, so importing this module needs
only NumPy.
"""

import os

import numpy as np

from keras_sit.validation import check_positive_int

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# Greyscale with more than 8 bits (16-bit PNG and TIFF open as these): values in 0..65535.
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class UnreadableImageError(ValueError):
    """An image file that does not decode (truncated, corrupt, not an image). `path` names it."""

    def __init__(self, path, reason):
        super().__init__(f"Could not read the image {path!r}: {reason}")
        self.path, self.reason = path, reason

    def __reduce__(self):  # pickles (to and from worker processes) with both arguments
        return type(self), (self.path, self.reason)


def to_rgb(image):
    """A `PIL.Image` of any mode as 8-bit RGB.

    Pillow's own conversion serves the 8-bit modes: palette (`P`, `PA`),
    greyscale (`L`, `LA`, `La`), 1-bit (`1`: black and white), CMYK,
    YCbCr, LAB, HSV and RGB with alpha (`RGBA`, `RGBa`, `RGBX`: the alpha
    is dropped). Greyscale wider than 8 bits (`I;16*`, and `I`, which
    16-bit PNGs open as in some Pillow versions), which Pillow would clip
    at 255, is scaled from 0..65535 to 0..255 as `round(value / 257)`
    (65535 -> 255, 32896 -> 128, 128 -> 0). Refused with a `ValueError`:
    `I` images with values outside 0..65535 and float images (`F`), whose
    scale the file does not record (0..1? 0..255?), so that no guess draws
    them black or white.
    """
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise TypeError(f"`image` must be a PIL.Image; got {type(image).__name__}.")
    if image.mode == "F":
        raise ValueError(
            "`image` has 32-bit float pixels (mode 'F'), whose range (0..1 or 0..255) is not recorded; "
            "convert it to 8- or 16-bit first."
        )
    if image.mode in WIDE_GREY_MODES:
        values = np.asarray(image, dtype="float64")
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(
                f"`image` has integer pixels (mode {image.mode!r}) in [{values.min():.0f}, {values.max():.0f}], "
                "outside the 16-bit range 0..65535 that is scaled to 0..255."
            )
        grey = np.round(values / 257.0).astype("uint8")
        return Image.fromarray(grey).convert("RGB")  # uint8 [H, W]: mode "L"
    if image.mode == "La":  # premultiplied alpha: Pillow converts it to LA only
        image = image.convert("LA")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ValueError(f"`image` of mode {image.mode!r} cannot be converted to RGB: {error}") from error


def read_image(path):
    """The image file `path`, decoded whole, as an RGB `PIL.Image` (see `to_rgb`).

    Raises a `FileNotFoundError` if there is no such file, and an
    `UnreadableImageError` (a `ValueError`) naming the file, with Pillow's
    error as its cause, if it is a folder or does not open, decode or
    convert to RGB (truncated, corrupt, not an image, a float image).
    """
    from PIL import Image

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a path to an image file (str or os.PathLike); got {type(path).__name__}.")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No image file at `path` {path!r}.")
    if os.path.isdir(path):
        raise UnreadableImageError(path, "it is a folder, not an image file")
    try:
        with Image.open(path) as image:
            image.load()  # decode every pixel now: a truncated file fails here, not later
            return to_rgb(image)
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError, ... on bad files
        raise UnreadableImageError(path, f"{type(error).__name__}: {error}") from error


def center_crop(image, image_size):
    """ADM's center crop of a `PIL.Image` to `image_size` x `image_size`, as uint8 `[H, W, 3]`.

    Box-downsample by 2 while the short side is at least twice the target
    (fast and alias-free), resize bicubically so the short side is the
    target, then cut the center square.
    """
    from PIL import Image

    check_positive_int("image_size", image_size)
    image = to_rgb(image)
    if min(image.size) == 0:
        raise ValueError(f"`image` has no pixels: its size is {image.size}.")
    while min(image.size) >= 2 * image_size:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = image_size / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    array = np.asarray(image)
    top, left = (array.shape[0] - image_size) // 2, (array.shape[1] - image_size) // 2
    return array[top : top + image_size, left : left + image_size]


class ImageFolder:
    """Images in class sub-folders (`root/<class>/<image>`), as `(uint8 [S, S, 3], label)` pairs.

    Classes are the sub-folders in sorted order, labels their indices, and
    the images of a class are taken in sorted order, so the same folder
    always gives the same sequence. Each image is read whole by `read_image`
    (any Pillow mode, converted to RGB) and prepared by `center_crop`; a file
    that does not decode raises an `UnreadableImageError` naming it, which
    `write_latent_cache(..., on_error="skip")` skips. `find_unreadable()`
    lists such files up front.
    """

    def __init__(self, root, image_size):
        check_positive_int("image_size", image_size)
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"`root` must be a path to a folder (str or os.PathLike); got {type(root).__name__}.")
        if not os.path.isdir(root):
            raise ValueError(f"`root` must be a folder of class sub-folders; {root!r} is not a folder.")
        self.root = os.fspath(root)
        self.image_size = int(image_size)
        self.class_names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        self.files = [
            (os.path.join(root, name, file), label)
            for label, name in enumerate(self.class_names)
            for file in sorted(os.listdir(os.path.join(root, name)))
            if file.lower().endswith(IMAGE_SUFFIXES)
        ]
        if not self.files:
            raise ValueError(f"`root` {root!r} holds no images in class sub-folders ({', '.join(IMAGE_SUFFIXES)}).")

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        path, label = self.files[index]
        return center_crop(read_image(path), self.image_size), label

    def find_unreadable(self):
        """The files that do not decode, as `[(path, reason)]`; reads every image once."""
        unreadable = []
        for path, _ in self.files:
            try:
                read_image(path)
            except UnreadableImageError as error:
                unreadable.append((path, error.reason))
        return unreadable


class ArrayImages:
    """Images already at their size, `uint8 [N, S, S, 3]` (N >= 1), with optional labels `[N]`.

    `labels` are class indices >= 0 (`__getitem__` gives -1 without them);
    `class_names`, if given, is a list of strings with a name for every
    label.
    """

    def __init__(self, images, labels=None, class_names=None):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"`images` must be square RGB images [N, S, S, 3]; got shape {images.shape}.")
        if images.dtype != np.uint8:
            raise TypeError(f"`images` must be uint8 (0..255); got dtype {images.dtype}.")
        if images.shape[0] == 0 or images.shape[1] == 0:
            raise ValueError(f"`images` must hold at least one image of at least 1x1 pixels; got shape {images.shape}.")
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (len(images),):
                raise ValueError(f"`labels` must be {len(images)} integer class indices; got {labels.shape}.")
            if not np.issubdtype(labels.dtype, np.integer):
                raise TypeError(f"`labels` must be integer class indices; got dtype {labels.dtype}.")
            if labels.min() < 0:
                raise ValueError(
                    f"`labels` must be class indices >= 0 (for unlabelled images pass `labels=None`); "
                    f"got {labels.min()}."
                )
        if class_names is not None:
            if not isinstance(class_names, (list, tuple)) or not all(isinstance(n, str) for n in class_names):
                raise TypeError(f"`class_names` must be a list of strings; got {class_names!r}.")
            if labels is not None and labels.max() >= len(class_names):
                raise ValueError(
                    f"`class_names` must name every label: labels go up to {labels.max()}, "
                    f"but there are {len(class_names)} names."
                )
        self.images, self.labels = images, labels
        self.image_size = images.shape[1]
        self.class_names = class_names

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], -1 if self.labels is None else int(self.labels[index])
