"""Layouts of SiT over the devices of a JAX job with `keras.distribution`.

`keras.distribution` shards a model by the *paths* of its variables
(`blocks_0/attn/qkv/kernel`, ...), so a model needs a layout map that names
them. `sit_layout_map` is that map for SiT; `data_parallel` and
`model_parallel` build the distribution to pass to
`keras.distribution.set_distribution` (or to enter with `.scope()`)
*before* the model is created, since a variable takes its layout when it is
created:

    keras.distribution.set_distribution(keras_sit.distribution.model_parallel(2))
    model = keras_sit.SiT(...)
    model.compile(...)
    model.fit(...)  # the global batch is split over the "batch" mesh axis

Sharding changes where values live and which collectives XLA inserts, not
the maths: a distributed run computes the same losses, weights and samples
as a single-device run, up to float rounding.

This module imports on every backend, but in Keras 3.15 `keras.distribution`
is implemented for JAX only (TensorFlow has a prototype, PyTorch nothing),
so the constructors raise on other backends; `keras_sit.distribution.initialize`
joins processes on every backend (docs/distribution.md).
"""

import keras

from keras_sit.validation import check_number, check_positive_int

# Megatron-style tensor parallelism. Each pair of matmuls splits the hidden
# features between devices: the first is column-parallel (kernel and bias split
# on the output features), so the elementwise activation between them runs on
# local slices; the second is row-parallel (kernel split on the input
# features), so one all-reduce sums its partial outputs. Its bias is added once,
# after that sum, and stays replicated. The adaLN projections are single
# matmuls of the small conditioning vector; their kernels (D x 6D per block, a
# third of the block's weights) are split column-wise. Everything else
# (embeddings, the position table, norms, the final linear layer, the seed
# states) is small and replicated.
_COLUMN_PARALLEL = ("attn/qkv", "mlp/fc1", "adaLN_modulation")
_ROW_PARALLEL = ("attn/proj", "mlp/fc2")


def _path_pattern(suffix):
    """A regex for `suffix` at the end of a variable path, below any parent.

    Keras' `LayoutMap` full-matches its keys against variable paths; the
    optional prefix keeps the map valid for a SiT nested in a larger model,
    and the `/` stops `attn/qkv` from matching a layer named `my_attn/qkv`.
    """
    return f"(?:.*/)?{suffix}"


def sit_layout_map(device_mesh, model_axis="model"):
    """A `keras.distribution.LayoutMap` sharding SiT's matmuls on `model_axis`.

    | variable path (suffix)                    | layout                                   |
    |-------------------------------------------|------------------------------------------|
    | `attn/qkv`, `mlp/fc1`, `adaLN_modulation` | kernel `(None, model)`, bias `(model,)`  |
    | `attn/proj`, `mlp/fc2`                    | kernel `(model, None)`, bias replicated  |
    | anything else                             | replicated                               |

    Optimizer slots (momentum, Adam moments, EMA copies) are created with
    their variable's layout, so they are split the same way. The fused `qkv` columns are the q, k and v
    blocks one after the other, so a column shard does not hold whole heads:
    XLA moves activations between devices before attention. The results are
    the same; only the communication differs.

    Args:
        device_mesh: a `keras.distribution.DeviceMesh` with an axis named
            `model_axis` (other axes, e.g. the batch axis, are left to the
            distribution).
        model_axis: the mesh axis the weights are split over. Its size must
            divide `hidden_size` and the MLP width (`hidden_size * mlp_ratio`).
    """
    if not isinstance(device_mesh, keras.distribution.DeviceMesh):
        raise TypeError(f"`device_mesh` must be a keras.distribution.DeviceMesh; got {type(device_mesh).__name__}.")
    if model_axis not in device_mesh.axis_names:
        raise ValueError(
            f"`model_axis` {model_axis!r} is not an axis of `device_mesh` (axes: {list(device_mesh.axis_names)})."
        )
    layout_map = keras.distribution.LayoutMap(device_mesh)
    for layer in _COLUMN_PARALLEL:
        layout_map[_path_pattern(f"{layer}/kernel")] = (None, model_axis)
        layout_map[_path_pattern(f"{layer}/bias")] = (model_axis,)
    for layer in _ROW_PARALLEL:
        layout_map[_path_pattern(f"{layer}/kernel")] = (model_axis, None)
    return layout_map


def data_parallel(devices=None):
    """`keras.distribution.DataParallel` over `devices` (default: all devices).

    Every device holds all the weights and a slice of each batch; gradients
    are averaged across devices, so a step equals a single-device step on the
    global batch. The batch size must be divisible by the number of devices.
    """
    devices = _device_list(devices)
    _require_jax()
    return keras.distribution.DataParallel(devices=devices)


def model_parallel(
    model_parallel_size, devices=None, batch_axis="batch", model_axis="model", hidden_size=None, mlp_ratio=4.0
):
    """`keras.distribution.ModelParallel` on a `(batch, model)` device mesh.

    The devices form a mesh of `len(devices) // model_parallel_size` data
    replicas by `model_parallel_size` model shards: each weight in
    `sit_layout_map` is split over the `model_axis` and each batch over the
    `batch_axis`. `model_parallel_size=1` is data parallelism; equal to the
    device count, pure tensor parallelism.

    Args:
        model_parallel_size: devices that share one copy of the weights; must
            divide the number of devices.
        devices: device names (`keras.distribution.list_devices()` format,
            e.g. `"gpu:0"`); default all devices, of every host when running
            multi-host.
        batch_axis, model_axis: the mesh axis names.
        hidden_size, mlp_ratio: the model's, if given, to check now that
            `model_parallel_size` divides the dimensions it splits (JAX
            needs even shards), instead of failing when the model is built.
    """
    devices = _device_list(devices)
    check_positive_int("model_parallel_size", model_parallel_size)
    if len(devices) % model_parallel_size:
        raise ValueError(
            f"`model_parallel_size` ({model_parallel_size}) must divide the number of devices ({len(devices)})."
        )
    for name, axis in (("batch_axis", batch_axis), ("model_axis", model_axis)):
        if not isinstance(axis, str) or not axis:
            raise ValueError(f"`{name}` must be a non-empty string; got {axis!r}.")
    if batch_axis == model_axis:
        raise ValueError(f"`batch_axis` and `model_axis` must differ; both are {batch_axis!r}.")
    check_positive_int("hidden_size", hidden_size, allow_none=True)
    check_number("mlp_ratio", mlp_ratio, low=0.0, include_low=False)
    if hidden_size is not None:
        widths = {
            "`hidden_size`": hidden_size,
            "the MLP width `int(hidden_size * mlp_ratio)`": int(hidden_size * mlp_ratio),
        }
        for name, width in widths.items():
            if width % model_parallel_size:
                raise ValueError(
                    f"`model_parallel_size` ({model_parallel_size}) must divide {name} ({width}): "
                    "the sharded weights are split evenly along it."
                )
    _require_jax()
    mesh = keras.distribution.DeviceMesh(
        shape=(len(devices) // model_parallel_size, model_parallel_size),
        axis_names=(batch_axis, model_axis),
        devices=devices,
    )
    return keras.distribution.ModelParallel(layout_map=sit_layout_map(mesh, model_axis), batch_dim_name=batch_axis)


def shard_batch(*tensors):
    """Under a `keras.distribution`, split sampling inputs across its batch axis.

    Otherwise, or when the batch does not divide evenly, they are returned
    as they are and every device samples the whole batch. None entries stay
    None.
    """
    distribution = keras.distribution.distribution()
    if distribution is None or getattr(distribution, "batch_dim_name", None) is None:
        return tensors
    mesh = distribution.device_mesh
    devices = mesh.shape[list(mesh.axis_names).index(distribution.batch_dim_name)]
    if tensors[0].shape[0] % devices:
        return tensors
    return tuple(
        None if t is None else keras.distribution.distribute_tensor(t, distribution.get_data_layout(t.shape))
        for t in tensors
    )


def _device_list(devices):
    if devices is None:
        _require_jax()
        return keras.distribution.list_devices()
    devices = list(devices)
    if not devices:
        raise ValueError("`devices` must name at least one device; got an empty list.")
    return devices


def _require_jax():
    backend = keras.backend.backend()
    if backend != "jax":
        raise RuntimeError(
            f"keras.distribution runs on the JAX backend only (this is {backend!r}). On TensorFlow and "
            "PyTorch, keras_sit.distribution.initialize() runs a job of processes; see docs/distribution.md."
        )
