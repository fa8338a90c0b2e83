"""What the modes of the benchmark share: the matmul peak, the device, the models and their batch.

    python -m benchmarks.benchmark                       # the full benchmark
    python -m benchmarks.benchmark --mode alternate      # keras_sit against plain PyTorch, in turn
    python -m benchmarks.benchmark --mode kernel-floor   # the best an eager PyTorch step can do

Not run alone. Keras is imported inside the functions, never at the top, so
that `benchmarks.benchmark` can choose the Keras backend (`KERAS_BACKEND`)
before Keras is first imported.
"""

import os
import time

import numpy as np

# `--jit-compile` values -> `SiT.compile(jit_compile=...)`.
JIT_COMPILE = {"auto": "auto", "true": True, "false": False}


def parse_shape(text):
    """Parse "H,W,C" text, e.g. "32,32,4", into a shape tuple."""
    return tuple(int(v) for v in text.split(","))


def require_torch_backend(mode):
    """Select Keras' torch backend for `mode`, or exit if another one is asked for or already loaded."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    if keras.backend.backend() != "torch":
        raise SystemExit(f"--mode {mode} runs on PyTorch: run it with KERAS_BACKEND=torch (or unset)")


def sit_model(preset, input_shape, num_classes, jit_compile="auto", **overrides):
    """keras_sit's `SiT` of `preset` (with `overrides`), seeded and compiled with its default optimizer.

    `jit_compile="auto"` is SiT's default: XLA on JAX and TensorFlow, eager on PyTorch.
    """
    import keras_sit

    model = keras_sit.SiT.from_preset(preset, input_shape=input_shape, num_classes=num_classes, seed=0, **overrides)
    model.compile(jit_compile=JIT_COMPILE[jit_compile])
    return model


def training_batch(batch_size, input_shape, num_classes, seed=0):
    """A fixed batch of Gaussian images and integer labels, as NumPy arrays."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, *input_shape)).astype("float32")
    labels = rng.integers(0, num_classes, size=batch_size).astype("int32")
    return x, labels


def device_name():
    """The device the backend computes on: 'cpu', or the accelerator's name."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return "cpu" if device.platform == "cpu" else device.device_kind
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else "cpu"


class MatmulPeak:
    """The sustained FLOP/s of back-to-back square matmuls, measured alongside the model.

    The backend's native compiled matmul runs back to back for a window of
    seconds, and the rate is the window's FLOPs over its duration: the same
    statistic as the model's images/s. `measure` is called between the model's
    timed steps, so the peak is taken over the same minutes: on a shared
    machine whose speed drifts, a peak measured once, earlier, is the wrong
    yardstick, and the best single run (kept in `best_run` for reference)
    reflects a moment of no contention, not a rate the model could sustain.
    On a CPU the size is the best of 1024, 2048 and 3072 (one size can miss a
    library's sweet spot); a GPU needs 8192 to reach its datasheet rate.
    """

    def __init__(self, dtype, size=None, window_s=1.0):
        self.window_s = window_s
        self.reset()
        self.best_run = 0.0
        if size is None and device_name() == "cpu":
            candidates = [(self._runs(dtype, size), size) for size in (1024, 2048, 3072)]
        else:
            size = size or 8192
            candidates = [(self._runs(dtype, size), size)]
        options = [(run, size) for runs, size in candidates for run in runs]
        for run, _ in options:
            run()  # compile
        # Pick the fastest kernel and size over a short window each, then start afresh.
        rates = [self._window(run, size, window_s / 2) for run, size in options]
        self.run, self.size = options[int(np.argmax(rates))]
        self.reset()
        self.best_run = 0.0

    @staticmethod
    def _runs(dtype, size):
        """One callable per native matmul of the backend, each running one product to completion."""
        import keras

        backend = keras.backend.backend()
        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((size, size)).astype("float32") for _ in range(2))
        if backend == "jax":
            import jax
            import jax.numpy as jnp

            a, b = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
            f = jax.jit(jnp.matmul)
            return [lambda: f(a, b).block_until_ready()]
        if backend == "tensorflow":
            import tensorflow as tf

            # TensorFlow's own kernel and XLA's: Keras compiles train steps with XLA.
            a, b = tf.cast(a, dtype), tf.cast(b, dtype)
            plain, xla = (tf.function(tf.matmul, jit_compile=jit) for jit in (False, True))
            return [lambda: plain(a, b).numpy(), lambda: xla(a, b).numpy()]
        import torch

        a, b = (torch.as_tensor(m).to(getattr(torch, dtype)) for m in (a, b))
        if torch.cuda.is_available():
            a, b = a.cuda(), b.cuda()
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

        def run():
            with torch.no_grad():
                torch.matmul(a, b)
            sync()

        return [run]

    def _window(self, run, size, seconds):
        flops, count = 2 * size**3, 0
        start = last = time.perf_counter()
        while last - start < seconds:
            run()
            now = time.perf_counter()
            self.best_run = max(self.best_run, flops / (now - last))
            count, last = count + 1, now
        self.flops += count * flops
        self.seconds += last - start
        return count * flops / (last - start)

    def reset(self):
        """Start a new measurement (`best_run` carries over)."""
        self.flops = self.seconds = 0.0

    def measure(self):
        """Add one window to the running measurement."""
        self._window(self.run, self.size, self.window_s)

    def around(self, fn):
        """Seconds of `fn()`, and the peak over one window before and one after it alone."""
        self.reset()
        self.measure()
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        self.measure()
        return seconds, self.rate

    @property
    def rate(self):
        """FLOP/s over all windows so far."""
        return self.flops / self.seconds
