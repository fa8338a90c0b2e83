"""The package's shape: no module of keras_sit imports, even lazily, a module that imports it back."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "keras_sit"


def imported_modules(path):
    """keras_sit submodules that `path` imports anywhere, inside functions included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    modules = {f"keras_sit.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return {name for name in names if name in modules}


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
    graph = {f"keras_sit.{p.stem}": imported_modules(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert graph["keras_sit.convert"] >= {"keras_sit.model", "keras_sit.presets"}  # the scan sees imports
    assert find_cycle(graph) is None, find_cycle(graph)
