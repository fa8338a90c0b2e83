"""MeanFlow's cost on this machine: a training step against an ordinary one, and 1-step against 50-step sampling.

    KERAS_BACKEND=jax python -m benchmarks.mean_flow                     # SiT-S/2 on 16x16x4, batch 16
    KERAS_BACKEND=torch python -m benchmarks.mean_flow --steps 10 --input-shape 32,32,4

Run from the repository root, once per backend (a process holds one Keras
backend). Three models of one preset, built from the same seed, train on
the same fixed batch: the ordinary SiT (`InterpolantLoss`), the same
network trained with `MeanFlow()` (one forward pass with its
Jacobian-vector product, plus the backward pass), and with `MeanFlow(omega=1,
kappa=0.5)` (its guided target adds one forward pass of the doubled batch,
without gradient). After each model's first (compiling) steps, one step of
each runs in turn for `--steps` rounds, so that all see the machine at the
same speed; the table gives each model's median step time and its ratio to
the ordinary step's in the same round (median over rounds).

Sampling: images/s of `generate` (one compiled call, `verbose=0`) for the
MeanFlow model in 1 and 2 steps (`mean-flow` sampler) and the ordinary model
in 50 Euler steps, the median of `--sampling-repeats` calls after a warm-up.

A benchmark, not a test: run it on a quiet machine. The printed tables are
Markdown.
"""

import argparse
import time

import numpy as np

import keras_sit  # first: with no backend configured, it picks an installed one before Keras loads

# isort: split
import keras

from benchmarks.common import device_name, parse_shape, training_batch
from keras_sit.objectives import MeanFlow


def build(args, objectives=()):
    model = keras_sit.SiT.from_preset(
        args.preset, input_shape=parse_shape(args.input_shape), num_classes=args.num_classes, seed=0,
        objectives=list(objectives), time_embedding_scale=1.0,
    )  # fmt: skip
    model.compile()
    return model


def training_cost(args, models, x, labels):
    """`{name: (median step s, median ratio to the ordinary step)}` over interleaved rounds."""
    for model in models.values():
        for _ in range(args.warmup_steps):
            model.train_on_batch(x, labels)
    times = {name: [] for name in models}
    for _ in range(args.steps):
        for name, model in models.items():
            start = time.perf_counter()
            loss = model.train_on_batch(x, labels)
            times[name].append(time.perf_counter() - start)
            if not np.isfinite(loss):
                raise RuntimeError(f"{name}: training loss is {loss}")
    plain = np.array(times["ordinary"])
    return {name: (float(np.median(t)), float(np.median(np.array(t) / plain))) for name, t in times.items()}


def sampling_rate(args, model, labels, **options):
    """Images/s of one compiled `generate` call, the median of `--sampling-repeats` after a warm-up call."""
    model.generate(len(labels), labels=labels, seed=0, verbose=0, **options)
    seconds = []
    for repeat in range(args.sampling_repeats):
        start = time.perf_counter()
        model.generate(len(labels), labels=labels, seed=repeat, verbose=0, **options)
        seconds.append(time.perf_counter() - start)
    return len(labels) / float(np.median(seconds))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="SiT-S/2")
    parser.add_argument("--input-shape", default="16,16,4", help="H,W,C")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="timed rounds of one step of each model")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--sampling-repeats", type=int, default=3)
    args = parser.parse_args(argv)

    x, labels = training_batch(args.batch_size, parse_shape(args.input_shape), args.num_classes)
    models = {
        "ordinary": build(args),
        "MeanFlow": build(args, [MeanFlow()]),
        "MeanFlow, guided target (kappa 0.5)": build(args, [MeanFlow(omega=1.0, kappa=0.5)]),
    }
    cost = training_cost(args, models, x, labels)
    backend = keras.backend.backend()
    print(
        f"\n{backend} on {device_name()}, {args.preset} on {args.input_shape}, batch {args.batch_size}, "
        f"keras {keras.__version__}; training steps ({args.steps} rounds):\n"
    )
    print("| objective | step s (median) | images/s | vs ordinary step |")
    print("|---|---|---|---|")
    for name, (seconds, ratio) in cost.items():
        print(f"| {name} | {seconds:.3f} | {args.batch_size / seconds:.1f} | {ratio:.2f}x |")

    rates = {
        "MeanFlow, 1 step (mean-flow)": sampling_rate(args, models["MeanFlow"], labels, num_steps=1),
        "MeanFlow, 2 steps (mean-flow)": sampling_rate(args, models["MeanFlow"], labels, num_steps=2),
        "ordinary, 50 Euler steps": sampling_rate(args, models["ordinary"], labels, sampler="euler", num_steps=50),
    }
    base = rates["ordinary, 50 Euler steps"]
    print(f"\nsampling, batch {args.batch_size}:\n")
    print("| sampling | images/s | vs 50 Euler steps |")
    print("|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {rate / base:.1f}x |")


if __name__ == "__main__":
    main()
