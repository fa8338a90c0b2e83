"""Train a latent SiT on a folder of images, as the paper trains on ImageNet, and write a sample grid.

    KERAS_BACKEND=jax python examples/train_latent.py --data DIR --vae sd-vae-ft-ema/ \\
        --image-size 256 --preset SiT-B/2 --epochs 80 --output-dir outputs/latent

`--data` is a folder with one sub-folder of images per class. `--vae` is Stable
Diffusion's KL autoencoder as users download it: a diffusers folder
(`config.json` and `diffusion_pytorch_model.safetensors`, e.g.
`stabilityai/sd-vae-ft-ema`) or an original checkpoint
(`vae-ft-ema-560000-ema-pruned.safetensors` or `.ckpt`); see
docs/latents.md. The images are encoded once into a latent cache
(`--cache`, resumable: run the same command again after a crash), the SiT
trains on it, and the script writes `latent_sit.keras` (the SiT and the
autoencoder in one file), `samples.png` (a row per class) and `loss.png`.

With `--repa DINOV2`, SiT trains with representation alignment (REPA): the
cache also stores DINOv2's patch tokens of each image (`DINOV2` is
`facebook/dinov2-base`'s `model.safetensors` or folder, or torch hub's
`dinov2_vitb14_pretrain.pth`), and the tokens of block `--repa-depth` are
aligned with them; see docs/repa.md.

The same script runs as many processes, on each backend's own launcher
(docs/distribution.md): `--batch-size` is then the global batch, every
process encodes its share of the cache and trains on its slice of each
batch, and only process 0 writes files:

    KERAS_BACKEND=torch torchrun --nproc_per_node=8 examples/train_latent.py --data DIR --vae VAE ...
"""

import argparse
import os

import numpy as np

import keras_sit  # first: with no backend configured, it picks an installed one before Keras loads

# isort: split
import keras

from keras_sit.convert import import_autoencoder, import_dinov2
from keras_sit.latents import ImageFolder, LatentDataset, write_latent_cache
from keras_sit.visualization import plot_losses, save_image_grid


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder of class sub-folders of images")
    parser.add_argument("--vae", required=True, help="diffusers folder or original .safetensors/.ckpt")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--cache", default=None, help="latent cache folder (default: OUTPUT_DIR/cache)")
    parser.add_argument("--preset", default="SiT-B/2", choices=sorted(keras_sit.PRESETS))
    parser.add_argument("--depth", type=int, default=None, help="override the preset's depth")
    parser.add_argument("--hidden-size", type=int, default=None, help="override the preset's width")
    parser.add_argument("--num-heads", type=int, default=None, help="override the preset's heads")
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--use-ema", action="store_true", help="keep an EMA of the weights (decay 0.9999)")
    parser.add_argument("--clipnorm", type=float, default=None, help="clip the global gradient norm (REPA: 1.0)")
    parser.add_argument("--normalize-latents", action="store_true", help="train on latents normalised per channel")
    parser.add_argument("--repa", default=None, metavar="DINOV2", help="align SiT with DINOv2 (weights file/folder)")
    parser.add_argument("--repa-depth", type=int, default=None, help="aligned block (8 if depth >= 24, else 4)")
    parser.add_argument("--repa-weight", type=float, default=None, help="the alignment term's weight (REPA: 0.5)")
    parser.add_argument("--irepa", action="store_true", help="iREPA: conv projector, spatially normalised tokens")
    parser.add_argument("--sampler", default="euler", help="euler, heun, rk4, dopri5, sde-euler, sde-heun, ...")
    parser.add_argument("--sampling-steps", type=int, default=50)
    parser.add_argument("--cfg-scale", type=float, default=4.0)
    parser.add_argument("--per-class", type=int, default=8, help="samples per class in the grid")
    parser.add_argument("--max-classes", type=int, default=10, help="rows of the grid")
    parser.add_argument("--output-dir", default="outputs/latent")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jax-auto-detect", action="store_true",
                        help="JAX: let jax.distributed find the job (Cloud TPU pod, SLURM, Open MPI)")  # fmt: skip
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # One process, or one of a job launched by torchrun, with TF_CONFIG or KERAS_DISTRIBUTION_* set, ...
    keras_sit.distribution.initialize(auto_detect=args.jax_auto_detect)
    chief = keras_sit.distribution.is_chief()
    keras.utils.set_random_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    with keras_sit.distribution.local():  # each process encodes its own shards of the cache
        encoder = import_autoencoder(args.vae)
    # The model's own copy: in a JAX job it lives on every process's devices.
    autoencoder = encoder if keras_sit.distribution.process_count() == 1 else import_autoencoder(args.vae)
    folder = ImageFolder(args.data, args.image_size)
    cache = args.cache or os.path.join(args.output_dir, "cache")
    overrides = {"depth": args.depth, "hidden_size": args.hidden_size, "num_heads": args.num_heads}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    teacher, objectives = None, []
    if args.repa:
        # The teacher's grid is SiT's: DINOv2 sees the image resized to 14 px per SiT token (224 px at 256).
        config = {**keras_sit.PRESETS[args.preset], **overrides}
        grid = args.image_size // autoencoder.downsampling_factor // config["patch_size"]
        with keras_sit.distribution.local():
            teacher = import_dinov2(args.repa, image_size=args.image_size, resized_size=14 * grid)
        objectives = [alignment(args, config["depth"], teacher.hidden_size)]
    if chief:
        print(f"encoding {len(folder)} images of {len(folder.class_names)} classes into {cache}")
    write_latent_cache(folder, encoder, cache, teachers=teacher)
    features = teacher is not None
    dataset = LatentDataset(
        cache, batch_size=args.batch_size, seed=args.seed, features=features, normalize=args.normalize_latents
    )

    model = keras_sit.LatentSiT.from_preset(
        args.preset,
        autoencoder=autoencoder,
        image_size=args.image_size,
        num_classes=len(folder.class_names),
        seed=args.seed,
        objectives=objectives,
        latent_statistics=dataset.statistics if args.normalize_latents else None,
        **overrides,
    )
    optimizer = keras_sit.AdamW(
        args.learning_rate, weight_decay=0.0, use_ema=args.use_ema, global_clipnorm=args.clipnorm
    )
    model.compile(optimizer=optimizer)
    if chief:
        print(f"backend={keras.backend.backend()} parameters={model.backbone.count_params():,} "
              f"latents={model.data_shape} processes={keras_sit.distribution.process_count()}")  # fmt: skip
    history = model.fit(dataset, epochs=args.epochs)
    model_path = os.path.join(args.output_dir, "latent_sit.keras")
    model.save(model_path)  # every process saves (a collective on JAX and TensorFlow); process 0 writes

    rows = min(len(folder.class_names), args.max_classes)
    labels = np.repeat(np.arange(rows), args.per_class)
    images = model.generate(
        len(labels),
        labels=labels,
        num_steps=args.sampling_steps,
        cfg_scale=args.cfg_scale,
        sampler=args.sampler,
        seed=args.seed,
        decode_batch_size=args.batch_size,
    )
    if not chief:
        return
    save_image_grid(images, os.path.join(args.output_dir, "samples.png"), rows=rows, value_range=(0, 255))
    plot_losses(history, os.path.join(args.output_dir, "loss.png"), title=f"latent SiT on {keras.backend.backend()}")
    print(f"wrote {model_path}, samples.png (rows: {', '.join(folder.class_names[:rows])}) and loss.png")


def alignment(args, depth, feature_dim):
    """REPA's (or iREPA's) objective on block `--repa-depth` against `feature_dim`-wide teacher tokens."""
    settings = {"depth": args.repa_depth or min(8 if depth >= 24 else 4, depth), "feature_dims": feature_dim}
    if args.repa_weight is not None:
        settings["weight"] = args.repa_weight
    if args.irepa:
        return keras_sit.RepresentationAlignment.irepa(**settings)
    return keras_sit.RepresentationAlignment(**settings)


if __name__ == "__main__":
    main()
