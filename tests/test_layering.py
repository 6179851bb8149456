"""The package's layering: no import circles, no oversized modules.

Imports are read from the source (module level and inside functions, plus
``importlib.import_module`` of a literal or f-string name), so a lookup that
imports the layer above it by name counts as an import too.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("recbole_diffusion", "benchmarks")
MAX_LINES = 800


def _modules():
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def _resolve(name, modules):
    """The project module that ``import name`` loads, or None for a library."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imported_names(module, path, modules):
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                if path.name != "__init__.py":
                    parts = parts[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            == "import_module"
            and node.args
        ):
            names += _dynamic_targets(node.args[0], modules)
    return names


def _dynamic_targets(argument, modules):
    """Modules an ``import_module(...)`` call may load: a literal, or an f-string's prefix."""
    if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
        return [argument.value]
    if isinstance(argument, ast.JoinedStr):
        prefix = ""
        for value in argument.values:
            if not isinstance(value, ast.Constant):
                break
            prefix += value.value
        package = prefix.rstrip(".")
        # f"recbole_diffusion.model.{name}": any module of that package.
        return [name for name in modules if name.startswith(package + ".")] or [package]
    return []


def import_graph():
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        targets = {
            _resolve(name, modules) for name in _imported_names(module, path, modules)
        }
        graph[module] = sorted(t for t in targets if t and t != module)
    return graph


def import_cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return cycles


def test_cycle_finder_sees_a_circle_through_a_dynamic_import():
    # The finder itself: a two-module circle and a self-contained chain.
    assert import_cycles({"a": ["b"], "b": ["a"], "c": ["a"]}) == [["a", "b"]]
    assert import_cycles({"a": ["b"], "b": ["c"], "c": []}) == []
    call = ast.parse('importlib.import_module(f"recbole_diffusion.model.{x}")')
    targets = _dynamic_targets(call.body[0].value.args[0], _modules())
    assert "recbole_diffusion.model.adrec" in targets


def test_no_import_circles():
    """Catches a module importing the layer above it (utils -> registry -> model -> utils)."""
    cycles = import_cycles(import_graph())
    assert not cycles, f"import circles: {cycles}"


def test_lookups_sit_above_models_and_trainers():
    graph = import_graph()
    assert "recbole_diffusion.model.adrec" in graph["recbole_diffusion.registry"]
    assert "recbole_diffusion.trainer" in graph["recbole_diffusion.registry"]
    assert graph["recbole_diffusion.utils"] == []  # the bottom layer
    assert (
        "recbole_diffusion.tuning.run"
        not in graph["recbole_diffusion.tuning.ray_backend"]
    )


@pytest.mark.parametrize("package", PACKAGES)
def test_no_source_file_over_800_lines(package):
    long_files = {
        str(path.relative_to(ROOT)): lines
        for path in (ROOT / package).rglob("*.py")
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long_files, f"split these modules: {long_files}"
