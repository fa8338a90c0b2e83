"""keras_sit.distribution on 4 virtual CPU devices against 1 (JAX).

This file runs itself as a script in a JAX subprocess with 4 virtual CPU
devices (`XLA_FLAGS` must be set before JAX is imported): it trains and samples
the same tiny SiT on one device, data parallel over 4 and model parallel on a
2x2 mesh, and the tests compare the numbers it writes. The subprocess is JAX
whatever the backend of the pytest run, so conftest.py collects this file in
the JAX run only.
"""

import contextlib
import json
import pathlib
import sys

import keras
import numpy as np
import pytest

import keras_sit
from keras_sit import distribution
from tests.conftest import run_device_script
from tests.test_distribution import expected_axes

ARCHITECTURE = dict(input_shape=(4, 4, 4), patch_size=2, hidden_size=16, depth=1, num_heads=2, num_classes=4, seed=0)
BATCH, STEPS = 8, 3
RUNS = {  # name -> the distribution, built in the subprocess
    "one_device": lambda: None,
    "data_parallel": lambda: distribution.data_parallel(),
    "model_parallel": lambda: distribution.model_parallel(2, hidden_size=16),
}


def _train_and_sample(distributed):
    """Train `STEPS` steps of one fixed batch, then sample, under `distributed` (None: one device)."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(BATCH, *ARCHITECTURE["input_shape"])).astype("float32")
    labels = np.arange(BATCH) % ARCHITECTURE["num_classes"]
    with distributed.scope() if distributed else contextlib.nullcontext():
        model = keras_sit.SiT(**ARCHITECTURE)
        # Away from the zero adaLN init, so that every weight gets a gradient from the first step.
        for variable in model.backbone.trainable_weights:
            variable.assign(rng.normal(0, 0.2, size=variable.shape).astype("float32"))
        initial = {v.path: keras.ops.convert_to_numpy(v) for v in model.trainable_weights}
        # SGD, not Adam: Adam divides each gradient by its own size, so a gradient that is zero
        # up to rounding (the key bias of attention: softmax ignores it) gets an O(lr) step
        # whose sign is rounding noise, and the device count changes the rounding.
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        history = model.fit(images, labels, batch_size=BATCH, epochs=STEPS, shuffle=False, verbose=0)
        samples = model.generate(BATCH, labels=labels, num_steps=2, cfg_scale=2.0, seed=0)
    arrays = {"loss": np.array(history.history["loss"]), "samples": samples}
    arrays |= {f"initial/{path}": value for path, value in initial.items()}
    arrays |= {f"final/{v.path}": keras.ops.convert_to_numpy(v) for v in model.trainable_weights}
    layouts = {} if distributed is None else _layouts(model.variables + model.optimizer.variables)
    return arrays, layouts


def _layouts(variables):
    """Path -> the partition spec of its value and the shape of one device's shard."""
    return {
        v.path: {"spec": list(v.value.sharding.spec), "shard": list(v.value.addressable_shards[0].data.shape)}
        for v in variables
    }


def _run_on_four_devices(out_dir):
    import jax

    summary = {"device_count": jax.device_count(), "layouts": {}}
    for name, make in RUNS.items():
        arrays, summary["layouts"][name] = _train_and_sample(make())
        np.savez(out_dir / f"{name}.npz", **arrays)
    with distribution.data_parallel().scope():  # generate's inputs: split, not replicated
        inputs = distribution.shard_batch(keras.ops.zeros((BATCH, 4)), keras.ops.arange(BATCH))
        summary["sampling_input_specs"] = [list(t.sharding.spec) for t in inputs]
    with distribution.model_parallel(4).scope():  # pure tensor parallelism: layouts only
        summary["layouts"]["model_parallel_1x4"] = _layouts(keras_sit.SiT(**ARCHITECTURE).variables)
    (out_dir / "summary.json").write_text(json.dumps(summary))


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("four_devices")
    env = {
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        # Four virtual CPU devices; LLVM optimisation off makes the six compilations about 3x
        # faster and, being the same for all runs, leaves the comparison intact.
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0",
    }
    return run_device_script([sys.executable, __file__], out_dir, env)


def test_subprocess_sees_four_devices(four_devices):
    assert four_devices["device_count"] == 4


@pytest.mark.parametrize("name", ["data_parallel", "model_parallel"])
def test_training_on_four_devices_matches_one_device(four_devices, name):
    one, four = four_devices["runs"]["one_device"], four_devices["runs"][name]
    np.testing.assert_allclose(four["loss"], one["loss"], rtol=1e-4, atol=1e-5)
    assert np.ptp(one["loss"]) > 0.05  # the steps did train
    final = [key for key in one if key.startswith("final/")]
    assert sorted(final) == sorted(key for key in four if key.startswith("final/"))
    for key in final:
        np.testing.assert_allclose(four[key], one[key], rtol=1e-4, atol=1e-5, err_msg=key)
    moved = max(np.abs(one[key] - one[key.replace("final/", "initial/")]).max() for key in final)
    assert moved > 0.05  # far above the tolerance: the comparison is not of untouched weights


@pytest.mark.parametrize("name", ["data_parallel", "model_parallel"])
def test_sampling_on_four_devices_matches_one_device(four_devices, name):
    one, four = four_devices["runs"]["one_device"]["samples"], four_devices["runs"][name]["samples"]
    assert four.shape == (BATCH, 4, 4, 4) and one.std() > 0.1
    np.testing.assert_allclose(four, one, rtol=1e-4, atol=1e-5)


def test_sampling_splits_its_batch_across_devices(four_devices):
    assert four_devices["sampling_input_specs"] == [["batch", None], ["batch"]]


def test_data_parallel_replicates_every_variable(four_devices):
    for path, layout in four_devices["layouts"]["data_parallel"].items():
        assert all(axis is None for axis in layout["spec"]), path


@pytest.mark.parametrize("run, model_shards", [("model_parallel", 2), ("model_parallel_1x4", 4)])
def test_model_parallel_splits_the_matmuls_and_their_optimizer_state(four_devices, run, model_shards):
    """Each device holds 1/model_shards of a split weight, and all of every other one."""
    layouts = four_devices["layouts"][run]
    shapes = {v.path: v.shape for v in keras_sit.SiT(**ARCHITECTURE).variables}
    split = 0
    for path, shape in shapes.items():
        axes = expected_axes(path, len(shape))
        assert tuple(layouts[path]["spec"]) == axes, path
        shard = [size // model_shards if axis == "model" else size for size, axis in zip(shape, axes)]
        assert layouts[path]["shard"] == shard, path
        split += "model" in axes
    assert split == 10  # qkv, fc1, adaLN (kernel, bias) and proj, fc2 (kernel) of one block; the final adaLN
    if run == "model_parallel":  # SGD momentum follows its weight (the optimizer's own name varies)
        momentum = {path.split("/", 1)[1]: layout["spec"] for path, layout in layouts.items() if "momentum" in path}
        trained = [key.removeprefix("final/") for key in four_devices["runs"][run] if key.startswith("final/")]
        assert len(momentum) == len(trained)
        for path in trained:
            assert momentum[path.replace("/", "_") + "_momentum"] == list(expected_axes(path, len(shapes[path]))), path


if __name__ == "__main__":
    _run_on_four_devices(pathlib.Path(sys.argv[1]))
