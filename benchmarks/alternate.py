"""keras_sit on PyTorch against the plain PyTorch network, one training step of each in turn, in one process.

    python -m benchmarks.benchmark --mode alternate                   # SiT-S/2, 32x32x4, batch 16, 8 rounds
    python -m benchmarks.benchmark --mode alternate --preset SiT-S/8 --rounds 10

The full benchmark (`--backends torch,plain-torch`) times each network in its
own process, one after the other; on a shared machine whose speed drifts,
the two then see different machines. Here both train in the same process and
each round runs one step of each, back to back, so both see the machine at
the same speed. Prints each network's mean and median milliseconds a step
over `--rounds` rounds, after two warm-up steps of each, and images/s.
Runs on Keras' torch backend, in float32.
"""

import time

import numpy as np

from benchmarks.common import require_torch_backend, sit_model, training_batch

WARMUP_STEPS = 2


def run(preset, input_shape, num_classes, batch_size, rounds, jit_compile="auto", **overrides):
    """Train both networks alternately; print and return each one's step times in seconds.

    `overrides` change the preset's sizes (`hidden_size`, `depth`, `num_heads`) for both.
    """
    require_torch_backend("alternate")
    from benchmarks.plain_torch_sit import PlainTorchTrainer

    models = {
        "keras_sit (torch)": sit_model(preset, input_shape, num_classes, jit_compile, **overrides),
        "plain torch": PlainTorchTrainer.from_preset(
            preset, input_shape=input_shape, num_classes=num_classes, **overrides
        ),
    }
    x, labels = training_batch(batch_size, input_shape, num_classes)
    for model in models.values():
        for _ in range(WARMUP_STEPS):
            model.train_on_batch(x, labels)
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.train_on_batch(x, labels)  # returns the loss as a number: the step has finished
            times[name].append(time.perf_counter() - start)
    sizes = "".join(f", {name} {value}" for name, value in overrides.items())
    print(f"{preset} {input_shape} {num_classes} classes{sizes}, batch {batch_size}, {rounds} rounds")
    for name, seconds in times.items():
        print(
            f"{name:>18}: mean {1e3 * np.mean(seconds):.0f} ms, median {1e3 * np.median(seconds):.0f} ms a step, "
            f"{batch_size / np.mean(seconds):.2f} images/s"
        )
    return times
