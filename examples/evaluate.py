"""FID-50K (with sFID, Inception Score, precision and recall) as the SiT paper reports it.

    KERAS_BACKEND=jax python examples/evaluate.py --checkpoint SiT-XL-2-256x256.pt --vae sd-vae-ft-ema/ \\
        --inception pt_inception-2015-12-05-6726825d.pth --reference VIRTUAL_imagenet256_labeled.npz \\
        --cfg-scale 1.5 --sampler sde-euler --steps 250 --output-dir outputs/fid50k

Draws `--num-samples` class-balanced samples (50,000) in resumable chunks
(run the same command again after a crash), passes them through the FID
Inception network, and compares them with ADM's reference batch. The model
is an official checkpoint with its autoencoder (`--checkpoint`, `--vae`) or a
saved `LatentSiT` (`--model latent_sit.keras`). The defaults are the paper's
SDE setting (Euler-Maruyama, 250 steps, sigma diffusion, mean last step,
guidance on the first three latent channels); docs/evaluation.md has the
files to download and the ODE setting. Writes `results.json` and, with
`--adm-npz`, the samples in ADM's format for its own evaluator.
"""

import argparse
import json
import os

import keras_sit  # first: registers its classes (for load_model) and, with no backend set, picks an installed one

# isort: split
import keras

from keras_sit.convert import import_autoencoder, import_fid_inception, import_official_checkpoint
from keras_sit.evaluation import evaluate, generate_for_evaluation, read_reference_batch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a saved LatentSiT (.keras)")
    parser.add_argument("--checkpoint", help="an official SiT .pt (with --vae)")
    parser.add_argument("--vae", help="diffusers folder or original .safetensors/.ckpt")
    parser.add_argument("--inception", required=True, help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument(
        "--reference", required=True, help="ADM's reference batch, e.g. VIRTUAL_imagenet256_labeled.npz"
    )
    parser.add_argument("--num-samples", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=125)
    parser.add_argument("--sampler", default="sde-euler")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--cfg-scale", type=float, default=1.5)
    parser.add_argument("--guidance-channels", type=int, default=3, help="latent channels guided (official SiT: 3)")
    parser.add_argument(
        "--guidance-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
        help="guide only where LO <= t <= HI (t=1 is noise); REPA samples with 0 0.7",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="outputs/evaluation")
    parser.add_argument("--adm-npz", action="store_true", help="also write samples.npz for ADM's evaluator")
    return parser.parse_args(argv)


def load_model(args):
    if args.model:
        return keras.saving.load_model(args.model)
    if not (args.checkpoint and args.vae):
        raise SystemExit("Give --model, or --checkpoint with --vae.")
    return keras_sit.LatentSiT.from_sit(import_official_checkpoint(args.checkpoint), import_autoencoder(args.vae))


def main(argv=None):
    args = parse_args(argv)
    model = load_model(args)
    inception = import_fid_inception(args.inception)
    guidance = {"cfg_scale": args.cfg_scale}
    if args.cfg_scale != 1.0:
        guidance["guidance_channels"] = args.guidance_channels
        if args.guidance_interval is not None:
            guidance["guidance_interval"] = tuple(args.guidance_interval)
    samples = generate_for_evaluation(
        model, os.path.join(args.output_dir, "samples"), num_samples=args.num_samples, batch_size=args.batch_size,
        feature_extractor=inception.features, seed=args.seed, sampler=args.sampler, num_steps=args.steps, **guidance,
    )  # fmt: skip
    results = evaluate(samples, read_reference_batch(args.reference, load_images=True), inception.features)
    results.update(num_samples=args.num_samples, sampler=args.sampler, steps=args.steps, **guidance)
    with open(os.path.join(args.output_dir, "results.json"), "w") as file:
        json.dump(results, file, indent=1)
    if args.adm_npz:
        samples.write_adm_npz(os.path.join(args.output_dir, "samples.npz"))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
