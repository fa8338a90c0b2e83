"""REPA on this machine: what `RepresentationAlignment` does for the digits model, and what a step costs.

    KERAS_BACKEND=jax python -m benchmarks.repa                        # both parts, the example's budget
    KERAS_BACKEND=jax python -m benchmarks.repa --part digits --seeds 0,1,2
    KERAS_BACKEND=torch python -m benchmarks.repa --part cost --steps 10
    KERAS_BACKEND=jax python -m benchmarks.repa --quick                # a short run of both parts

Run from the repository root. `--part digits` trains the model of
`examples/train.py` on scikit-learn's digits (its architecture, data split,
optimiser, batch and 40 epochs) twice from the same seed: without alignment,
and with `RepresentationAlignment` on the tokens of block `--align-depth`
(an MLP projector `--projector-dim` wide, weight 0.5) against the features of
a teacher read from the batch, as a latent cache holds them. The teacher is a
small CNN classifier trained on the same training digits, whose last feature
map lies on SiT's token grid (8x8 digits in 2x2 patches: 4x4 tokens, 64
channels). Both runs see the same initial backbone, batches, times, noise and
label drops, so they differ only by the alignment term. Every
`--quality-every` epochs each run reports the example's digits FD (the same
`FrechetDistance` callback and sampler settings: 500 class-balanced samples,
Euler, 50 steps, no guidance, against the held-out digits) and the
interpolant loss on the held-out digits at fixed times and noise; every epoch
the training loss and, for the aligned run, the alignment term (epoch means;
its interpolant loss is `loss - weight * alignment`, exact but for the last,
smaller batch of an epoch, which Keras' loss mean weighs by its size).

`--part cost` times training steps, after compilation, of a plain SiT and of
the same SiT with alignment, the teacher's tokens from the batch (cached) or
from a CNN teacher run in the step on the SiT's own `x` (online), for each
`--projector-dims` width (REPA's is 2048): one step of each model in turn for
`--steps` rounds, so that all see the machine at the same speed, and the
median of each model's step time over the plain one's in the same round. Two
sizes: the digits SiT (batch 64) and a latent-like SiT (width 256, depth 6,
16x16x4 in 2x2 patches, 64 tokens, batch 32) aligned with 768-wide tokens (as
DINOv2 ViT-B's). The projector's and the teacher's FLOPs are given as a
fraction of the SiT step's (matmuls and convolutions, multiply-adds x 2, a
training step 3 x forward; the teacher runs forward only), and "vs plain,
FLOPs" is the ratio those counts predict for a step bound by its FLOPs.

A benchmark, not a test: run it on a quiet machine. The printed tables are
Markdown.
"""

import argparse
import importlib.util
import os
import time

import numpy as np

import keras_sit  # first: with no backend configured, it picks an installed one before Keras loads

# isort: split
import keras
from keras import ops

from benchmarks.benchmark import forward_flops
from benchmarks.common import device_name
from keras_sit.callbacks import FrechetDistance
from keras_sit.functions import sit_loss
from keras_sit.objectives import RepresentationAlignment

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "train.py")
# The example's data split and digits-FD feature model take this seed, whatever the SiTs' seeds.
DATA_SEED = 0
WEIGHT = 0.5  # REPA's
# The interpolant loss on the held-out digits: each one this many times, at times and noise fixed by a seed.
HELD_OUT_REPEATS = 4
HELD_OUT_SEED = 1234


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.repa", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["all", "digits", "cost"], default="all")
    parser.add_argument(
        "--quick", action="store_true", help="a short run: 2 epochs, one small FD, the digits size only"
    )
    digits = parser.add_argument_group("--part digits")
    digits.add_argument("--epochs", type=int, default=40, help="the example's default")
    digits.add_argument("--batch-size", type=int, default=64, help="the example's default")
    digits.add_argument("--seeds", default="0", help="comma-separated: one pair of runs per seed")
    digits.add_argument("--align-depth", type=int, default=2, help="the aligned block of the SiT's 4")
    digits.add_argument("--projector-dim", type=int, default=256)
    digits.add_argument("--quality-every", type=int, default=10, help="epochs between digits FD figures")
    digits.add_argument("--quality-samples", type=int, default=500)
    digits.add_argument("--sampling-steps", type=int, default=50)
    cost = parser.add_argument_group("--part cost")
    cost.add_argument("--steps", type=int, default=10, help="timed rounds (one step of each model a round)")
    cost.add_argument("--warmup-steps", type=int, default=2, help="untimed steps of each model, the first compiles")
    cost.add_argument("--projector-dims", default="256,2048", help="comma-separated MLP projector widths")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.quality_every, args.quality_samples, args.sampling_steps = 2, 2, 100, 10
        args.steps, args.warmup_steps, args.projector_dims = 3, 1, "256"
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    args.projector_dims = [int(dim) for dim in args.projector_dims.split(",")]
    return args


def load_example():
    """examples/train.py, for its data, split and digits feature model (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("digits_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- models -----------------------------------------------------------------------------------


def digits_sit(seed, objectives=()):
    """The SiT of `examples/train.py` on the digits, compiled with its optimiser."""
    model = keras_sit.SiT(
        input_shape=(8, 8, 1), patch_size=2, hidden_size=128, depth=4, num_heads=4, num_classes=10, seed=seed,
        objectives=objectives,
    )  # fmt: skip
    model.compile(optimizer=keras_sit.AdamW(learning_rate=1e-3, weight_decay=0.0))
    return model


def cnn_teacher(input_shape, patch_size, widths, num_classes=None):
    """A small CNN whose last feature map lies on SiT's grid of `patch_size` patches.

    Returns `(tokens, classifier)`: `tokens` maps images to that map as
    tokens `[B, N, widths[-1]]`; `classifier` (with `num_classes`, else None)
    adds global pooling and a linear layer over the same layers, to train them.
    """
    inputs = keras.Input(input_shape)
    h = keras.layers.Conv2D(widths[0], 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(widths[1], patch_size, strides=patch_size, activation="relu")(h)
    grid = keras.layers.Conv2D(widths[2], 3, padding="same", activation="relu")(h)
    side = input_shape[0] // patch_size
    tokens = keras.Model(inputs, keras.layers.Reshape((side * side, widths[2]))(grid), name="teacher")
    if num_classes is None:
        return tokens, None
    logits = keras.layers.Dense(num_classes)(keras.layers.GlobalAveragePooling2D()(grid))
    return tokens, keras.Model(inputs, logits, name="teacher_classifier")


def digits_teacher(images, labels, held_out_images, held_out_labels, seed):
    """The CNN teacher trained to classify the training digits: its tokens model and held-out accuracy."""
    keras.utils.set_random_seed(seed)
    tokens, classifier = cnn_teacher(images.shape[1:], 2, (32, 64, 64), num_classes=10)
    classifier.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    classifier.fit(images, labels, batch_size=64, epochs=20, verbose=0)
    logits = ops.convert_to_numpy(classifier.predict(held_out_images, batch_size=256, verbose=0))
    return tokens, float(np.mean(np.argmax(logits, axis=-1) == held_out_labels))


def teacher_features(teacher, images, batch_size=256):
    """The teacher's tokens for `images`, as a feature cache holds them: `[N, tokens, C]` float32."""
    return np.asarray(ops.convert_to_numpy(teacher.predict(images, batch_size=batch_size, verbose=0)), "float32")


def conv_macs(model):
    """Multiply-adds of a forward pass of one example through `model`'s convolutions and dense layers."""
    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            height, width = layer.output.shape[1:3]
            kernel_h, kernel_w = layer.kernel_size
            macs += height * width * kernel_h * kernel_w * layer.input.shape[-1] * layer.filters
        elif isinstance(layer, keras.layers.Dense):
            macs += int(np.prod(layer.input.shape[1:])) * layer.units
    return macs


def projector_macs(num_tokens, hidden_size, projector_dim, feature_dim):
    """Multiply-adds of REPA's MLP projector on one example's tokens."""
    return num_tokens * (hidden_size * projector_dim + projector_dim * projector_dim + projector_dim * feature_dim)


# --- part 1: the digits comparison --------------------------------------------------------------


class HeldOutLoss(keras.callbacks.Callback):
    """Every `every` epochs, the interpolant loss on held-out data at fixed times and noise (`self.values`)."""

    def __init__(self, x, labels, every, repeats=HELD_OUT_REPEATS, seed=HELD_OUT_SEED):
        super().__init__()
        self.x = np.concatenate([x] * repeats)
        self.labels = ops.convert_to_tensor(np.concatenate([labels] * repeats).astype("int32"))
        self.every, self.seed = every, seed
        self.values = {}

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        model = self.model
        x = ops.convert_to_tensor(self.x)
        # The same draws every time and for every model: a fresh generator of a fixed seed.
        t = model.transport.sample_time(len(self.x), seed=keras.random.SeedGenerator(self.seed))
        noise = keras.random.normal(ops.shape(x), seed=self.seed + 1)
        pred = model.network({"x_t": model.interpolant.interpolate(x, noise, t), "t": t, "labels": self.labels})
        loss = sit_loss(pred, model.transport.target(x, noise, t), model.transport.example_weight(t))
        self.values[epoch + 1] = float(ops.convert_to_numpy(loss))


def train_digits(args, data, seed, align):
    """One run of the digits model: its digits FD, held-out loss and training curves."""
    train_x, train_y, features, held_out, held_out_y, extractor = data
    objectives = []
    if align:
        objectives = [
            RepresentationAlignment(depth=args.align_depth, feature_dims=features.shape[-1],
                                    projector_dim=args.projector_dim, weight=WEIGHT)
        ]  # fmt: skip
    keras.utils.set_random_seed(seed)
    model = digits_sit(seed, objectives)
    quality = FrechetDistance(held_out, extractor, num_samples=args.quality_samples, every=args.quality_every,
                              name="digits_fd", num_steps=args.sampling_steps, clip_data=(-1.0, 1.0))  # fmt: skip
    held_out_loss = HeldOutLoss(held_out, held_out_y, args.quality_every)
    x = {"x": train_x, "features": features} if align else train_x
    # Both runs from here alike: the same shuffles of the training digits (the model draws its own times and noise).
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    history = model.fit(x, train_y, batch_size=args.batch_size, epochs=args.epochs,
                        callbacks=[quality, held_out_loss], verbose=0).history  # fmt: skip
    seconds = time.perf_counter() - start
    alignment = np.array(history.get("alignment", np.zeros(len(history["loss"]))))
    return {
        "digits_fd": quality.values,
        "held_out_loss": held_out_loss.values,
        "loss": np.array(history["loss"]),
        "interpolant_loss": np.array(history["loss"]) - WEIGHT * alignment,
        "alignment": alignment if align else None,
        "seconds": seconds,
        "parameters": model.count_params(),
    }


def digits_comparison(args):
    example = load_example()
    images, labels, _ = example.load_digits_dataset()
    order = np.random.default_rng(DATA_SEED).permutation(len(images))
    held_out, train = order[: len(images) // 5], order[len(images) // 5 :]
    start = time.perf_counter()
    extractor = example.digit_features(images[train], labels[train], DATA_SEED)
    teacher, accuracy = digits_teacher(images[train], labels[train], images[held_out], labels[held_out], DATA_SEED)
    features = teacher_features(teacher, images[train])
    print(
        f"teacher: a CNN classifier, {accuracy:.1%} held-out accuracy, tokens {features.shape[1:]} "
        f"({time.perf_counter() - start:.1f} s with the digits-FD feature model and the cached features)",
        flush=True,
    )
    data = (images[train], labels[train], features, images[held_out], labels[held_out], extractor)
    runs = {}
    for seed in args.seeds:
        for align in (False, True):
            run = train_digits(args, data, seed, align)
            runs[seed, align] = run
            print(f"seed {seed} {'REPA' if align else 'plain'}: {run['seconds']:.0f} s, digits FD "
                  f"{format_values(run['digits_fd'])}", flush=True)  # fmt: skip
    steps = -(-len(train) // args.batch_size) * args.epochs
    first = runs[args.seeds[0], True]
    print(
        f"\n### Digits: {len(train)} training digits, {args.epochs} epochs ({steps} steps) of batch "
        f"{args.batch_size}, AdamW 1e-3; REPA on block {args.align_depth} of 4, MLP projector "
        f"{args.projector_dim} wide ({first['parameters'] - runs[args.seeds[0], False]['parameters']:,} "
        f"parameters), weight {WEIGHT}; digits FD of {args.quality_samples} samples, Euler {args.sampling_steps} "
        f"steps\n"
    )
    print(checkpoint_table(args, runs))
    over = f", the mean over seeds {', '.join(map(str, args.seeds))}" if len(args.seeds) > 1 else ""
    print(f"\nTraining curves (epoch means{over}):\n")
    print(curve_table(args, runs))
    return runs


def format_values(values):
    return ", ".join(f"epoch {epoch}: {value:.3f}" for epoch, value in values.items())


def checkpoint_table(args, runs):
    rows = [
        "| seed | epoch | digits FD plain | digits FD REPA | REPA - plain | held-out loss plain | held-out loss REPA |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    epochs = list(runs[args.seeds[0], False]["digits_fd"])
    for seed in args.seeds:
        plain, aligned = runs[seed, False], runs[seed, True]
        for epoch in epochs:
            a, b = plain["digits_fd"][epoch], aligned["digits_fd"][epoch]
            rows.append(
                f"| {seed} | {epoch} | {a:.3f} | {b:.3f} | {b - a:+.3f} | {plain['held_out_loss'][epoch]:.4f} | "
                f"{aligned['held_out_loss'][epoch]:.4f} |"
            )
    if len(args.seeds) > 1:
        for epoch in epochs:
            a = np.array([runs[seed, False]["digits_fd"][epoch] for seed in args.seeds])
            b = np.array([runs[seed, True]["digits_fd"][epoch] for seed in args.seeds])
            la = np.mean([runs[seed, False]["held_out_loss"][epoch] for seed in args.seeds])
            lb = np.mean([runs[seed, True]["held_out_loss"][epoch] for seed in args.seeds])
            rows.append(
                f"| mean (sd) | {epoch} | {a.mean():.3f} ({a.std(ddof=1):.3f}) | {b.mean():.3f} ({b.std(ddof=1):.3f}) "
                f"| {(b - a).mean():+.3f} ({(b - a).std(ddof=1):.3f}) | {la:.4f} | {lb:.4f} |"
            )
    return "\n".join(rows)


def curve_table(args, runs, rows_wanted=10):
    def mean(key, align):
        return np.mean([runs[seed, align][key] for seed in args.seeds], axis=0)

    plain, interpolant, alignment = mean("loss", False), mean("interpolant_loss", True), mean("alignment", True)
    every = max(1, args.epochs // rows_wanted)
    epochs = sorted({*range(every, args.epochs + 1, every), 1, args.epochs})
    rows = ["| epoch | loss plain | interpolant loss REPA | alignment REPA |", "|---:|---:|---:|---:|"]
    for epoch in epochs:
        i = epoch - 1
        rows.append(f"| {epoch} | {plain[i]:.4f} | {interpolant[i]:.4f} | {alignment[i]:+.4f} |")
    return "\n".join(rows)


# --- part 2: the step cost ----------------------------------------------------------------------


def cost_configs(quick):
    """The SiT sizes timed: (name, SiT arguments, batch, REPA depth, teacher widths)."""
    digits = dict(input_shape=(8, 8, 1), patch_size=2, hidden_size=128, depth=4, num_heads=4, num_classes=10)
    latent = dict(input_shape=(16, 16, 4), patch_size=2, hidden_size=256, depth=6, num_heads=4, num_classes=1000)
    configs = [("digits SiT", digits, 64, 2, (32, 64, 64))]
    if not quick:
        configs.append(("width 256, depth 6, 16x16x4", latent, 32, 2, (128, 256, 768)))
    return configs


def step_cost(args):
    results = []
    for name, sit_args, batch, depth, widths in cost_configs(args.quick):
        rows = time_steps(args, name, sit_args, batch, depth, widths)
        results += rows
        plain = rows[0]
        print(
            f"\n### Step cost: {name} ({plain['parameters']:,} parameters, {plain['tokens']} tokens), batch {batch}, "
            f"REPA on block {depth}, teacher tokens {widths[-1]} wide\n"
        )
        print(cost_table(rows))
    print(f"\n{repa_scale_projector_share()}")
    return results


def repa_scale_projector_share():
    """The projector's share of a training step's FLOPs at REPA's own scale, counted, not timed."""
    from keras_sit.presets import preset_config

    config = preset_config("SiT-XL/2", input_shape=(32, 32, 4), learn_sigma=True)
    tokens = (32 // config["patch_size"]) ** 2
    projector = 2 * projector_macs(tokens, config["hidden_size"], 2048, 768)
    share = projector / forward_flops(config, 1)  # forward over forward: a step is 3 x forward for both
    return (
        f"At REPA's scale (SiT-XL/2 on 32x32x4, {tokens} tokens, an MLP projector 2048 wide to DINOv2 ViT-B's "
        f"768) the projector is {share:.1%} of a training step's FLOPs (counted, not timed)."
    )


def time_steps(args, name, sit_args, batch, depth, widths):
    """Time each variant's training step, one step of each in turn a round; rows with the median ratios."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *sit_args["input_shape"])).astype("float32")
    labels = rng.integers(0, sit_args["num_classes"], batch).astype("int32")
    teacher, _ = cnn_teacher(sit_args["input_shape"], sit_args["patch_size"], widths)
    features = teacher_features(teacher, x)
    tokens, channels = features.shape[1:]
    variants = [("plain", None, None)]
    for dim in args.projector_dims:
        variants += [("cached", dim, None), ("online", dim, teacher)]
    models, inputs = [], []
    for _, dim, online in variants:
        objectives = []
        if dim is not None:
            objectives = [
                RepresentationAlignment(depth=depth, feature_dims=channels, projector_dim=dim, weight=WEIGHT,
                                        teachers=online, image_key="x")
            ]  # fmt: skip
        model = keras_sit.SiT(**sit_args, seed=0, objectives=objectives)
        model.compile(optimizer=keras_sit.AdamW(learning_rate=1e-4, weight_decay=0.0))
        models.append(model)
        inputs.append({"x": x, "features": features} if dim is not None and online is None else x)
    compile_s = []
    for model, data in zip(models, inputs):
        start = time.perf_counter()
        model.train_on_batch(data, labels)  # builds and compiles the step
        compile_s.append(time.perf_counter() - start)
        for _ in range(args.warmup_steps - 1):
            model.train_on_batch(data, labels)
    seconds = np.zeros((args.steps, len(models)))
    for step in range(args.steps):
        for i, (model, data) in enumerate(zip(models, inputs)):
            start = time.perf_counter()
            logs = model.train_on_batch(data, labels, return_dict=True)  # numbers: the step has finished
            seconds[step, i] = time.perf_counter() - start
            if not np.isfinite(logs["loss"]):
                raise RuntimeError(f"{variants[i][0]} training loss is {logs['loss']}")
    sit_flops = 3 * forward_flops(models[0].get_config(), batch)
    teacher_flops = 2 * conv_macs(teacher) * batch
    rows = []
    for i, (variant, dim, online) in enumerate(variants):
        projector = 0 if dim is None else 3 * 2 * batch * projector_macs(tokens, sit_args["hidden_size"], dim, channels)
        rows.append({
            "config": name, "variant": variant, "projector_dim": dim, "batch_size": batch, "tokens": tokens,
            "parameters": models[i].count_params(), "compile_s": compile_s[i],
            "step_ms": 1e3 * float(np.median(seconds[:, i])),
            "vs_plain": float(np.median(seconds[:, i] / seconds[:, 0])),
            "projector_share": projector / sit_flops,
            "teacher_share": teacher_flops / sit_flops if online is not None else 0.0,
        })  # fmt: skip
    return rows


def cost_table(rows):
    lines = [
        "| variant | projector | ms/step | vs plain, timed | vs plain, FLOPs | projector FLOPs / step "
        "| teacher FLOPs / step | compile s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        projector = "-" if row["projector_dim"] is None else str(row["projector_dim"])
        lines.append(
            f"| {row['variant']} | {projector} | {row['step_ms']:.1f} | {row['vs_plain']:.2f}x | "
            f"{1 + row['projector_share'] + row['teacher_share']:.2f}x | {row['projector_share']:.1%} | "
            f"{row['teacher_share']:.1%} | {row['compile_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    print(f"backend={keras.backend.backend()} device={device_name()} keras={keras.__version__}", flush=True)
    results = {}
    start = time.perf_counter()
    if args.part in ("all", "digits"):
        results["digits"] = digits_comparison(args)
    if args.part in ("all", "cost"):
        results["cost"] = step_cost(args)
    print(f"\n({time.perf_counter() - start:.0f} s)")
    return results


if __name__ == "__main__":
    main()
