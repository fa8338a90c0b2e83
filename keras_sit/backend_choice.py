"""An installed Keras backend when none is configured, chosen before Keras loads.

Keras loads the backend named by `KERAS_BACKEND`, else by `keras.json`, else
TensorFlow. Installed with one framework (`pip install "keras-sit[jax]"`) and
nothing set, `import keras` then fails on the missing TensorFlow. So
`import keras_sit`, before it imports Keras, sets `KERAS_BACKEND` to the
first installed of JAX, PyTorch and TensorFlow when the backend Keras would
load is not installed. `KERAS_BACKEND`, once set, is never changed, nor is
anything once Keras is imported.

Importing this module makes the choice; it imports no framework, as it runs
before any of them.
"""

import importlib.util
import json
import os
import sys

PREFERENCE = ("jax", "torch", "tensorflow")
KERAS_DEFAULT = "tensorflow"


def configured_backend():
    """The backend Keras would load: `KERAS_BACKEND`, else `keras.json`'s, else TensorFlow.

    `keras.json` is looked up where Keras looks: in `KERAS_HOME`, else in
    `~/.keras` (or `/tmp/.keras` when the home directory is not writable).
    """
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME")
    if home is None:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    try:
        with open(os.path.join(os.path.expanduser(home), "keras.json")) as file:
            return json.load(file).get("backend", KERAS_DEFAULT)
    except (OSError, ValueError, AttributeError):
        return KERAS_DEFAULT


def is_installed(backend):
    """Whether the framework of `backend` can be imported (found, not imported)."""
    module = {"numpy": "numpy", "openvino": "openvino"}.get(backend, backend)
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def choose_installed_backend():
    """Set `KERAS_BACKEND` to an installed backend if the one Keras would load is missing; returns it or None."""
    if "keras" in sys.modules or os.environ.get("KERAS_BACKEND"):  # loaded, or chosen by the user
        return None
    if is_installed(configured_backend()):
        return None
    for backend in PREFERENCE:
        if is_installed(backend):
            os.environ["KERAS_BACKEND"] = backend
            return backend
    return None  # no framework at all: Keras raises its own error


choose_installed_backend()
