"""Load a saved SiT and write a grid of samples, one row per label.

    KERAS_BACKEND=jax python examples/sample.py outputs/sit.keras --labels 0 1 2 --per-label 8 \\
        --steps 50 --cfg-scale 2.0 --output outputs/grid.png

A model saved under one backend loads under any other. The grid goes to
`outputs/samples.png` unless `--output` says otherwise.
"""

import argparse
import os

import numpy as np

import keras_sit  # noqa: F401  (first: registers its classes for load_model and, with no backend set, picks one)

# isort: split
import keras

from keras_sit.visualization import save_image_grid


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a .keras file written by examples/train.py or SiT.save")
    parser.add_argument("--labels", type=int, nargs="*", default=None, help="default: every class")
    parser.add_argument("--per-label", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cfg-scale", type=float, default=2.0)
    parser.add_argument(
        "--sampler",
        default="euler",
        help="a registered sampler: euler, midpoint, heun, rk4, ab2, dopri5, sde-euler, sde-heun",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=os.path.join("outputs", "samples.png"))
    args = parser.parse_args(argv)

    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    model = keras.saving.load_model(args.model)  # needs `import keras_sit` first: it registers the classes
    if model.num_classes is None:
        rows, labels, cfg_scale = ["all"], None, 1.0
    else:
        rows = list(range(model.num_classes)) if args.labels is None else args.labels
        labels, cfg_scale = np.repeat(rows, args.per_label), args.cfg_scale
    samples = model.generate(
        len(rows) * args.per_label,
        labels=labels,
        num_steps=args.steps,
        cfg_scale=cfg_scale,
        seed=args.seed,
        sampler=args.sampler,
        clip_data=(-1.0, 1.0),  # the data range; see SiT.generate
    )
    if len(model.data_shape) != 3:
        np.save(os.path.splitext(args.output)[0] + ".npy", samples)
        print(f"wrote {len(samples)} vectors to {os.path.splitext(args.output)[0]}.npy")
        return
    save_image_grid(samples, args.output, rows=len(rows))
    print(f"wrote {args.output}: rows {rows}, {args.steps} {args.sampler} steps, cfg scale {cfg_scale}")


if __name__ == "__main__":
    main()
