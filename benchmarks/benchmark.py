"""Training and sampling speed of a SiT preset, as a fraction of the measured matmul peak.

    KERAS_BACKEND=jax python -m benchmarks.benchmark                    # SiT-S/2, 32x32x4, batch 16
    python -m benchmarks.benchmark --backends jax,tensorflow,torch,plain-torch --json bench.json
    python -m benchmarks.benchmark --preset SiT-XL/2 --batch-size 64 --precision bfloat16
    python -m benchmarks.benchmark --mode alternate --preset SiT-S/8 --rounds 10
    python -m benchmarks.benchmark --mode kernel-floor --repeats 10
    python -m benchmarks.benchmark --mode autoencoder --backends jax,tensorflow,torch --image-size 256

Run from the repository root. `--mode benchmark` (the default) reports,
after warm-up: training images/s (compile time apart), sampling images/s for
a sampler and step count with its NFE, the achieved FLOP/s from an analytic
count (multiply-adds x 2; training = 3 x forward), that FLOP/s as a fraction
of the sustained `matmul` FLOP/s measured with the same backend and
precision between the timed steps (`MatmulPeak`), and peak memory. With
`--backends` each backend runs in its own process (a process holds one Keras
backend) and the rows come back as one table; `plain-torch` is the same
network in plain PyTorch eager (`benchmarks/plain_torch_sit.py`).

The other modes are the PyTorch comparisons, on Keras' torch backend:
`--mode alternate` trains keras_sit and the plain PyTorch network a step of
each in turn in one process (`benchmarks/alternate.py`), and
`--mode kernel-floor` times only the kernels an eager PyTorch step cannot
avoid, the most such a step could reach (`benchmarks/kernel_floor.py`).
`--mode autoencoder` times encoding into a latent cache and decoding samples
with the Stable Diffusion autoencoder (`benchmarks/autoencoder.py`).

A benchmark, not a test: run it on a quiet machine.
"""

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import JIT_COMPILE, MatmulPeak, device_name, parse_shape, sit_model, training_batch

# The per-backend subprocesses run `python -m benchmarks.benchmark` from here.
REPO_ROOT = Path(__file__).resolve().parent.parent

MODES = ("benchmark", "alternate", "kernel-floor", "autoencoder")

# Seconds of timed training steps between two matmul-peak windows.
PEAK_WINDOW_EVERY_S = 1.0

# The modes that read each option; giving one to another mode is an error rather than silently ignored.
OPTION_MODES = {
    "preset": ("benchmark", "alternate", "kernel-floor"),
    "input_shape": ("benchmark", "alternate", "kernel-floor"),
    "batch_size": MODES,
    "backends": ("benchmark", "autoencoder"),
    "precision": ("benchmark", "autoencoder"),
    "json": ("benchmark", "autoencoder"),
    "image_size": ("autoencoder",),
    "num_classes": ("benchmark", "alternate"),
    "hidden_size": ("benchmark", "alternate"),
    "depth": ("benchmark", "alternate"),
    "num_heads": ("benchmark", "alternate"),
    "jit_compile": ("benchmark", "alternate"),
    "peak_size": ("benchmark", "kernel-floor"),
    "rounds": ("alternate",),
    "repeats": ("kernel-floor", "autoencoder"),
}  # every other option: "benchmark" only


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="benchmark",
        help="benchmark (default): the full benchmark; alternate: keras_sit against plain PyTorch "
        "in one process; kernel-floor: the best fraction of peak of an eager PyTorch step",
    )
    parser.add_argument("--preset", default="SiT-S/2")
    parser.add_argument("--input-shape", default="32,32,4", help="H,W,C")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-classes", type=int, default=1000, help="benchmark and alternate modes")
    for name in ("hidden-size", "depth", "num-heads"):
        parser.add_argument(f"--{name}", type=int, help="benchmark and alternate modes: override the preset's")
    parser.add_argument(
        "--jit-compile",
        default="auto",
        type=str.lower,
        choices=list(JIT_COMPILE),
        help="benchmark and alternate modes: 'auto' (default: SiT's, XLA on JAX and TensorFlow, eager "
        "PyTorch), 'true' or 'false' (torch: true = torch.compile)",
    )
    parser.add_argument(
        "--peak-size",
        type=int,
        help="benchmark and kernel-floor modes: side of the square matmul that measures the peak "
        "(default: best of 1024-3072 on CPU, 8192 on GPU)",
    )

    full = parser.add_argument_group("--mode benchmark")
    full.add_argument(
        "--backends",
        help="comma-separated: run each in its own process and print one table; "
        "`plain-torch` is the same network in plain PyTorch eager (benchmarks/plain_torch_sit.py)",
    )
    full.add_argument(
        "--precision",
        type=precisions,
        default="float32",
        help="float32, bfloat16 (the `mixed_bfloat16` policy, float32 variables), or both comma-separated: "
        "each backend at each (plain-torch, the anchor, in float32 only)",
    )
    full.add_argument("--train-steps", type=int, default=10, help="timed steps after warm-up")
    full.add_argument("--warmup-steps", type=int, default=2)
    full.add_argument("--sampler", default="euler")
    full.add_argument("--sampling-steps", type=int, default=50)
    full.add_argument("--sampling-batch-size", type=int, help="default: --batch-size")
    full.add_argument("--cfg-scale", type=float, default=1.0)
    full.add_argument("--skip-sampling", action="store_true")
    full.add_argument(
        "--overhead-rounds",
        type=int,
        default=3,
        help="pairs of a short sampling run and as many forward passes, for the per-step overhead",
    )
    full.add_argument("--overhead-steps", type=int, default=10, help="sampling steps of each overhead round")
    full.add_argument(
        "--profile",
        action="store_true",
        help="also time the forward pass of each part of a block (compiled alone) against its FLOPs",
    )
    full.add_argument(
        "--plain-torch", action="store_true", help="train the plain PyTorch network instead (training only)"
    )
    full.add_argument("--json", help="write the results here")

    parser.add_argument_group("--mode alternate").add_argument(
        "--rounds", type=int, default=8, help="rounds of one timed step of each network"
    )
    parser.add_argument_group("--mode kernel-floor and --mode autoencoder").add_argument(
        "--repeats", type=int, default=5, help="timings of each kernel or call (the median counts)"
    )
    parser.add_argument_group("--mode autoencoder").add_argument(
        "--image-size", type=int, default=256, help="side of the images encoded and decoded"
    )
    return parser


def precisions(text):
    """`--precision`: "float32", "bfloat16" or a comma-separated list of them, checked."""
    names = text.split(",")
    if any(name not in ("float32", "bfloat16") for name in names):
        raise argparse.ArgumentTypeError(f"expected float32, bfloat16 or both comma-separated; got {text!r}")
    return text


def size_overrides(args):
    """The architecture sizes given on the command line, as preset overrides."""
    sizes = {"hidden_size": args.hidden_size, "depth": args.depth, "num_heads": args.num_heads}
    return {name: value for name, value in sizes.items() if value is not None}


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for key, value in vars(args).items():
        modes = OPTION_MODES.get(key, ("benchmark",))
        if key != "mode" and value != parser.get_default(key) and args.mode not in modes:
            parser.error(f"--{key.replace('_', '-')} does not apply to --mode {args.mode}")
    return args


# --- FLOP count -----------------------------------------------------------------------------


def forward_flops(config, batch_size):
    """Multiply-adds x 2 of one forward pass of the backbone (the matmuls; elementwise work is ignored)."""
    height, width, channels = config["input_shape"]
    p, d, depth = config["patch_size"], config["hidden_size"], config["depth"]
    mlp = int(d * config.get("mlp_ratio", 4.0))
    tokens = (height // p) * (width // p)
    out_channels = channels * (2 if config.get("learn_sigma") else 1)
    per_block = (
        tokens * d * 3 * d  # qkv
        + 2 * tokens * tokens * d  # q k^T and attention x v
        + tokens * d * d  # attention output projection
        + 2 * tokens * d * mlp  # MLP
        + d * 6 * d  # adaLN modulation (per example)
    )
    macs = (
        depth * per_block
        + tokens * p * p * channels * d  # patch embedding
        + 256 * d
        + d * d  # timestep MLP
        + d * 2 * d
        + tokens * d * p * p * out_channels  # final adaLN and projection
    )
    return 2 * macs * batch_size


# --- measurements ---------------------------------------------------------------------------


def peak_memory_bytes():
    """Peak resident memory of this process (CPU), or the accelerator's peak allocation."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            stats = jax.devices()[0].memory_stats()
            if stats and "peak_bytes_in_use" in stats:
                return stats["peak_bytes_in_use"], "device"
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                return torch.cuda.max_memory_allocated(), "device"
        elif backend == "tensorflow":
            import tensorflow as tf

            if tf.config.list_physical_devices("GPU"):
                return tf.config.experimental.get_memory_info("GPU:0")["peak"], "device"
    except Exception:  # memory statistics are best effort
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "host RSS"


def benchmark(args):
    """The full benchmark of one backend in this process: the result's dictionary (one table row)."""
    import keras

    backend = keras.backend.backend()
    if args.precision == "bfloat16" and not args.plain_torch:
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    shape = parse_shape(args.input_shape)
    if args.plain_torch:
        from benchmarks.plain_torch_sit import PlainTorchTrainer

        model = PlainTorchTrainer.from_preset(
            args.preset, input_shape=shape, num_classes=args.num_classes, **size_overrides(args)
        )
        config = model.config
        backend, args.precision, args.profile = "plain torch", "float32", False  # the float32 anchor
    else:
        model = sit_model(args.preset, shape, args.num_classes, args.jit_compile, **size_overrides(args))
        config = model.get_config()
    batch = args.batch_size
    x, labels = training_batch(batch, shape, args.num_classes)

    start = time.perf_counter()
    model.train_on_batch(x, labels)  # builds and compiles the step
    compile_s = time.perf_counter() - start
    for _ in range(args.warmup_steps - 1):
        model.train_on_batch(x, labels)
    peak = MatmulPeak(args.precision, args.peak_size)
    step_s, since_window = 0.0, math.inf
    for _ in range(args.train_steps):
        # A matmul window before each step of a large model, before each second of steps of a small
        # one: a step right after a window runs cold, which would hide the per-step cost.
        if since_window >= PEAK_WINDOW_EVERY_S:
            peak.measure()
            since_window = 0.0
        start = time.perf_counter()
        loss = model.train_on_batch(x, labels)  # returns the loss as a number: the step has finished
        elapsed = time.perf_counter() - start
        step_s += elapsed / args.train_steps
        since_window += elapsed
    peak.measure()
    if not np.isfinite(loss):
        raise RuntimeError(f"training loss is {loss}")

    train_flops = 3 * forward_flops(config, batch) / step_s
    result = {
        "backend": backend,
        "device": device_name(),
        "preset": args.preset,
        "hidden_size": config["hidden_size"],
        "depth": config["depth"],
        "num_heads": config["num_heads"],
        "input_shape": list(shape),
        "num_classes": args.num_classes,
        "batch_size": batch,
        "precision": args.precision,
        "parameters": model.count_params(),
        "forward_gflop_per_image": forward_flops(config, 1) / 1e9,
        "matmul_peak_size": peak.size,
        "train_step": step_kind(backend, getattr(model, "jit_compile", False)),
        "train_compile_s": compile_s,
        "train_step_s": step_s,
        "train_images_per_s": batch / step_s,
        "train_gflops": train_flops / 1e9,
        "train_fraction_of_peak": train_flops / peak.rate,
        "train_matmul_peak_gflops": peak.rate / 1e9,
    }
    if not args.skip_sampling:
        result.update(sampling(args, model, config, labels, peak))
    if args.profile:
        result["profile"] = profile_block(model, batch, peak.rate)
    memory, where = peak_memory_bytes()
    result.update(peak_memory_gib=memory / 2**30, memory_measured=where, matmul_best_run_gflops=peak.best_run / 1e9)
    return result


def sampling(args, model, config, labels, peak):
    """Sampling speed, its fraction of the peak and the sampling loop's overhead, as result entries."""
    import keras_sit

    shape, batch = tuple(config["input_shape"]), args.sampling_batch_size or args.batch_size
    if batch <= len(labels):
        sample_labels = labels[:batch]
    else:
        sample_labels = np.random.default_rng(1).integers(0, args.num_classes, batch).astype("int32")
    options = dict(labels=sample_labels, num_steps=args.sampling_steps, sampler=args.sampler, cfg_scale=args.cfg_scale,
                   verbose=0)  # fmt: skip
    start = time.perf_counter()
    model.generate(batch, seed=0, **options)  # compiles the loop
    first_s = time.perf_counter() - start
    # Sampling is compared with the peak around its own run.
    sample_s, sample_peak = peak.around(lambda: model.generate(batch, seed=1, **options))
    ode = args.sampler in keras_sit.sampling.sampler_names(kind="ode", adaptive=False)  # fixed-step ODE
    nfe = keras_sit.sampling.ode_nfe(args.sampler, args.sampling_steps) if ode else None
    result = {
        "sampler": args.sampler,
        "sampling_steps": args.sampling_steps,
        "sampling_batch_size": batch,
        "nfe": nfe,
        "sample_compile_s": max(first_s - sample_s, 0.0),
        "sample_s": sample_s,
        "sample_images_per_s": batch / sample_s,
    }
    if nfe is None:
        return result
    guided = 2 if args.cfg_scale != 1.0 else 1  # classifier-free guidance evaluates a doubled batch
    sample_flops = nfe * forward_flops(config, guided * batch) / sample_s
    result.update(
        sample_gflops=sample_flops / 1e9,
        sample_fraction_of_peak=sample_flops / sample_peak,
        sample_matmul_peak_gflops=sample_peak / 1e9,
    )
    if args.plain_torch:  # its loop is plain Python: no overhead rounds
        return result
    short = {**options, "num_steps": args.overhead_steps}
    ratios, forward_s = sampling_overhead(
        lambda: model.generate(batch, seed=2, **short),
        keras_sit.sampling.ode_nfe(args.sampler, args.overhead_steps),
        model,
        guided * batch,
        shape,
        args.num_classes,
        args.overhead_rounds,
    )
    result.update(
        forward_s=forward_s,
        overhead_sampling_steps=args.overhead_steps,
        sampling_overhead_rounds=ratios,
        sampling_overhead_per_step=float(np.median(ratios)),
        loop_cost_per_step=loop_seconds_per_evaluation(model, args.sampler, batch, shape) / forward_s,
    )
    return result


def step_kind(backend, jit_compile):
    """How the training step runs: "XLA", "torch.compile", "graph" (TensorFlow without XLA) or "eager"."""
    if jit_compile:
        return "torch.compile" if backend == "torch" else "XLA"
    return "graph" if backend == "tensorflow" else "eager"


def sampling_overhead(sample, nfe, model, batch, shape, num_classes, rounds):
    """The compiled sampling loop's cost a step outside the network, as a fraction of one forward pass.

    Alternates, `rounds` times, one run of `sample` (a loop of `nfe` network
    evaluations) with `nfe` compiled forward passes, each called from Python
    and fetched. Each pair takes seconds, back to back, so both see the
    machine at the same speed; on a shared machine whose speed drifts, one
    long run against a few passes minutes later would not. Returns each
    round's `loop / forwards - 1`, and the mean seconds of one forward pass.
    """
    from keras import ops

    from keras_sit import backend

    rng = np.random.default_rng(1)
    x = ops.convert_to_tensor(rng.standard_normal((batch, *shape)).astype("float32"))
    t = ops.convert_to_tensor(rng.uniform(size=batch).astype("float32"))
    labels = ops.convert_to_tensor(rng.integers(0, num_classes, batch).astype("int32"))
    forward = backend.compile_inference(model, lambda x, t, labels: model.guided_output(x, t, labels))
    ops.convert_to_numpy(forward(x, t, labels))
    sample()  # compiles the loop for this step count
    ratios, forward_seconds = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        sample()
        loop_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(nfe):
            ops.convert_to_numpy(forward(x, t, labels))
        forward_seconds.append((time.perf_counter() - start) / nfe)
        ratios.append(loop_s / (nfe * forward_seconds[-1]) - 1)
    return ratios, float(np.mean(forward_seconds))


def loop_seconds_per_evaluation(model, sampler, batch, shape, num_steps=200, repeats=3):
    """Seconds the compiled sampling loop spends a network evaluation outside the network.

    The loop of `generate` (`sampling.integrate_ode`, compiled as `generate`
    compiles it) around a drift that costs nothing, `drift(x, t) = x`:
    the time grid, the solver's update and the loop itself. Best of
    `repeats`. Unlike the rounds of `sampling_overhead`, this is far below
    the machine's noise.
    """
    from keras import ops

    from keras_sit import backend, sampling

    x = ops.convert_to_tensor(np.random.default_rng(2).standard_normal((batch, *shape)).astype("float32"))
    loop = backend.compile_inference(model, lambda x: sampling.integrate_ode(lambda x, t: x, x, num_steps, sampler))
    ops.convert_to_numpy(loop(x))
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        ops.convert_to_numpy(loop(x))
        best = min(best, time.perf_counter() - start)
    return best / sampling.ode_nfe(sampler, num_steps)


def profile_block(model, batch, peak, repeats=5):
    """Forward time of each part of the first block, each compiled alone, with its share of peak.

    Shows where a step's time goes: matmul-heavy parts should run near the
    matmul peak; the rest (norms, modulation, reshapes) is pure overhead.
    """
    from keras import ops

    from keras_sit import backend
    from keras_sit.layers import layer_norm, modulate

    block = model.backbone.blocks[0] if hasattr(model.backbone, "blocks") else None
    if block is None:
        block = next(layer for layer in model.backbone.layers if layer.__class__.__name__ == "SiTBlock")
    config = model.get_config()
    height, width, _ = config["input_shape"]
    p, d = config["patch_size"], config["hidden_size"]
    tokens, mlp = (height // p) * (width // p), int(d * config.get("mlp_ratio", 4.0))
    rng = np.random.default_rng(0)
    x = ops.convert_to_tensor(rng.standard_normal((batch, tokens, d)).astype("float32"))
    c = ops.convert_to_tensor(rng.standard_normal((batch, d)).astype("float32"))
    shift = scale = c
    attention_flops = 2 * batch * (4 * tokens * d * d + 2 * tokens * tokens * d)
    mlp_flops = 2 * batch * 2 * tokens * d * mlp
    adaln_flops = 2 * batch * 6 * d * d
    parts = [
        ("block", block, lambda x, c: block(x, c), attention_flops + mlp_flops + adaln_flops),
        ("attention", block.attn, lambda x, c: block.attn(x), attention_flops),
        ("mlp", block.mlp, lambda x, c: block.mlp(x), mlp_flops),
        ("norm+modulate", block, lambda x, c: modulate(layer_norm(x), shift, scale), 0),
        ("adaLN", block.adaLN_modulation, lambda x, c: block.adaLN_modulation(ops.silu(c)), adaln_flops),
    ]
    rows = []
    for name, layer, fn, flops in parts:
        compiled = backend.compile_inference(layer, fn)
        ops.convert_to_numpy(compiled(x, c))
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            ops.convert_to_numpy(compiled(x, c))
            best = min(best, time.perf_counter() - start)
        rows.append(
            {
                "part": name,
                "ms": 1e3 * best,
                "gflop": flops / 1e9,
                "fraction_of_peak": flops / best / peak if flops else None,
            }
        )
    print("\nforward of one block, each part compiled alone:")
    for row in rows:
        share = f"{row['fraction_of_peak']:.0%}" if row["fraction_of_peak"] is not None else "-"
        print(f"  {row['part']:>14}  {row['ms']:8.2f} ms  {row['gflop']:7.3f} GFLOP  {share:>5} of peak")
    return rows


# --- reporting ------------------------------------------------------------------------------

COLUMNS = [
    ("backend", "backend", "{}"),
    ("precision", "precision", "{}"),
    ("train_step", "step", "{}"),
    ("train_images_per_s", "train img/s", "{:.2f}"),
    ("train_fraction_of_peak", "train/peak", "{:.0%}"),
    ("train_vs_plain_torch", "vs plain torch", "{:.2f}x"),
    ("train_compile_s", "compile s", "{:.1f}"),
    ("sample_images_per_s", "sample img/s", "{:.2f}"),
    ("sample_fraction_of_peak", "sample/peak", "{:.0%}"),
    ("sample_vs_plain_torch", "sample vs plain", "{:.2f}x"),
    ("nfe", "NFE", "{}"),
    ("sampling_overhead_per_step", "step overhead", "{:.1%}"),
    ("loop_cost_per_step", "loop cost", "{:.3%}"),
    ("train_matmul_peak_gflops", "peak GFLOP/s", "{:.1f}"),
    ("peak_memory_gib", "memory GiB", "{:.2f}"),
]


def table(results, columns=COLUMNS):
    rows = [[header for _, header, _ in columns]]
    for result in results:
        rows.append([fmt.format(result[key]) if result.get(key) is not None else "-" for key, _, fmt in columns])
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)


def run_backends(args):
    """Each backend in a fresh process (a process holds one Keras backend), with this run's options."""
    parser = build_parser()
    options = []
    for key, value in vars(args).items():
        if key in ("backends", "json", "precision") or value == parser.get_default(key):
            continue
        flag = "--" + key.replace("_", "-")
        options += [flag] if value is True else [flag, str(value)]
    results = []
    with tempfile.TemporaryDirectory(prefix="keras_sit_benchmark_") as tmp:
        for backend in args.backends.split(","):
            plain = backend == "plain-torch"
            for precision in ["float32"] if plain else args.precision.split(","):
                out = os.path.join(tmp, f"{backend}-{precision}.json")
                env = {**os.environ, "KERAS_BACKEND": "torch" if plain else backend}
                command = [sys.executable, "-m", "benchmarks.benchmark", *options, "--precision", precision]
                command += ["--json", out] + (["--plain-torch"] if plain else [])
                subprocess.run(command, env=env, cwd=REPO_ROOT, check=True)
                with open(out) as f:
                    results.append(json.load(f))
    return results


def main(argv=None):
    args = parse_args(argv)
    if args.mode == "alternate":
        from benchmarks import alternate

        alternate.run(
            args.preset,
            parse_shape(args.input_shape),
            args.num_classes,
            args.batch_size,
            args.rounds,
            args.jit_compile,
            **size_overrides(args),
        )
        return
    if args.mode == "kernel-floor":
        from benchmarks import kernel_floor

        kernel_floor.run(args.preset, parse_shape(args.input_shape), args.batch_size, args.repeats, args.peak_size)
        return
    if args.mode == "autoencoder":
        from benchmarks import autoencoder

        if args.backends:
            results = run_backends(args)
        else:
            results = [autoencoder.run(args.image_size, args.batch_size, args.repeats, args.precision)]
        first = results[0]
        print(
            f"\n{first['device']}: the {first['config']} autoencoder ({first['parameters']:,} parameters), "
            f"{first['image_size']}x{first['image_size']} images, batch {first['batch_size']}, {first['precision']}"
        )
        print(table(results, autoencoder.COLUMNS))
        _write_json(args, results)
        return
    if not args.backends and "," in args.precision:
        raise SystemExit("several --precision values need --backends (each runs in its own process)")
    results = run_backends(args) if args.backends else [benchmark(args)]
    add_ratio_to_plain_torch(results)
    first = results[0]
    print(
        f"\n{first['device']}: {first['preset']} (width {first['hidden_size']}, depth {first['depth']}, "
        f"{first['num_heads']} heads) {tuple(first['input_shape'])} {first['num_classes']} classes, "
        f"batch {first['batch_size']}, {first['parameters']:,} parameters, "
        f"{first['forward_gflop_per_image']:.2f} GFLOP/image forward"
    )
    print(table(results))
    _write_json(args, results)


def add_ratio_to_plain_torch(results):
    """Each row's training and sampling images/s over the plain PyTorch (float32) row's, when this run has one."""
    plain = next((row for row in results if row["backend"] == "plain torch"), None)
    if plain is not None:
        for row in results:
            for part in ("train", "sample"):
                if row.get(f"{part}_images_per_s") and plain.get(f"{part}_images_per_s"):
                    row[f"{part}_vs_plain_torch"] = row[f"{part}_images_per_s"] / plain[f"{part}_images_per_s"]


def _write_json(args, results):
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results if args.backends else results[0], f, indent=2)


if __name__ == "__main__":
    main()
