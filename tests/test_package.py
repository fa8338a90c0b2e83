"""The package's shape: no module of keras_sit imports, even lazily, a module that imports it back; what
`import keras_sit` gives (every subpackage, a backend where none is configured)."""

import ast
import json
import pathlib

import keras

from tests.conftest import run_without

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "keras_sit"


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# Every module but the package's own `__init__`, which imports them all to export their names.
MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py"}


def imported_modules(path):
    """keras_sit modules that `path` imports anywhere, inside functions included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name in MODULES}


def find_cycle(graph):
    """A list of modules forming an import cycle, or None."""
    state = {}

    def visit(module, trail):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return trail[trail.index(target) :] + [target]
            if target not in state:
                cycle = visit(target, trail + [target])
                if cycle:
                    return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [module])
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_keras_sit():
    graph = {name: imported_modules(path) for name, path in MODULES.items()}
    assert graph["keras_sit.convert.sit"] >= {"keras_sit.model", "keras_sit.convert.checkpoints"}  # imports seen
    assert find_cycle(graph) is None, find_cycle(graph)


def run_python(code, tmp_path, missing=(), backend=None):
    """The words `code` prints, run in a fresh interpreter without the frameworks `missing`."""
    return run_without(missing, "-c", code, keras_home=tmp_path, backend=backend, timeout=300).stdout.split()


def test_subpackages_resolve_after_import_keras_sit(tmp_path):
    names = run_python(
        "import keras_sit\n"
        "print(keras_sit.callbacks.SampleGrid.__name__, keras_sit.callbacks.FrechetDistance.__name__,\n"
        "      keras_sit.evaluation.evaluate.__name__, keras_sit.evaluation.FIDInception.__name__,\n"
        "      keras_sit.convert.import_fid_inception.__name__, keras_sit.latents.ImageFolder.__name__)",
        tmp_path, backend="jax",
    )  # fmt: skip
    assert names == ["SampleGrid", "FrechetDistance", "evaluate", "FIDInception", "import_fid_inception", "ImageFolder"]


# (backend in keras.json, frameworks missing, KERAS_BACKEND set) -> the backend keras_sit runs on. Keras would
# load a configured TensorFlow that is missing: the first installed of JAX and PyTorch is taken instead. An
# installed configured backend, and any backend the user sets, are left alone.
BACKEND_CHOICES = [
    (("tensorflow", ["tensorflow"], None), "jax"),
    (("tensorflow", ["tensorflow", "jax"], None), "torch"),
    (("tensorflow", [], None), "tensorflow"),
    (("torch", ["tensorflow"], None), "torch"),
    (("torch", ["tensorflow"], "jax"), "jax"),
]


def test_an_installed_backend_is_chosen_when_the_configured_one_is_missing(tmp_path):
    """Each choice is checked on the run of the backend it lands on: each is a fresh interpreter, the same on
    every run, and the three runs together cover the table."""
    report = "import sys, keras_sit, keras\nprint(keras.backend.backend(), sys.modules.get('tensorflow') is not None)"
    choices = [case for case, chosen in BACKEND_CHOICES if chosen == keras.backend.backend()]
    assert choices
    for configured, missing, backend in choices:
        (tmp_path / "keras.json").write_text(json.dumps({"backend": configured}))
        loaded_tensorflow = str(keras.backend.backend() == "tensorflow")
        printed = run_python(report, tmp_path, missing=missing, backend=backend)
        assert printed == [keras.backend.backend(), loaded_tensorflow], (configured, missing, backend, printed)
