"""The package's layering holds: every import (module-level or inside a function) points to the same
or a lower layer, and no modules import each other in a cycle.

Layers, lowest first (README "Layout", docs/design-notes.md "Layers"): data flows from scene I/O
through fields and renderers to losses, the loop and the methods; geometry is the leaf every layer
may use, and metrics / reports depend on geometry alone.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "zerolevel"

# top-level module or package -> layer; a module may import its own layer or lower ones
LAYERS = {
    "errors": 0, "atomic": 0, "images": 0, "cameras": 0, "settings": 0, "data": 0,
    "geometry": 1,
    "metrics": 2, "report": 2,
    "scene": 3, "importers": 3, "exporters": 3,
    "fields": 4,
    "render": 5,
    "losses": 6,
    "optim": 7,
    "recon": 8, "learn": 8,
    "methods": 9,
    "pipeline": 10,
    "cli": 11, "__main__": 11,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(module: str) -> Iterator[tuple[str, int]]:
    """(imported zerolevel module, line) for every import statement of `module`, function-level ones
    too; `from . import x` counts as importing the submodule x when there is one."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            targets = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in MODULES else origin for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES and "." in target:  # a name inside a module
                target = target.rpartition(".")[0]
            if target in MODULES and target != "zerolevel" and target != module:
                yield target, node.lineno


def layer(module: str) -> int:
    top = module.split(".")[1]
    if top not in LAYERS:
        raise KeyError(f"{module}: add its top-level name {top!r} to LAYERS in {__file__}")
    return LAYERS[top]


def test_every_module_has_a_layer():
    for module in MODULES:
        if module != "zerolevel":
            layer(module)


def test_no_import_reaches_a_higher_layer():
    upward = [f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} imports {target} (layer {layer(target)} > "
              f"{layer(m)})" for m in MODULES if m != "zerolevel"
              for target, line in imports(m) if layer(target) > layer(m)]
    assert not upward, "\n".join(upward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles():
    graph = {m: {target for target, _ in imports(m)} for m in MODULES}
    assert not _cycles(graph), _cycles(graph)


def test_the_checks_can_fail():
    # the scanner sees a function-level relative import, and the cycle finder a two-module loop
    assert ("zerolevel.errors", 1) in [(t, 1) for t, _ in imports("zerolevel.atomic")]
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("module", ["zerolevel.metrics", "zerolevel.fields.grid"])
def test_evaluation_and_fields_need_no_renderer_or_metrics(module):
    # the review's findings stay fixed: metrics may not ray-cast, fields may not score
    targets = {t for t, _ in imports(module)}
    assert not {t for t in targets if t.startswith(("zerolevel.render", "zerolevel.metrics"))}


@pytest.mark.parametrize("package", ["zerolevel.fields", "zerolevel.geometry", "zerolevel.learn",
                                     "zerolevel.recon", "zerolevel.render"])
def test_packages_import_nothing_on_their_own(package):
    # `import zerolevel.learn.train` must not pay for the data set writer's ray caster and shapes
    assert not list(imports(package))
