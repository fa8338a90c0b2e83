"""Training throughput of a job of 2 processes against 1 process, one CPU core each, on this backend.

    KERAS_BACKEND=torch python -m benchmarks.processes
    KERAS_BACKEND=jax python -m benchmarks.processes --steps 20

Weak scaling, as data parallelism is used: each process trains on `--batch-size`
examples per step (the job's global batch is twice that). It launches the
processes itself on 127.0.0.1, with the backend's launcher environment
(`tests/multiprocess.py`), each pinned to its own core, times the steps after
`--warmup` in process 0, and prints images per second and the scaling
efficiency `rate(2) / (2 * rate(1))`.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-shape", default="16,16,4")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16, help="examples per process and step")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # the output file of a worker
    parser.add_argument("--core", type=int, default=None, help=argparse.SUPPRESS)  # the worker's CPU core
    return parser.parse_args(argv)


def worker(args):
    """One process, on one core: `initialize`, train `warmup + steps` steps, write the timed steps' seconds."""
    os.sched_setaffinity(0, {args.core})
    import keras
    import numpy as np

    import keras_sit

    keras_sit.distribution.initialize(timeout_seconds=120)
    count = keras_sit.distribution.process_count()
    shape = tuple(int(v) for v in args.input_shape.split(","))
    model = keras_sit.SiT(input_shape=shape, patch_size=2, hidden_size=args.hidden_size, depth=args.depth,
                          num_heads=args.num_heads, num_classes=10, seed=0)  # fmt: skip
    model.compile()
    batch = args.batch_size * count
    steps = args.warmup + args.steps
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch * steps, *shape)).astype("float32")
    y = rng.integers(0, 10, batch * steps).astype("int32")
    times = []
    timer = keras.callbacks.LambdaCallback(on_train_batch_end=lambda step, logs: times.append(time.perf_counter()))
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    seconds = times[-1] - times[args.warmup - 1]
    if keras_sit.distribution.is_chief():
        result = {"processes": count, "global_batch": batch, "steps": args.steps, "seconds": seconds}
        pathlib.Path(args.worker).write_text(json.dumps(result))


def run(args, processes):
    """Launch the job; returns process 0's result."""
    sys.path.insert(0, str(ROOT))
    from tests.multiprocess import ONE_THREAD, job_environments

    out = pathlib.Path(tempfile.mkdtemp(prefix="keras_sit_processes_")) / "result.json"
    environments = job_environments(processes) if processes > 1 else [{}]
    options = [f"--{name.replace('_', '-')}={value}" for name, value in vars(args).items() if value is not None]
    command = [sys.executable, "-m", "benchmarks.processes", *options, f"--worker={out}"]
    cores = sorted(os.sched_getaffinity(0))
    jobs = [
        subprocess.Popen(
            [*command, f"--core={cores[rank % len(cores)]}"],
            cwd=ROOT,
            env={**os.environ, **ONE_THREAD, **environment},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank, environment in enumerate(environments)
    ]
    for job in jobs:
        _, errors = job.communicate(timeout=900)
        if job.returncode:
            raise SystemExit(f"a process of the {processes}-process run failed:\n{errors[-3000:]}")
    return json.loads(out.read_text())


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    import keras

    rates = {}
    for processes in (1, 2):
        result = run(args, processes)
        rates[processes] = result["global_batch"] * result["steps"] / result["seconds"]
        print(f"{keras.backend.backend():>10}  {processes} process(es), global batch {result['global_batch']:>3}: "
              f"{rates[processes]:8.1f} img/s")  # fmt: skip
    print(f"{keras.backend.backend():>10}  scaling efficiency rate(2) / (2 rate(1)): {rates[2] / (2 * rates[1]):.2f}")


if __name__ == "__main__":
    main()
