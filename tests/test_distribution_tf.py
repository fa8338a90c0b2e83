"""SiT under `tf.distribute.MirroredStrategy` on 2 logical CPU devices against 1 (TensorFlow).

The devices must be configured before TensorFlow initializes them, so a
subprocess does the work (`_SCRIPT` calls `_run_on_two_replicas`) whatever ran
before in this process, and the tests compare the numbers it writes.
"""

import json
import pathlib
import sys

import keras
import numpy as np
import pytest

import keras_sit
from tests.conftest import run_device_script

ARCHITECTURE = dict(
    input_shape=(4, 4, 1), patch_size=2, hidden_size=16, depth=1, num_heads=2, num_classes=3, class_dropout_prob=0.1
)
BATCH, STEPS = 8, 3  # the global batch

_SCRIPT = """
import sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tests.test_distribution_tf import _run_on_two_replicas

_run_on_two_replicas(sys.argv[1])
"""


def _train(strategy):
    """Per-step losses, initial and final weights and the seed state of `STEPS` steps on one fixed batch.

    Without XLA: Keras turns it off under a `tf.distribute` strategy, and forced on it fails here
    (XLA cannot reach the variables of the replica on the other device).
    """
    rng = np.random.default_rng(0)
    images = rng.normal(size=(BATCH, *ARCHITECTURE["input_shape"])).astype("float32")
    labels = np.arange(BATCH) % ARCHITECTURE["num_classes"]
    with strategy.scope():
        model = keras_sit.SiT(**ARCHITECTURE, seed=0)
        # Away from the zero adaLN init, so that every weight gets a gradient from the first step.
        for variable in model.backbone.trainable_weights:
            variable.assign(rng.normal(0, 0.2, size=variable.shape).astype("float32"))
        initial = {v.path: keras.ops.convert_to_numpy(v) for v in model.trainable_weights}
        # SGD: the update is linear in the gradient, so the comparison stays tight.
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=False)
    losses = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: losses.append(logs["loss"]))
    model.fit(images, labels, batch_size=BATCH, epochs=STEPS, shuffle=False, verbose=0, callbacks=[record])
    # The seed state as every replica holds it.
    seed_states = [state.numpy() for state in strategy.experimental_local_results(model.seed_generator.state.value)]
    arrays = {"loss": np.array(losses), "seed_states": np.stack(seed_states)}
    arrays |= {f"initial/{path}": value for path, value in initial.items()}
    return arrays | {f"final/{v.path}": keras.ops.convert_to_numpy(v) for v in model.trainable_weights}


def _draws(strategy):
    """Each replica's draws for the same inputs, and one device's for both copies of them.

    The target is the noise less the data (linear path), the prediction also depends on `t` and the
    label drops, and `dropped` is `drop_labels` of 64 labels, so equal draws would show.
    """
    import tensorflow as tf

    rng = np.random.default_rng(1)
    images = tf.constant(rng.normal(size=(BATCH, *ARCHITECTURE["input_shape"])).astype("float32"))
    labels = tf.constant(np.arange(BATCH) % ARCHITECTURE["num_classes"], "int32")
    many_labels = tf.constant(np.arange(64) % ARCHITECTURE["num_classes"], "int32")
    config = {**ARCHITECTURE, "class_dropout_prob": 0.5, "seed": 0}
    with strategy.scope():
        model = keras_sit.SiT(**config)
        for variable in model.backbone.trainable_weights:
            variable.assign(rng.normal(0, 0.2, size=variable.shape).astype("float32"))

    def forward(model, images, labels, many_labels):
        outputs = model({"x": images, "labels": labels}, training=True)
        return {"target": outputs["target"], "pred": outputs["pred"], "dropped": model.drop_labels(many_labels)}

    per_replica = tf.function(lambda: strategy.run(forward, args=(model, images, labels, many_labels)))()
    arrays = {
        f"replica_{r}/{key}": keras.ops.convert_to_numpy(value)
        for key, values in per_replica.items()
        for r, value in enumerate(strategy.experimental_local_results(values))
    }
    one = keras_sit.SiT(**config)
    one.set_weights(model.get_weights())
    both = tf.function(forward)(one, *(tf.concat([tensor, tensor], 0) for tensor in (images, labels, many_labels)))
    return arrays | {f"one_device/{key}": keras.ops.convert_to_numpy(value) for key, value in both.items()}


def _bad_batch(strategy):
    """`fit` over four batches whose third has a label out of range on replica 1's slice only:
    the error, the optimizer's iterations, and the weights against a model trained on the first two."""
    import tensorflow as tf

    rng = np.random.default_rng(2)
    batches = [
        (rng.normal(size=(BATCH, *ARCHITECTURE["input_shape"])).astype("float32"), np.arange(BATCH, dtype="int32") % 3)
        for _ in range(4)
    ]
    batches[2][1][-1] = ARCHITECTURE["num_classes"]
    models = []
    for data in (batches, batches[:2]):
        with strategy.scope():
            model = keras_sit.SiT(**ARCHITECTURE, seed=0)
            model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
        # Values `fit` cannot check in advance; sliced in order, as the replicas' draws assume.
        images, labels = (np.concatenate(arrays) for arrays in zip(*data))
        stream = tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH)
        try:
            model.fit(stream, epochs=1, verbose=0)
            error = ""
        except ValueError as exception:
            error = str(exception)
        models.append((model, error))
    (bad, error), (reference, _) = models
    iterations = keras.ops.convert_to_numpy(bad.optimizer.iterations.value)
    difference = max(
        np.abs(keras.ops.convert_to_numpy(a) - keras.ops.convert_to_numpy(b)).max()
        for a, b in zip(bad.weights, reference.weights, strict=True)
    )
    return {"error": error, "iterations": int(iterations), "difference": float(difference)}


def _run_on_two_replicas(out_dir):
    import tensorflow as tf

    out_dir = pathlib.Path(out_dir)
    two = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    one = tf.distribute.get_strategy()  # the default: no distribution
    summary = {"replicas": two.num_replicas_in_sync}
    for name, strategy in [("one_device", one), ("two_replicas", two)]:
        np.savez(out_dir / f"{name}.npz", **_train(strategy))
    np.savez(out_dir / "draws.npz", **_draws(two))
    summary["bad_batch"] = _bad_batch(two)
    (out_dir / "summary.json").write_text(json.dumps(summary))


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory):
    env = {"KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": ""}
    return run_device_script([sys.executable, "-c", _SCRIPT], tmp_path_factory.mktemp("two_replicas"), env)


def test_subprocess_runs_two_replicas(two_replicas):
    assert two_replicas["replicas"] == 2


def test_training_on_two_replicas_matches_one_device(two_replicas):
    one, two = two_replicas["runs"]["one_device"], two_replicas["runs"]["two_replicas"]
    # The logged loss: Keras un-scales each replica's loss (divided by the replica count) and averages.
    assert one["loss"].shape == (STEPS,)
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-4, atol=1e-5)
    assert np.ptp(one["loss"]) > 0.05  # the steps did train
    final = [key for key in one if key.startswith("final/")]
    assert sorted(final) == sorted(key for key in two if key.startswith("final/"))
    for key in final:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-5, err_msg=key)
    moved = max(np.abs(one[key] - one[key.replace("final/", "initial/")]).max() for key in final)
    assert moved > 0.05  # far above the tolerance: the comparison is not of untouched weights
    # Three draws a step (t, noise, label drops), on every replica alike.
    assert one["seed_states"].shape == (1, 2) and two["seed_states"].shape == (2, 2)
    np.testing.assert_array_equal(two["seed_states"], np.repeat(one["seed_states"], 2, axis=0))
    assert one["seed_states"][0, 1] == 3 * STEPS


@pytest.mark.parametrize("key", ["target", "pred", "dropped"])
def test_replicas_draw_their_slice_of_the_global_batch(two_replicas, key):
    draws = two_replicas["runs"]["draws"]
    first, second, one = draws[f"replica_0/{key}"], draws[f"replica_1/{key}"], draws[f"one_device/{key}"]
    assert not np.allclose(first, second)  # same inputs on both replicas: different draws
    np.testing.assert_allclose(np.concatenate([first, second]), one, rtol=1e-5, atol=1e-6)


def test_a_bad_slice_on_one_replica_skips_the_step_on_all(two_replicas):
    bad_batch = two_replicas["bad_batch"]
    assert "`fit` stopped at training step 3 of this call: its labels are not all in" in bad_batch["error"]
    assert bad_batch["iterations"] == 2
    assert bad_batch["difference"] == 0.0
