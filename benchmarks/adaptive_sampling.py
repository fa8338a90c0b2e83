"""dopri5's step-size controls on the digits model: model calls, wall time and digits FD.

    KERAS_BACKEND=jax python -m benchmarks.adaptive_sampling

Trains the model of `examples/train.py` on scikit-learn's digits (its
architecture, data split, optimiser, seed and 40 epochs), then draws 540 digits (54 per class, cfg_scale
2.0 as the example's final grid, clip_data (-1, 1)) with dopri5 at atol 1e-6,
rtol 1e-3 for each control, with the first step selected and fixed at 0.05,
and prints the drift evaluations (NFE), the wall time of a warm (compiled)
call and the digits Frechet distance of the example's quality callback
(a small classifier's features, held-out digits). For reference, upstream's
`torchdiffeq.odeint(method="dopri5")` is run on the same drift (the JAX
drift called from torch) and its function calls counted.
"""

import argparse
import contextlib
import importlib.util
import os
import time

import keras
import numpy as np
from keras import ops

import keras_sit
from keras_sit import backend
from keras_sit.evaluation.metrics import FeatureStatistics
from keras_sit.evaluation.runner import extract_features
from keras_sit.sampling import SamplingSettings, dopri5
from keras_sit.sampling.guidance import guided_drift
from keras_sit.visualization import to_uint8

ATOL, RTOL, CFG, SEED = 1e-6, 1e-3, 2.0, 0
EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "train.py")


def load_example():
    """examples/train.py, for its data split and its digits feature model (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("digits_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--per-class", type=int, default=54, help="samples per class")
    parser.add_argument("--model", default="outputs/digits_dopri5.keras", help="reused if it exists")
    args = parser.parse_args()
    example = load_example()
    keras.utils.set_random_seed(SEED)
    images, labels, _ = example.load_digits_dataset()
    order = np.random.default_rng(SEED).permutation(len(images))
    held_out, train = order[: len(images) // 5], order[len(images) // 5 :]
    model = keras_sit.SiT(
        input_shape=images.shape[1:], patch_size=2, hidden_size=128, depth=4, num_heads=4, num_classes=10, seed=SEED
    )
    model.compile(optimizer=keras_sit.AdamW(learning_rate=1e-3, weight_decay=0.0))
    if os.path.exists(args.model):
        model = keras.saving.load_model(args.model)
        print(f"loaded {args.model}")
    else:
        start = time.perf_counter()
        model.fit(images[train], labels[train], batch_size=64, epochs=args.epochs, verbose=2)
        print(f"trained {args.epochs} epochs in {time.perf_counter() - start:.0f} s")
        os.makedirs(os.path.dirname(args.model) or ".", exist_ok=True)
        model.save(args.model)

    extractor = example.digit_features(images[train], labels[train], SEED)

    def features(x):
        return extract_features(extractor, to_uint8(x))["pool"].astype("float64")

    real = FeatureStatistics.from_features(features(images[held_out]))
    settings = SamplingSettings(sampler="dopri5", cfg_scale=CFG, atol=ATOL, rtol=RTOL, clip_data=(-1.0, 1.0))
    lo, hi = model.transport.interval(model.transport.sample_eps)
    sample_labels = ops.convert_to_tensor(np.repeat(np.arange(10), args.per_class).astype("int32"))
    noise = keras.random.normal((len(sample_labels), *model.data_shape), seed=SEED)
    print(f"backend={keras.backend.backend()} keras={keras.__version__} samples={len(sample_labels)} cfg={CFG}")

    rows = []
    for control in ("batch", "example"):
        for first_step in (None, 0.05):

            def run(x, y, control=control, first_step=first_step):
                drift = guided_drift(model, settings, y)
                return dopri5(drift, x, hi, lo, ATOL, RTOL, first_step=first_step, control=control)

            with model_weights(model):
                fn = backend.compile_inference(model, run)
                start = time.perf_counter()
                x, nfe = fn(noise, sample_labels)
                x = ops.convert_to_numpy(x)
                first = time.perf_counter() - start
                start = time.perf_counter()
                x, nfe = fn(noise, sample_labels)
                x = ops.convert_to_numpy(x)
                warm = time.perf_counter() - start
            fd = FeatureStatistics.from_features(features(x)).frechet_distance(real)
            nfe = int(ops.convert_to_numpy(nfe))
            rows.append((control, "select" if first_step is None else first_step, nfe, warm, first, fd))
            print(rows[-1], flush=True)

    reference = torchdiffeq_nfe(model, settings, noise, sample_labels, lo, hi)
    if reference:
        nfe, seconds, x = reference
        reference = nfe, seconds, FeatureStatistics.from_features(features(x)).frechet_distance(real)
    print("\n| control | first step | NFE | warm time (s) | first call incl. compile (s) | digits FD |")
    print("| --- | --- | --- | --- | --- | --- |")
    for control, first_step, nfe, warm, first, fd in rows:
        print(f"| {control} | {first_step} | {nfe} | {warm:.1f} | {first:.1f} | {fd:.3f} |")
    if reference:
        print(
            f"| torchdiffeq dopri5 (upstream) | select | {reference[0]} | {reference[1]:.1f} | | {reference[2]:.3f} |"
        )


def model_weights(model):
    """The EMA weights when there are some, as `generate` samples with."""
    return model.ema_weights() if model.has_ema else contextlib.nullcontext()


def torchdiffeq_nfe(model, settings, noise, labels, lo, hi):
    try:
        import torch
        import torchdiffeq
    except ImportError:
        return None

    def velocity(x, t):
        return guided_drift(model, settings, labels)(x, t * ops.ones((x.shape[0],)))

    with model_weights(model):
        drift = backend.compile_inference(model, velocity)
        calls = [0]

        def f(t, y):
            calls[0] += 1
            out = drift(ops.convert_to_tensor(y.numpy()), ops.convert_to_tensor(float(t), "float32"))
            return torch.from_numpy(np.array(ops.convert_to_numpy(out)))

        start = time.perf_counter()
        y0 = torch.from_numpy(np.array(ops.convert_to_numpy(noise)))
        t = torch.tensor([hi, lo], dtype=torch.float64)
        out = torchdiffeq.odeint(f, y0, t, method="dopri5", atol=ATOL, rtol=RTOL)[-1].numpy()
        seconds = time.perf_counter() - start
    return calls[0], seconds, out


if __name__ == "__main__":
    main()
