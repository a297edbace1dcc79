"""The package's one-way layers, checked from its imports (ast): data flows one way through the sub-packages.

Layers, in order (a module may import only from its own layer and the layers before it):
foundations (errors, paths, files, device, config, presets, lockfile, runs) -> model -> data -> training ->
evaluation -> reporting -> edges (notebook, reproduce, cli, bench). ``model`` comes before ``data`` because the kNN
stage computes backbone features; nothing in ``model`` reads datasets. Within ``data``, the stage framework
``stage.py`` imports none of the stages. No module takes part in an import cycle, counting function-level
imports, and every function-level import of a depthg module carries a one-line reason on its line or the line above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "depthg"
LAYERS = (
    ("errors", "paths", "files", "device", "config", "presets", "lockfile", "runs"),
    ("model",),
    ("data",),
    ("training",),
    ("evaluation",),
    ("reporting",),
    ("notebook", "reproduce", "cli", "bench", "__main__"),
)
STAGES = ("fivecrop", "depth_estimation", "knn", "synthetic")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported depthg module, line, at module level) for every import in the file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from depthg.model import lhp` imports the module depthg.model.lhp when it is one
            names = [node.module] + [
                f"{node.module}.{a.name}" for a in node.names if _is_module(f"{node.module}.{a.name}")
            ]
        else:
            continue
        out += [(n, node.lineno, id(node) in top) for n in names if n == "depthg" or n.startswith("depthg.")]
    return out


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PKG.parent / rel).with_suffix(".py").is_file() or (PKG.parent / rel / "__init__.py").is_file()


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # the package itself (__version__)
        return 0
    for i, names in enumerate(LAYERS):
        if parts[1] in names:
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py; add it to LAYERS")


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_from_earlier_layers(module):
    bad = [
        f"line {line}: {name} (layer {_layer(name)}) from layer {_layer(module)}"
        for name, line, _ in _imports(MODULES[module])
        if _layer(name) > _layer(module)
    ]
    assert not bad, f"{module} imports from a later layer: " + "; ".join(bad)


def test_stage_framework_imports_no_stage():
    names = {n for n, _, _ in _imports(MODULES["depthg.data.stage"])}
    assert not {f"depthg.data.{s}" for s in STAGES} & names, names


def test_plots_import_no_depthg_module():
    names = {n for n, _, _ in _imports(MODULES["depthg.reporting.plots"])}
    assert not names, f"depthg.reporting.plots draws what it is given; it imports {sorted(names)}"


def test_no_import_cycle():
    graph = {m: {n for n, _, _ in _imports(p) if n in MODULES and n != m} for m, p in MODULES.items()}
    # a package's __init__ is imported with any of its submodules; its own re-exports are not a cycle
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if m.startswith(n + ".") or n.startswith(m + "."):
                continue  # package <-> its own submodule
            if state.get(n) == 1:
                cycle = stack[stack.index(n) :] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_function_level_imports_say_why(module):
    lines = MODULES[module].read_text().splitlines()
    bad = []
    for name, line, top in _imports(MODULES[module]):
        if top:
            continue
        # the reason: a comment on the line, or on the line above the run of import lines it belongs to
        i = line - 1
        while i > 0 and lines[i - 1].strip().startswith(("from depthg", "import depthg")) and "#" not in lines[i]:
            i -= 1
        if "#" not in lines[line - 1] and not (i > 0 and lines[i - 1].strip().startswith("#")) and "#" not in lines[i]:
            bad.append(f"line {line}: {name}")
    assert not bad, f"{module}: function-level imports without a one-line reason: " + "; ".join(bad)
