"""Sample the official SiT-XL/2 checkpoint as the paper's demo does and write a PNG grid.

    KERAS_BACKEND=jax python examples/sample_official.py --checkpoint SiT-XL-2-256x256.pt \\
        --vae sd-vae-ft-ema/ --labels 207 360 387 974 88 979 417 279 --cfg-scale 4

Download the two files yourself (keras_sit never downloads anything): the
SiT checkpoint from the official SiT repository (github.com/willisma/SiT,
`SiT-XL-2-256x256.pt`), and the autoencoder `stabilityai/sd-vae-ft-ema` (a
diffusers folder) or `vae-ft-ema-560000-ema-pruned.safetensors`; see
docs/checkpoints.md. The defaults are the official sampler's: the adaptive
ODE solver (dopri5, atol 1e-6, rtol 1e-3) and guidance on the first three
latent channels.
"""

import argparse

import numpy as np

import keras_sit
from keras_sit.convert import import_autoencoder, import_official_checkpoint
from keras_sit.visualization import save_image_grid


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="the official SiT .pt")
    parser.add_argument("--vae", required=True, help="diffusers folder or original .safetensors/.ckpt")
    parser.add_argument("--labels", type=int, nargs="+", default=[207, 360, 387, 974, 88, 979, 417, 279])
    parser.add_argument("--cfg-scale", type=float, default=4.0)
    parser.add_argument("--sampler", default="dopri5", help="dopri5, euler, heun, rk4, sde-euler, sde-heun, ...")
    parser.add_argument("--steps", type=int, default=250, help="steps of a fixed-step sampler")
    parser.add_argument("--guidance-channels", type=int, default=3, help="the official sampler guides 3 of 4")
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="official_samples.png")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    model = keras_sit.LatentSiT.from_sit(import_official_checkpoint(args.checkpoint), import_autoencoder(args.vae))
    images = model.generate(
        len(args.labels),
        labels=np.asarray(args.labels),
        cfg_scale=args.cfg_scale,
        sampler=args.sampler,
        num_steps=args.steps,
        guidance_channels=args.guidance_channels,
        seed=args.seed,
        verbose=1,
    )
    rows = args.rows if len(args.labels) % args.rows == 0 else 1
    save_image_grid(images, args.output, rows=rows, value_range=(0, 255))
    print(f"wrote {args.output}: {len(images)} images of {model.image_size}x{model.image_size}, labels {args.labels}")


if __name__ == "__main__":
    main()
