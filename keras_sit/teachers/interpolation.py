"""PyTorch's bicubic interpolation as NumPy matrices, for resizes of static sizes.

A separable resize of an axis of length `n` to length `m` is the product with
an `[m, n]` matrix. The matrices here are the weights PyTorch's
`torch.nn.functional.interpolate(mode="bicubic", align_corners=False)` uses,
so a Keras model can resize with one `einsum` per axis (the same numbers on
every backend) and NumPy can resample weights at import time.
`keras.ops.image.resize(interpolation="bicubic")` is no substitute: without
antialiasing, on JAX and TensorFlow it interpolates with another cubic
kernel (Catmull-Rom, `a = -0.5`), and its results differ from PyTorch's by
up to 0.3 on unit-variance values (37 -> 16). The two matrices:

* `bicubic_matrix`: `antialias=False`, the resize REPA applies to the images
  before DINOv2. Keys' cubic convolution with `a = -0.75` at the source
  positions `(i + 0.5) * n / m - 0.5` (half-pixel centres), the four taps'
  indices clamped to the border (so the border pixel takes the weight of the
  taps beyond it).
* `antialiased_bicubic_matrix`: `antialias=True`, the resize timm's
  `resample_abs_pos_embed` applies to DINOv2's position embeddings. The
  cubic kernel (`a = -0.5`, Pillow's) is stretched by the downscaling factor
  `n / m` when `n > m`, only the taps inside the input are kept, and each
  row is normalised to sum to one.

The weights are computed in float64 from the source positions PyTorch
computes for a float32 input; PyTorch computes the weights themselves in
float32, so results agree to float32 rounding.
"""

import math

import numpy as np

KEYS_A = -0.75  # PyTorch's bicubic without antialiasing (as OpenCV)
ANTIALIAS_A = -0.5  # PyTorch's antialiased bicubic (as Pillow)
CUBIC_SUPPORT = 2.0  # the cubic kernel is non-zero on (-2, 2)


def _cubic(x, a):
    """Keys' cubic convolution kernel `W(x)` with parameter `a`, elementwise."""
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _check_sizes(input_size, output_size):
    for name, size in (("input_size", input_size), ("output_size", output_size)):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
            raise ValueError(f"`{name}` must be a positive int; got {size!r}.")


def bicubic_matrix(input_size, output_size):
    """`[output_size, input_size]` float64 weights of PyTorch's bicubic resize (no antialiasing) along one axis.

    Row `i` holds the weights of output `i`: the source position is
    `(i + 0.5) * input_size / output_size - 0.5`, its four neighbours
    `floor - 1 .. floor + 2` get Keys' weights (`a = -0.75`) of their
    distance, and neighbours outside the input are clamped onto its first or
    last index. Each row sums to one.
    """
    _check_sizes(input_size, output_size)
    # PyTorch computes the source positions of a float32 input in float32, `scale * (i + 0.5) - 0.5` as one fused
    # multiply-add: `scale` rounded to float32, the result rounded once. Exact positions would change the weights
    # by up to 7e-5 (measured from 256 to 1000 pixels), so they are rounded the same way here (the product of a
    # float32 and `i + 0.5` is exact in float64).
    scale = np.float64(np.float32(input_size) / np.float32(output_size))
    source = (scale * (np.arange(output_size) + 0.5) - 0.5).astype(np.float32)
    floor = np.minimum(np.floor(source), input_size - 1)
    fraction = np.clip(source - floor, 0.0, 1.0).astype(np.float64)
    matrix = np.zeros((output_size, input_size))
    rows = np.arange(output_size)
    for offset in (-1, 0, 1, 2):
        weights = _cubic(fraction - offset, KEYS_A)
        columns = np.clip(floor.astype(np.int64) + offset, 0, input_size - 1)
        np.add.at(matrix, (rows, columns), weights)
    return matrix


def antialiased_bicubic_matrix(input_size, output_size):
    """`[output_size, input_size]` float64 weights of PyTorch's bicubic resize with `antialias=True` along one axis.

    Output `i` is centred at `(i + 0.5) * scale` in input coordinates
    (`scale = input_size / output_size`); when downscaling (`scale > 1`)
    the cubic kernel (`a = -0.5`) is widened by `scale`, so every input
    sample within `2 * scale` contributes. The inputs from
    `int(centre - support + 0.5)` to `int(centre + support + 0.5)`, cut to
    the axis, are weighted by the kernel at `(j - centre + 0.5) / scale` and
    the row is divided by its sum, as PyTorch's separable antialiased kernel
    does. Upscaling uses the plain kernel width.
    """
    _check_sizes(input_size, output_size)
    # As in `bicubic_matrix`, the positions are rounded as PyTorch rounds them for a float32 input: `scale` and each
    # centre to float32, and a tap's offset from its centre computed in float32. Exact positions would change the
    # weights by up to 2e-5 at 256 -> 224.
    scale = np.float64(np.float32(input_size) / np.float32(output_size))
    support = CUBIC_SUPPORT * scale if scale >= 1.0 else CUBIC_SUPPORT
    inverse_scale = 1.0 / scale if scale >= 1.0 else 1.0
    centres = (scale * (np.arange(output_size) + 0.5)).astype(np.float32)
    matrix = np.zeros((output_size, input_size))
    for i, centre in enumerate(centres):
        first = max(math.trunc(float(centre) - support + 0.5), 0)
        stop = min(math.trunc(float(centre) + support + 0.5), input_size)
        offsets = np.arange(first, stop, dtype=np.float32) - centre
        weights = _cubic((offsets.astype(np.float64) + 0.5) * inverse_scale, ANTIALIAS_A)
        total = weights.sum()
        matrix[i, first:stop] = weights / total if total != 0.0 else weights
    return matrix


def resample_position_embeddings(position_embeddings, grid_size, num_prefix_tokens=1):
    """timm's `resample_abs_pos_embed`: a `[1, P + M*M, C]` table resampled to `[1, P + G*G, C]`, in NumPy.

    The first `num_prefix_tokens` rows (DINOv2's class token) are kept as
    they are; the `M x M` grid of the others is resized to
    `grid_size x grid_size` with PyTorch's antialiased bicubic
    (`antialiased_bicubic_matrix` along both axes). A table already of that
    size is returned unchanged, as timm does. REPA resamples DINOv2's 37x37
    table once, to 16x16, before feeding it 224x224 images.
    """
    table = np.asarray(position_embeddings)
    if table.ndim != 3 or table.shape[0] != 1:
        raise ValueError(f"`position_embeddings` must have shape (1, tokens, channels); got {table.shape}.")
    if isinstance(grid_size, bool) or not isinstance(grid_size, (int, np.integer)) or grid_size <= 0:
        raise ValueError(f"`grid_size` must be a positive int; got {grid_size!r}.")
    prefix, grid = table[:, :num_prefix_tokens], table[0, num_prefix_tokens:]
    old_size = math.isqrt(grid.shape[0])
    if old_size * old_size != grid.shape[0]:
        raise ValueError(
            f"`position_embeddings` must hold {num_prefix_tokens} prefix row(s) and a square grid; "
            f"got {grid.shape[0]} grid rows."
        )
    if old_size == grid_size:
        return table
    matrix = antialiased_bicubic_matrix(old_size, grid_size)
    grid = grid.reshape(old_size, old_size, -1).astype(np.float64)
    resized = np.einsum("ij,jkc,lk->ilc", matrix, grid, matrix)
    resized = resized.reshape(1, grid_size * grid_size, -1).astype(table.dtype)
    return np.concatenate([prefix, resized], axis=1)
