"""Train a class-conditional SiT and write a model, a sample grid and a loss plot.

    KERAS_BACKEND=jax python examples/train.py                  # scikit-learn digits
    KERAS_BACKEND=torch python examples/train.py --data DIR --image-size 32
    KERAS_BACKEND=jax python examples/train.py --mean-flow --quality-steps 1 2 50   # one-step model

With no `--data`, it trains on scikit-learn's `load_digits` (1,797 8x8 digits
that ship with the package). `--data DIR` takes a folder with one sub-folder
of images per class, read with Pillow on any backend
(`keras_sit.latents.ImageFolder`: each image center-cropped and resized to
`--image-size`, as ADM and SiT prepare ImageNet) and held in memory.

On the digits it also measures sample quality while training: a fifth of the
digits is held out, and every `--quality-every` epochs the Frechet distance
between samples and the held-out digits is computed on the features of a
small digit classifier trained on the rest ("digits FD", lower is better; the
FID Inception network needs 299x299 photographs and downloaded weights, so it
suits neither 8x8 digits nor an offline example). It is logged as
`digits_fd` and plotted beside the loss in `loss.png` (with several
`--quality-steps`, one figure per step count, `digits_fd_<steps>`).

`--mean-flow` trains the same network as a MeanFlow model
(`keras_sit.objectives.MeanFlow`), which samples in one or two steps with
the `mean-flow` sampler (docs/few-step.md).
"""

import argparse
import os

import numpy as np

import keras_sit  # first: with no backend configured, it picks an installed one before Keras loads

# isort: split
import keras

from keras_sit.callbacks import FrechetDistance
from keras_sit.latents import ImageFolder
from keras_sit.visualization import plot_losses, save_image_grid, to_float


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--output-dir", default="outputs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--precision",
        choices=["float32", "bfloat16"],
        default="float32",
        help="bfloat16: the network computes in bf16 (`mixed_bfloat16`: float32 weights, loss and sampler)",
    )
    parser.add_argument("--data", default=None, help="folder of class sub-folders of images (default: digits)")
    parser.add_argument("--image-size", type=int, default=32, help="side length images are resized to with --data")
    parser.add_argument("--path", default="linear", choices=["linear", "cosine", "vp"])
    parser.add_argument("--prediction", default="velocity", choices=["velocity", "score", "noise"])
    parser.add_argument(
        "--sampler",
        default=None,
        help="a registered sampler: euler, midpoint, heun, rk4, ab2, dopri5, sde-euler, sde-heun, mean-flow "
        "(default: euler, or mean-flow with --mean-flow)",
    )
    parser.add_argument("--sampling-steps", type=int, default=None, help="default: 50, or 1 with --mean-flow")
    parser.add_argument("--cfg-scale", type=float, default=None, help="default: 2, or 1 with --mean-flow")
    parser.add_argument("--mean-flow", action="store_true", help="train a one-step model with MeanFlow")
    parser.add_argument("--omega", type=float, default=1.0, help="MeanFlow's guidance folded into training")
    parser.add_argument("--kappa", type=float, default=0.0, help="MeanFlow's guidance mix (see MeanFlow)")
    parser.add_argument("--quality-every", type=int, default=10, help="epochs between digits FD figures (0: none)")
    parser.add_argument(
        "--quality-steps",
        type=int,
        nargs="+",
        default=None,
        help="sampling steps of each digits FD (default: --sampling-steps)",
    )
    parser.add_argument("--quality-samples", type=int, default=500, help="samples for each digits FD figure")
    return parser.parse_args(argv)


def load_digits_dataset():
    """Digits as `[N, 8, 8, 1]` in [-1, 1] and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype("float32") / 16.0 * 2.0 - 1.0
    return images[..., None], digits.target.astype("int32"), [str(i) for i in range(10)]


def digit_features(images, labels, seed):
    """A feature extractor for digits: the 64-d hidden layer of a small classifier trained on `images`.

    Frechet distances need features in which real digits cluster by what
    they look like; a classifier's last hidden layer is the standard choice
    for small images (as LeNet features are for MNIST).
    """
    keras.utils.set_random_seed(seed)
    classifier = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(64, activation="relu", name="features"), keras.layers.Dense(10),
    ])  # fmt: skip
    classifier.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    classifier.fit(images, labels, batch_size=64, epochs=30, verbose=0)
    features = keras.Model(classifier.inputs[0], classifier.get_layer("features").output)

    def extract(rgb_uint8):  # the callback hands over uint8 RGB; the digits are one channel in [-1, 1]
        return features(rgb_uint8[..., :1].astype("float32") / 127.5 - 1.0)

    return extract


def load_folder_dataset(directory, image_size):
    """A folder of class sub-folders as images `[N, S, S, 3]` in [-1, 1], their labels and the class names."""
    folder = ImageFolder(directory, image_size)
    pairs = [folder[i] for i in range(len(folder))]
    images = to_float(np.stack([image for image, _ in pairs]))
    return images, np.array([label for _, label in pairs], "int32"), folder.class_names


def main(argv=None):
    args = parse_args(argv)
    if args.sampling_steps is None:
        args.sampling_steps = 1 if args.mean_flow else 50
    if args.cfg_scale is None:
        args.cfg_scale = 1.0 if args.mean_flow else 2.0
    keras.utils.set_random_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    callbacks, quality = [], None
    if args.data is None:
        images, labels, class_names = load_digits_dataset()
        order = np.random.default_rng(args.seed).permutation(len(images))
        held_out, train = order[: len(images) // 5], order[len(images) // 5 :]
        fit_args = dict(x=images[train], y=labels[train], batch_size=args.batch_size)
        input_shape = images.shape[1:]
        if args.quality_every:
            extractor = digit_features(images[train], labels[train], args.seed)
            steps = args.quality_steps or [args.sampling_steps]
            quality = {
                n: FrechetDistance(images[held_out], extractor, num_samples=args.quality_samples,
                                   every=args.quality_every, name="digits_fd" if len(steps) == 1 else f"digits_fd_{n}",
                                   num_steps=n, clip_data=(-1.0, 1.0),
                                   **({} if args.sampler is None else {"sampler": args.sampler}))
                for n in steps
            }  # fmt: skip
            callbacks.extend(quality.values())
    else:
        images, labels, class_names = load_folder_dataset(args.data, args.image_size)
        print(f"read {len(images)} images of {len(class_names)} classes from {args.data}")
        fit_args = dict(x=images, y=labels, batch_size=args.batch_size)
        input_shape = images.shape[1:]

    mean_flow = {}
    if args.mean_flow:  # MeanFlow's network embeds raw times, as its official code does
        objective = keras_sit.objectives.MeanFlow(omega=args.omega, kappa=args.kappa)
        mean_flow = dict(objectives=[objective], time_embedding_scale=1.0)
    model = keras_sit.SiT(
        **mean_flow,
        input_shape=input_shape,
        patch_size=2 if input_shape[0] <= 16 else 4,
        hidden_size=128,
        depth=4,
        num_heads=4,
        num_classes=len(class_names),
        path=args.path,
        prediction=args.prediction,
        seed=args.seed,
        dtype="mixed_bfloat16" if args.precision == "bfloat16" else None,
    )
    model.compile(optimizer=keras_sit.AdamW(learning_rate=args.learning_rate, weight_decay=0.0))
    print(
        f"backend={keras.backend.backend()} parameters={model.count_params():,} data={input_shape} "
        f"path={args.path} prediction={args.prediction} precision={args.precision}"
        + (" objective=MeanFlow" if args.mean_flow else "")
    )
    history = model.fit(**fit_args, epochs=args.epochs, callbacks=callbacks)
    print(f"final loss {history.history['loss'][-1]:.4f}")
    for steps, callback in (quality or {}).items():
        figures = ", ".join(f"epoch {epoch}: {value:.3f}" for epoch, value in callback.values.items())
        print(f"digits FD at {steps} steps (held-out digits, {args.quality_samples} samples): {figures}")

    model_path = os.path.join(args.output_dir, "sit.keras")
    model.save(model_path)
    per_class = 10
    labels = np.repeat(np.arange(len(class_names)), per_class)
    samples = model.generate(
        len(labels),
        labels=labels,
        num_steps=args.sampling_steps,
        cfg_scale=args.cfg_scale,
        seed=args.seed,
        clip_data=(-1.0, 1.0),  # the data range; see SiT.generate
        **({} if args.sampler is None else {"sampler": args.sampler}),
    )
    save_image_grid(samples, os.path.join(args.output_dir, "samples.png"), rows=len(class_names))
    metrics = {f"digits FD, {n} steps": c.values for n, c in (quality or {}).items() if c.values} or None
    plot_losses(history, os.path.join(args.output_dir, "loss.png"), title=f"SiT on {keras.backend.backend()}",
                metrics=metrics)  # fmt: skip
    print(f"wrote {model_path}, samples.png (one row per class: {', '.join(class_names)}) and loss.png")


if __name__ == "__main__":
    main()
