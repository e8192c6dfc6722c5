"""The packages' import structure, read from their ASTs (nothing is imported).

- No import cycle among the modules of ``pipeline`` and ``stpa_model``, counting imports inside functions (imports
  under ``if TYPE_CHECKING:`` excepted: they never run).
- No ``from pipeline.x import _private`` across modules.
- ``pipeline``'s layers depend downwards only (README "Files"): storage and schema, video, data, clips, config,
  evaluation, tracking, training, sweep; ``stpa_model`` imports nothing of ``pipeline``.
- At most 10 modules at ``pipeline``'s top level beside the concept folders.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stpa_model")

# Lower layers first; a module may import its own layer and the ones before it. Keys are module-name prefixes.
LAYERS = {
    "stpa_model": 0,
    "pipeline.storage": 0,
    "pipeline.schema": 0,
    "pipeline.metric_names": 0,
    "pipeline.runtime": 0,
    "pipeline.errors": 0,
    "pipeline.workflow": 1,
    "pipeline.video": 1,
    "pipeline.data": 2,
    "pipeline.clips": 3,
    "pipeline.config": 4,
    "pipeline.presets": 5,
    "pipeline.evaluation": 5,
    "pipeline.tracking": 6,
    "pipeline.training": 7,
    "pipeline.sweep": 8,
    "pipeline.cli": 9,
    "pipeline.flags": 9,
}


def _modules() -> dict[str, pathlib.Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under ``if TYPE_CHECKING:``."""
    found = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def _edges(module: str) -> list[tuple[str, str, int]]:
    """``(target module, imported name or "", line)`` for each of ``module``'s imports of our packages."""
    path = MODULES[module]
    edges = []
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            edges += [(a.name, "", node.lineno) for a in node.names if a.name in MODULES]
        elif node.module and node.level == 0 and node.module.split(".")[0] in PACKAGES:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in MODULES:
                    edges.append((submodule, "", node.lineno))
                else:
                    edges.append((node.module, alias.name, node.lineno))
    return edges


GRAPH = {module: _edges(module) for module in MODULES}


def _layer(module: str) -> int:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    if prefix is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {__file__}")
    return LAYERS[prefix]


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path, iterators = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while path:
            target = next(iterators[-1], None)
            if target is None:
                state[path.pop()] = 2
                iterators.pop()
            elif state.get(target) == 1:
                return path[path.index(target) :] + [target]
            elif not state.get(target):
                state[target] = 1
                path.append(target)
                iterators.append(iter(sorted(graph.get(target, ()))))
    return None


def test_finder_sees_a_cycle_and_its_absence():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def test_no_import_cycle():
    graph = {module: sorted({target for target, _, _ in edges}) for module, edges in GRAPH.items()}
    assert find_cycle(graph) is None, "import cycle: " + " -> ".join(find_cycle(graph))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_import_across_modules(module):
    private = [
        f"{MODULES[module].relative_to(ROOT)}:{line} imports {name} from {target}"
        for target, name, line in GRAPH[module]
        if name.startswith("_") and target != module
    ]
    assert not private


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("pipeline")))
def test_layers_depend_downwards(module):
    upward = [
        f"{MODULES[module].relative_to(ROOT)}:{line} imports {target} (layer {_layer(target)} > {_layer(module)})"
        for target, _, line in GRAPH[module]
        if target != "pipeline" and _layer(target) > _layer(module)
    ]
    assert not upward


def test_model_package_imports_no_pipeline():
    assert not [
        (module, target)
        for module in MODULES
        if module.startswith("stpa_model")
        for target, _, _ in GRAPH[module]
        if target.startswith("pipeline")
    ]


def test_pipeline_top_level_is_small():
    top = sorted(p.name for p in (ROOT / "pipeline").glob("*.py") if p.name != "__init__.py")
    assert len(top) <= 10, top
