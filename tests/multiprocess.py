"""Launching `tests/processes_worker.py` as a job of processes on localhost, each bounded in time.

Each backend's launcher environment is set as its own tool would set it:
`KERAS_DISTRIBUTION_*` for JAX, `torchrun`'s variables for PyTorch,
`TF_CONFIG` for TensorFlow. Every process has one CPU thread pool of one
thread, so that two of them share this machine's cores fairly.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import keras

ROOT = pathlib.Path(__file__).resolve().parent.parent
ONE_THREAD = {"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def job_environments(count):
    """The launcher's environment of each of `count` processes on this backend."""
    backend = keras.backend.backend()
    ports = free_ports(count)
    if backend == "jax":
        common = {"KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{ports[0]}",
                  "KERAS_DISTRIBUTION_NUM_PROCESSES": str(count), "JAX_PLATFORMS": "cpu"}  # fmt: skip
        return [{**common, "KERAS_DISTRIBUTION_PROCESS_ID": str(rank)} for rank in range(count)]
    if backend == "torch":
        common = {"WORLD_SIZE": str(count), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(ports[0])}
        return [{**common, "RANK": str(rank), "LOCAL_RANK": str(rank)} for rank in range(count)]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return [{"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": rank}})}
            for rank in range(count)]  # fmt: skip


def run_job(scenario, out_dir, *arguments, processes=2, timeout=240):
    """Run the scenario as `processes` processes (1: a lone process, no job).

    Returns each one's `(return code, output, seconds from the launch to its end)`. Processes
    still running after `timeout` seconds are killed and the call fails.
    """
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    environments = job_environments(processes) if processes > 1 else [{}]
    command = [sys.executable, "-m", "tests.processes_worker", scenario, str(out_dir), *map(str, arguments)]
    started = time.monotonic()
    logs = [open(out_dir / f"log{rank}.txt", "w+") for rank in range(processes)]
    jobs = []
    for environment, log in zip(environments, logs):
        env = {**os.environ, **ONE_THREAD, **environment, "PYTHONPATH": pythonpath}
        jobs.append(subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    results = []
    for job, log in zip(jobs, logs):
        try:
            job.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            for other in jobs:
                other.kill()
            raise AssertionError(f"{scenario}: a process ran past {timeout} s:\n" + _read(log)[-4000:]) from None
        results.append((job.returncode, _read(log), time.monotonic() - started))
        log.close()
    return results


def _read(log):
    log.flush()
    log.seek(0)
    return log.read()


def check_succeeded(results):
    for rank, (code, output, _) in enumerate(results):
        assert code == 0, f"process {rank} failed ({code}):\n{output[-4000:]}"
