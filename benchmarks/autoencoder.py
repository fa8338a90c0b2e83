"""Encoding and decoding speed of the Stable Diffusion autoencoder, the two ends of latent SiT.

    KERAS_BACKEND=jax python -m benchmarks.benchmark --mode autoencoder --image-size 256 --batch-size 4
    python -m benchmarks.benchmark --mode autoencoder --backends jax,tensorflow,torch --json autoencoder.json

Times `AutoencoderKL.encode_moments` as `keras_sit.latents.write_latent_cache`
calls it (each image with its mirror, so the figure is source images per
second into the cache) and `AutoencoderKL.decode` of scaled latents (images
per second out of `LatentSiT.generate`), with the SD configuration and
random weights, after one untimed call of each (compilation). Reports the
peak memory of the process (the device's on a GPU).
"""

import time

import numpy as np

WARMUP_CALLS = 1


def run(image_size, batch_size, repeats, precision="float32", config="sd"):
    """Time encode and decode; return a result row."""
    import keras

    from benchmarks.benchmark import peak_memory_bytes
    from benchmarks.common import device_name
    from keras_sit.autoencoders import AutoencoderKL

    if precision == "bfloat16":
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    autoencoder = AutoencoderKL.from_config_name(config, seed=0)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1.0, 1.0, (batch_size, image_size, image_size, 3)).astype("float32")
    both = np.concatenate([images, images[:, :, ::-1]])  # as the latent cache encodes them
    factor = autoencoder.downsampling_factor
    latents = rng.normal(size=(batch_size, image_size // factor, image_size // factor, autoencoder.latent_channels))
    latents = latents.astype("float32")

    def seconds(function, argument):
        start = time.perf_counter()
        for _ in range(WARMUP_CALLS):
            _numpy(function(argument))
        compile_s = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            _numpy(function(argument))
            times.append(time.perf_counter() - start)
        return float(np.median(times)), compile_s

    encode_s, encode_compile_s = seconds(autoencoder.encode_moments, both)
    decode_s, decode_compile_s = seconds(autoencoder.decode, latents)
    memory, memory_kind = peak_memory_bytes()
    return {
        "backend": keras.backend.backend(),
        "device": device_name(),
        "config": config,
        "image_size": image_size,
        "batch_size": batch_size,
        "precision": precision,
        "parameters": autoencoder.count_params(),
        "encode_images_per_s": batch_size / encode_s,
        "encode_first_call_s": encode_compile_s,
        "decode_images_per_s": batch_size / decode_s,
        "decode_first_call_s": decode_compile_s,
        "peak_memory_gib": memory / 2**30,
        "memory_kind": memory_kind,
    }


def _numpy(outputs):
    """Wait for the outputs (a tensor or a tuple of them) by fetching them."""
    import keras

    for output in outputs if isinstance(outputs, tuple) else (outputs,):
        keras.ops.convert_to_numpy(output)


COLUMNS = [
    ("backend", "backend", "{}"),
    ("encode_images_per_s", "encode img/s", "{:.2f}"),
    ("encode_first_call_s", "first encode s", "{:.1f}"),
    ("decode_images_per_s", "decode img/s", "{:.2f}"),
    ("decode_first_call_s", "first decode s", "{:.1f}"),
    ("peak_memory_gib", "memory GiB", "{:.2f}"),
]
