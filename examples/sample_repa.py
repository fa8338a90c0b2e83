"""Sample a REPA checkpoint as REPA's `generate.py` does: PNGs and the `.npz` of ADM's evaluator.

    KERAS_BACKEND=jax python examples/sample_repa.py --ckpt last.pt --encoder-depth 8 --vae sd-vae-ft-ema/ \\
        --mode sde --num-steps 250 --cfg-scale 1.8 --guidance-high 0.7 --num-fid-samples 50000

That is the setting of REPA's FID 1.42 for SiT-XL/2 (their figure). Download
the files yourself (keras_sit never downloads anything): the checkpoint from
REPA's repository (github.com/sihyun-yu/REPA, `last.pt`), or a `train.py`
checkpoint of your own, and the autoencoder `stabilityai/sd-vae-ft-ema` (a
diffusers folder) or its `.safetensors`. The flags are `generate.py`'s
(docs/checkpoints.md maps each to `generate`'s arguments).

The samples are drawn by the resumable runner (`generate_for_evaluation`):
run the same command again after a crash and it goes on after the last
finished chunk. It writes `SAMPLE_DIR/NAME/000000.png`, ... and
`SAMPLE_DIR/NAME.npz` (`arr_0`, uint8 NHWC), which ADM's evaluator and
`python -m keras_sit.evaluation` read. The labels are class-balanced, in a
seeded order (REPA draws them uniformly at random).
"""

import argparse
import os

import numpy as np
from PIL import Image

from keras_sit import LatentSiT
from keras_sit.convert import import_autoencoder, import_repa_checkpoint, repa_sampling_options
from keras_sit.evaluation import generate_for_evaluation


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="REPA's last.pt or a train.py checkpoint")
    parser.add_argument("--vae", required=True, help="diffusers folder or original .safetensors/.ckpt")
    parser.add_argument("--weights", choices=["ema", "model"], default="ema", help="of a train.py checkpoint")
    parser.add_argument("--encoder-depth", type=int, default=None, help="needed for a bare state dict (REPA: 8)")
    parser.add_argument("--num-heads", type=int, default=None, help="needed for a width that is no REPA preset's")
    parser.add_argument("--path-type", choices=["linear", "cosine"], default="linear")
    parser.add_argument("--mode", choices=["ode", "sde"], default="ode")
    parser.add_argument("--num-steps", type=int, default=50)
    parser.add_argument("--heun", action=argparse.BooleanOptionalAction, default=False, help="ODE only")
    parser.add_argument("--cfg-scale", type=float, default=1.5)
    parser.add_argument("--guidance-low", type=float, default=0.0)
    parser.add_argument("--guidance-high", type=float, default=1.0)
    parser.add_argument("--num-fid-samples", type=int, default=50_000)
    parser.add_argument("--per-proc-batch-size", type=int, default=32)
    parser.add_argument("--global-seed", type=int, default=0)
    parser.add_argument("--sample-dir", default="samples")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    options = repa_sampling_options(
        args.mode, args.num_steps, args.heun, args.cfg_scale, args.guidance_low, args.guidance_high
    )
    sit = import_repa_checkpoint(
        args.ckpt, weights=args.weights, encoder_depth=args.encoder_depth, num_heads=args.num_heads,
        path=args.path_type,
    )  # fmt: skip
    model = LatentSiT.from_sit(sit, import_autoencoder(args.vae))
    name = (
        f"{os.path.splitext(os.path.basename(args.ckpt))[0]}-size-{model.image_size}-cfg-{args.cfg_scale}"
        f"-seed-{args.global_seed}-{args.mode}{'-heun' if args.heun and args.mode == 'ode' else ''}"
        f"-{args.num_steps}"
    )
    folder = os.path.join(args.sample_dir, name)
    samples = generate_for_evaluation(
        model, folder + "-chunks", num_samples=args.num_fid_samples, batch_size=args.per_proc_batch_size,
        seed=args.global_seed, **options,
    )  # fmt: skip
    os.makedirs(folder, exist_ok=True)
    index = 0
    for chunk in samples.chunks():
        for image in chunk["images"]:
            Image.fromarray(np.asarray(image)).save(os.path.join(folder, f"{index:06d}.png"))
            index += 1
    samples.write_adm_npz(folder + ".npz")
    print(f"wrote {index} PNGs of {model.image_size}x{model.image_size} to {folder} and {folder}.npz ({options})")


if __name__ == "__main__":
    main()
