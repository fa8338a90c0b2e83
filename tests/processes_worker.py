"""One process of the multi-process tests: `python -m tests.processes_worker SCENARIO OUT_DIR [ARGS]`.

`tests/test_processes.py` runs it as 2 processes of a job on localhost (the
backend's launcher environment set by `tests/multiprocess.py`) and as one
lone process, and compares what they write to `OUT_DIR`. The backend is the
one of the pytest run (`KERAS_BACKEND`).

Scenarios:
- `train`: three SGD steps of a tiny SiT on one fixed global batch of 8;
  each process writes `rank<i>.npz` (per-step losses, final weights, on
  PyTorch its slice's draws) and saves `model.keras`, which the chief writes.
- `bad_batch`: a streamed batch with a NaN in process 1's slice only; each
  process writes whether its `fit` stopped and at which step.
- `cache`: `write_latent_cache` and `generate_for_evaluation` into
  `OUT_DIR/cache` and `OUT_DIR/samples`, the chief starting 2 s late; each
  process writes the `LatentDataset` batches it yields to `dataset<i>.npz`.
- `backup EPOCHS [KILL_AT]`: `fit` with `BackupAndRestore` in
  `OUT_DIR/backup`; process 1 kills itself at the end of epoch `KILL_AT`.
- `all`: `train`, `bad_batch`, `cache` and `backup 4`, each in its folder.
"""

import json
import os
import pathlib
import signal
import sys
import time

import keras
import numpy as np

import keras_sit
from keras_sit import distribution
from keras_sit.distribution import feeds

ARCHITECTURE = dict(
    input_shape=(4, 4, 1), patch_size=2, hidden_size=16, depth=1, num_heads=2, num_classes=3, class_dropout_prob=0.3
)
BATCH = 8  # the global batch
TIMEOUT_SECONDS = 10  # a dead peer is noticed within about this


def _model(learning_rate=0.1):
    rng = np.random.default_rng(0)
    model = keras_sit.SiT(**ARCHITECTURE, seed=0)
    # Away from the zero adaLN init, so that every weight gets a gradient from the first step.
    for variable in model.backbone.trainable_weights:
        variable.assign(rng.normal(0, 0.2, size=variable.shape).astype("float32"))
    # SGD: the update is linear in the gradient, so the comparison stays tight. XLA off on
    # TensorFlow, which the multi-worker strategy does not compile.
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9), jit_compile=keras.backend.backend() == "jax"
    )
    return model


def _data(count=BATCH, seed=1):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(count, *ARCHITECTURE["input_shape"])).astype("float32")
    return images, (np.arange(count) % ARCHITECTURE["num_classes"]).astype("int32")


def _losses():
    losses = []
    callback = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: losses.append(float(logs["loss"])))
    return losses, callback


def train(out):
    model = _model()
    images, labels = _data()
    losses, record = _losses()
    model.fit(images, labels, batch_size=BATCH, epochs=3, shuffle=False, verbose=0, callbacks=[record])
    arrays = {"loss": np.array(losses)}
    arrays |= {f"final/{v.path}": keras.ops.convert_to_numpy(v) for v in model.trainable_weights}
    if keras.backend.backend() == "torch":  # JAX draws in one program; TensorFlow's replicas draw inside `fit`
        # This process's label drops of its slice of a global batch of 64.
        local = keras.ops.zeros((64 // distribution.process_count(),), "int32")
        arrays["drops"] = keras.ops.convert_to_numpy(model.drop_labels(local))
    np.savez(out / f"rank{distribution.process_index()}.npz", **arrays)
    model.save(out / "model.keras")  # every process saves; the chief writes


class _NaNInProcessOne(keras.utils.PyDataset):
    """Three global batches; in the second, process 1's slice holds a NaN."""

    def __len__(self):
        return 3

    def __getitem__(self, index):
        images, labels = _data(seed=10 + index)
        if index == 1:
            images[BATCH - 1, 0, 0, 0] = np.nan  # the last row: process 1's slice
        if not feeds.slices_by_process():  # one process, or TensorFlow's strategy, which slices it
            return images, labels
        count, rank = distribution.process_count(), distribution.process_index()
        rows = slice(rank * BATCH // count, (rank + 1) * BATCH // count)
        return images[rows], labels[rows]


def bad_batch(out):
    model = _model()
    before = [keras.ops.convert_to_numpy(v) for v in model.trainable_weights]
    losses, record = _losses()
    error = None
    try:
        model.fit(_NaNInProcessOne(), epochs=1, shuffle=False, verbose=0, callbacks=[record])
    except ValueError as raised:
        error = str(raised)
    moved = [float(np.abs(keras.ops.convert_to_numpy(v) - b).max()) for v, b in zip(model.trainable_weights, before)]
    report = {"error": error, "steps": len(losses), "moved": max(moved)}
    (out / f"rank{distribution.process_index()}.json").write_text(json.dumps(report))


def cache(out):
    from tests.conftest import tiny_autoencoder

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 16, 16, 3)).astype("uint8")
    source = keras_sit.ArrayImages(images, np.arange(7) % 3)
    with distribution.local():  # each process encodes and samples on its own
        autoencoder = tiny_autoencoder(seed=0)
        model = keras_sit.SiT(input_shape=(8, 8, 3), patch_size=4, hidden_size=16, depth=1, num_heads=2,
                              num_classes=3, seed=0)  # fmt: skip
    if distribution.process_index() == 0:
        time.sleep(2)  # the chief comes late: no process may write to the folder before every one has looked at it
    keras_sit.write_latent_cache(source, autoencoder, out / "cache", shard_size=2, batch_size=2, verbose=0)
    keras_sit.evaluation.generate_for_evaluation(model, out / "samples", num_samples=10, batch_size=3, verbose=0,
                                                 num_steps=2)  # fmt: skip
    dataset = keras_sit.LatentDataset(out / "cache", batch_size=4, seed=3)
    batches = {f"batch{i}/{name}": array for i in range(len(dataset)) for name, array in zip(("x", "y"), dataset[i])}
    np.savez(out / f"dataset{distribution.process_index()}.npz", **batches)


class _KillAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch and distribution.process_index() == 1:
            os.kill(os.getpid(), signal.SIGKILL)


def backup(out, epochs, kill_at=None):
    model = _model(learning_rate=0.01)  # 16 steps: slower, so that training stays finite
    images, labels = _data(count=4 * BATCH)
    callbacks = [keras_sit.callbacks.BackupAndRestore(out / "backup", delete_checkpoint=False)]
    if kill_at is not None:
        callbacks.append(_KillAt(int(kill_at)))
    history = model.fit(images, labels, batch_size=BATCH, epochs=int(epochs), shuffle=False, verbose=0,
                        callbacks=callbacks)  # fmt: skip
    arrays = {f"final/{v.path}": keras.ops.convert_to_numpy(v) for v in model.trainable_weights}
    arrays["epochs_run"] = np.array(len(history.history.get("loss", [])))
    np.savez(out / f"rank{distribution.process_index()}.npz", **arrays)


def everything(out):
    """Every scenario but a killed one, each in its own folder of `out`, in one launch."""
    for name, scenario in (("train", train), ("bad_batch", bad_batch), ("cache", cache)):
        (out / name).mkdir(exist_ok=True)
        scenario(out / name)
    (out / "backup").mkdir(exist_ok=True)
    backup(out / "backup", 4)


SCENARIOS = {"train": train, "bad_batch": bad_batch, "cache": cache, "backup": backup, "all": everything}

if __name__ == "__main__":
    distribution.initialize(timeout_seconds=TIMEOUT_SECONDS)
    scenario, out_dir, *arguments = sys.argv[1:]
    SCENARIOS[scenario](pathlib.Path(out_dir), *arguments)
