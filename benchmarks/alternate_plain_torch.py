"""keras_sit on PyTorch against the plain PyTorch network, alternating steps in one process.

    KERAS_BACKEND=torch python benchmarks/alternate_plain_torch.py --rounds 8

Two processes minutes apart see different machine speeds (see the README's
"Performance"); one step of each in turn sees the same. Prints the mean and
median step time of each over `--rounds` rounds, after two warm-up steps.
"""

import argparse
import time

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="SiT-S/2")
    parser.add_argument("--input-shape", default="32,32,4", help="H,W,C")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)

    import keras

    if keras.backend.backend() != "torch":
        raise SystemExit("run with KERAS_BACKEND=torch")
    import keras_sit
    from plain_torch_sit import PlainTorchTrainer

    shape = tuple(int(v) for v in args.input_shape.split(","))
    sit = keras_sit.SiT.from_preset(args.preset, input_shape=shape, num_classes=args.num_classes, seed=0)
    sit.compile()
    plain = PlainTorchTrainer.from_preset(args.preset, input_shape=shape, num_classes=args.num_classes)
    models = {"keras_sit (torch)": sit, "plain torch": plain}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch_size, *shape)).astype("float32")
    labels = rng.integers(0, args.num_classes, args.batch_size).astype("int32")
    for model in models.values():
        for _ in range(2):
            model.train_on_batch(x, labels)
    times = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.train_on_batch(x, labels)
            times[name].append(time.perf_counter() - start)
    for name, seconds in times.items():
        print(f"{name:>18}: mean {1e3 * np.mean(seconds):.0f} ms, median {1e3 * np.median(seconds):.0f} ms a step, "
              f"{args.batch_size / np.mean(seconds):.2f} images/s")


if __name__ == "__main__":
    main()
