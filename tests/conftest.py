import atexit
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import keras
import numpy as np
import pytest

import keras_sit

BACKEND = keras.backend.backend()
DISTRIBUTION_TESTS = {"test_distribution_devices.py": "jax", "test_distribution_tf.py": "tensorflow"}

if BACKEND == "jax":
    import jax

    # The tests build many identical tiny models, and every new model jits its steps afresh. XLA's
    # persistent cache, keyed by the compiled program, compiles each distinct program once per run.
    _cache = tempfile.mkdtemp(prefix="keras_sit_xla_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    jax.config.update("jax_compilation_cache_dir", _cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


_AUTO_JIT_COMPILE = keras_sit.backend.auto_jit_compile


@pytest.fixture(scope="session", autouse=True)
def _tensorflow_tests_without_xla():
    """On TensorFlow, the tests' `compile()` runs without XLA unless a test asks for it.

    `SiT.compile`'s "auto" turns XLA on for TensorFlow, which would compile each of the suite's
    hundreds of tiny models for seconds and double the TensorFlow run. Session-wide, so that
    module fixtures and tests compile alike (TensorFlow draws other random numbers under XLA).
    The XLA step is covered by the tests that pass `jit_compile=True`, and the default itself by
    the tests marked `xla_default`.
    """
    if BACKEND != "tensorflow":
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(keras_sit.backend, "auto_jit_compile", lambda compute_dtype="float32": "auto")
        yield


@pytest.fixture(autouse=True)
def _xla_default(request, monkeypatch):
    """A test marked `xla_default` sees `SiT.compile`'s own "auto"."""
    if request.node.get_closest_marker("xla_default") is not None:
        monkeypatch.setattr(keras_sit.backend, "auto_jit_compile", _AUTO_JIT_COMPILE)


# Their subprocesses are JAX or TensorFlow whatever the backend of this run, so one run covers each.
collect_ignore = [name for name, backend in DISTRIBUTION_TESTS.items() if backend != BACKEND]


# Runs `python ARGS...` with the frameworks named in the first argument missing, as where they are not
# installed: every finder on `sys.meta_path` answers "not found" for them, so `import` raises
# ModuleNotFoundError and `importlib.util.find_spec` gives None, and nothing else changes.
_WITHOUT = """
import runpy, sys
MISSING = set(sys.argv[1].split(","))
class Without:
    def __init__(self, finder):
        self.finder = finder
    def __getattr__(self, name):
        return getattr(self.finder, name)
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in MISSING:
            return None
        return self.finder.find_spec(name, path, target)
sys.meta_path[:] = [Without(finder) for finder in sys.meta_path]
sys.argv = sys.argv[2:]
if sys.argv[0] == "-c":
    sys.argv = sys.argv[1:]
    exec(sys.argv[0], {"__name__": "__main__"})
else:
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_without(missing, *args, keras_home, backend=None, timeout=600):
    """`python ARGS` (a script and its arguments, or `-c CODE`) in a fresh interpreter of this checkout
    where the frameworks `missing` cannot be imported, as in an environment with one framework.

    `KERAS_BACKEND` is `backend` (unset for None) and Keras' config lives in `keras_home`, so the
    user's own `keras.json` plays no part. Returns the `CompletedProcess`; asserts it succeeded.
    """
    root = pathlib.Path(__file__).resolve().parent.parent
    env = {key: value for key, value in os.environ.items() if key != "KERAS_BACKEND"}
    env.update(KERAS_HOME=str(keras_home), PYTHONPATH=str(root))
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    command = [sys.executable, "-c", _WITHOUT, ",".join(missing), *map(str, args)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=keras_home)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def run_device_script(command, out_dir, env):
    """Run `command + [out_dir]` in a subprocess with `env` added; returns the `summary.json` and
    every `.npz` it wrote there (under `"runs"`, by file stem).

    Devices must be configured before a framework initializes them, so the multi-device tests do
    their work in a fresh interpreter that sees this checkout first.
    """
    root = pathlib.Path(__file__).resolve().parent.parent
    pythonpath = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [*command, str(out_dir)],
        env={**os.environ, **env, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((out_dir / "summary.json").read_text())
    summary["runs"] = {path.stem: dict(np.load(path)) for path in out_dir.glob("*.npz")}
    return summary


def tiny_sit(**overrides):
    """A SiT small enough to train in a test."""
    config = dict(input_shape=(4, 4, 2), patch_size=2, hidden_size=16, depth=2, num_heads=2, seed=0)
    config.update(overrides)
    return keras_sit.SiT(**config)


def randomize(model, rng, scale=0.2):
    """Random backbone weights, so the network's output is far from its zero init."""
    for variable in model.backbone.trainable_weights:
        variable.assign(rng.normal(0, scale, size=variable.shape).astype("float32"))


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def fit_losses(model, *fit_args, steps, **fit_kwargs):
    """Per-step training losses of `steps` one-batch epochs."""
    history = model.fit(*fit_args, epochs=steps, verbose=0, shuffle=False, **fit_kwargs)
    return np.array(history.history["loss"])


def tiny_autoencoder(seed=0, **overrides):
    """A two-level KL autoencoder (16x16x3 images -> 8x8x4 latents) with random weights."""
    config = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4)
    config.update(overrides)
    model = keras_sit.AutoencoderKL(**config)
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.normal(0, 0.1, size=variable.shape).astype("float32"))
    return model


@pytest.fixture
def one_torch_thread():
    """On PyTorch, one intra-op thread for the test: a tiny model's eager ops gain nothing from more,
    and `tox p` runs three test processes on this 2-core machine, where PyTorch's spinning thread
    pool slowed such a test tenfold. A no-op on the other backends."""
    if keras.backend.backend() != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def refusal_table(rows):
    """The test of a bad-input table: each row `(id, call, exception, message regex)` is one case, run in the
    case's `tmp_path`, where the call must raise `exception` with a message matching the regex."""

    @pytest.mark.parametrize("call, error, match", [row[1:] for row in rows], ids=[row[0] for row in rows])
    def test_bad_input(call, error, match, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)  # the rows' files go to `tmp_path`
        with pytest.raises(error, match=match):
            call()

    return test_bad_input


def file(name, content=b"these bytes are no checkpoint, picture or archive"):
    """A file at the relative path `name` (its folders made), holding `content`; for the bad-input tables."""
    os.makedirs(os.path.dirname(name) or ".", exist_ok=True)
    with open(name, "wb") as f:
        f.write(content)
    return name


def folder(name):
    """A folder at the relative path `name`; for the bad-input tables."""
    os.makedirs(name, exist_ok=True)
    return name
