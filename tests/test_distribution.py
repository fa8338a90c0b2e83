"""keras_sit.distribution: the layout map and the argument checks (any backend, no devices).

4 devices against 1 are in test_distribution_devices.py.
"""

import keras
import numpy as np
import pytest

import keras_sit
from keras_sit import distribution

BACKEND = keras.backend.backend()
FAKE_DEVICES = [f"cpu:{i}" for i in range(8)]  # a mesh only resolves its devices when first used

# What each SiT weight should be split into on the "model" axis; all others are replicated.
EXPECTED_AXES = {
    "attn/qkv/kernel": (None, "model"),
    "attn/qkv/bias": ("model",),
    "attn/proj/kernel": ("model", None),
    "mlp/fc1/kernel": (None, "model"),
    "mlp/fc1/bias": ("model",),
    "mlp/fc2/kernel": ("model", None),
    "adaLN_modulation/kernel": (None, "model"),
    "adaLN_modulation/bias": ("model",),
}


def expected_axes(path, rank):
    for suffix, axes in EXPECTED_AXES.items():
        if path.endswith("/" + suffix):
            return axes
    return (None,) * rank


def mesh(shape=(2, 2), axis_names=("batch", "model")):
    return keras.distribution.DeviceMesh(shape, axis_names, devices=FAKE_DEVICES[: int(np.prod(shape))])


# --- The layout map (any backend, no devices needed) -------------------------------------


@pytest.mark.parametrize(
    "path, axes",
    [
        ("blocks_0/attn/qkv/kernel", (None, "model")),
        ("blocks_11/attn/qkv/bias", ("model",)),
        ("blocks_0/attn/proj/kernel", ("model", None)),
        ("blocks_0/attn/proj/bias", None),
        ("blocks_0/mlp/fc1/kernel", (None, "model")),
        ("blocks_0/mlp/fc1/bias", ("model",)),
        ("blocks_0/mlp/fc2/kernel", ("model", None)),
        ("blocks_0/mlp/fc2/bias", None),
        ("blocks_0/adaLN_modulation/kernel", (None, "model")),
        ("blocks_0/adaLN_modulation/bias", ("model",)),
        ("final_layer/adaLN_modulation/kernel", (None, "model")),
        ("final_layer/linear/kernel", None),
        ("x_embedder/projection/kernel", None),
        ("x_embedder/position_embedding", None),
        ("y_embedder/embedding/embeddings", None),
        ("t_embedder/dense_in/kernel", None),
        ("outer/backbone/blocks_0/mlp/fc1/kernel", (None, "model")),  # a SiT nested in another model
        ("blocks_0/my_attn/qkv/kernel", None),  # only whole path components match
        ("blocks_0/attn/qkv/output", None),  # layer outputs are left to XLA
    ],
)
def test_layout_map_entries(path, axes):
    layout = distribution.sit_layout_map(mesh())[path]
    assert (None if layout is None else layout.axes) == axes


def test_layout_map_covers_exactly_the_matmuls_of_a_real_sit():
    """Every variable of a SiT matches at most one key, and exactly the expected ones are split."""
    model = keras_sit.SiT(
        input_shape=(4, 4, 2), patch_size=2, hidden_size=16, depth=2, num_heads=2, num_classes=3, seed=0
    )
    layout_map = distribution.sit_layout_map(mesh())
    found = {}
    for variable in model.variables:
        layout = layout_map[variable.path]  # raises if two keys match
        if layout is not None:
            found[variable.path] = layout.axes
    assert found == {
        f"{parent}/{suffix}": axes for parent in ("blocks_0", "blocks_1") for suffix, axes in EXPECTED_AXES.items()
    } | {
        "final_layer/adaLN_modulation/kernel": (None, "model"),
        "final_layer/adaLN_modulation/bias": ("model",),
    }
    assert all(
        layout_map[variable.path].device_mesh.shape == (2, 2)
        for variable in model.variables
        if layout_map[variable.path] is not None
    )


def test_layout_map_uses_the_named_model_axis():
    layout_map = distribution.sit_layout_map(mesh((4, 2), ("data", "tensor")), model_axis="tensor")
    assert layout_map["blocks_0/attn/qkv/kernel"].axes == (None, "tensor")
    assert layout_map["blocks_0/mlp/fc2/kernel"].axes == ("tensor", None)


def test_layout_map_argument_errors():
    with pytest.raises(
        ValueError, match=r"`model_axis` 'model' is not an axis of `device_mesh`.*\['batch', 'tensor'\]"
    ):
        distribution.sit_layout_map(mesh(axis_names=("batch", "tensor")))
    with pytest.raises(TypeError, match="`device_mesh` must be a keras.distribution.DeviceMesh; got tuple"):
        distribution.sit_layout_map((2, 2))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(model_parallel_size=3, devices=FAKE_DEVICES[:4]),
            r"`model_parallel_size` \(3\) must divide the number of devices \(4\)",
        ),
        (dict(model_parallel_size=0, devices=FAKE_DEVICES[:4]), r"`model_parallel_size` must be a positive int; got 0"),
        (dict(model_parallel_size=True, devices=FAKE_DEVICES[:4]), r"`model_parallel_size` must be a positive int"),
        (dict(model_parallel_size=2, devices=[]), r"`devices` must name at least one device"),
        (
            dict(model_parallel_size=2, devices=FAKE_DEVICES[:4], batch_axis="model"),
            r"`batch_axis` and `model_axis` must differ; both are 'model'",
        ),
        (
            dict(model_parallel_size=2, devices=FAKE_DEVICES[:4], model_axis=""),
            r"`model_axis` must be a non-empty string",
        ),
        (
            dict(model_parallel_size=4, devices=FAKE_DEVICES[:4], hidden_size=18),
            r"`model_parallel_size` \(4\) must divide `hidden_size` \(18\)",
        ),
        (
            dict(model_parallel_size=8, devices=FAKE_DEVICES, hidden_size=16, mlp_ratio=1.25),
            r"`model_parallel_size` \(8\) must divide the MLP width `int\(hidden_size \* mlp_ratio\)` \(20\)",
        ),
    ],
)
def test_model_parallel_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        distribution.model_parallel(**kwargs)


def test_data_parallel_argument_errors():
    with pytest.raises(ValueError, match="`devices` must name at least one device"):
        distribution.data_parallel(devices=[])


def test_constructors_build_keras_distributions_on_jax_only():
    """JAX gets Keras' own distributions; other backends a clear error, not a silent no-op."""
    if BACKEND == "jax":
        parallel = distribution.model_parallel(2, devices=FAKE_DEVICES[:8], hidden_size=16)
        assert isinstance(parallel, keras.distribution.ModelParallel)
        assert parallel.device_mesh.shape == (4, 2) and parallel.batch_dim_name == "batch"
        assert tuple(parallel.device_mesh.axis_names) == ("batch", "model")
        data = distribution.data_parallel(devices=FAKE_DEVICES[:4])
        assert isinstance(data, keras.distribution.DataParallel) and data.device_mesh.shape == (4,)
    else:
        for build in (lambda: distribution.data_parallel(), lambda: distribution.model_parallel(2, FAKE_DEVICES[:4])):
            with pytest.raises(RuntimeError, match=f"JAX backend only \\(this is '{BACKEND}'\\)"):
                build()
