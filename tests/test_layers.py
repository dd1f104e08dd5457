"""The architecture as a test: mobex's packages form layers, and no module imports one from a layer above it
(function-level imports included; `if TYPE_CHECKING:` blocks, which never run, excluded), and the modules'
import graph has no cycle. A new top-level module or package must be given its layer here."""

from __future__ import annotations

import ast
from pathlib import Path

MOBEX = Path(__file__).resolve().parents[1] / "mobex"

# Bottom to top. A module may import from its own layer or any layer below.
LAYERS: list[set[str]] = [
    {"mobex", "errors", "files", "logs", "artifacts", "plugins", "names", "provenance", "bounded", "recipe_paths",
     "safe_pt2", "workers", "workdir"},  # foundation
    {"recipe", "preprocessing"},  # the schema
    {"data", "datasources", "sources"},  # model and data loading
    {"runtime"},  # runners: torch, LiteRT, ExecuTorch, MIL interpreter, Core ML on macOS; latency
    {"metrics"},  # parity and task metrics, gate limits
    {"converters"},  # torch -> .tflite / .mlpackage / .pte
    {"quantize", "prune"},  # per-target quantization, torch-level pruning
    {"targets"},  # the Target plugins tying conversion, variants, runners and bundle layout together
    {"validate"},  # validation of variants, gates, reports
    {"bundle"},  # manifest, signing, verification, archives
    {"registry", "release", "monitor", "serving"},  # channels and pull; release gates; monitoring; serving
    {"export", "executor", "cache", "pipeline", "init_recipe"},  # the build's stages, where they run, their cache
    {"fleet"},  # many recipes' builds at once (Ray)
    {"cli", "cli_registry", "cli_validate", "cli_serving", "cli_release", "cli_cache", "cli_fleet", "__main__"},
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(MOBEX.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer_of(module: str) -> int:
    unit = module.split(".")[1] if module.count(".") else "mobex"
    for index, names in enumerate(LAYERS):
        if unit in names:
            return index
    raise AssertionError(f"{module}: {unit!r} has no layer in tests/test_layers.py LAYERS; give it one")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, imported mobex module) for every import that can run."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("mobex"):
            found.extend((node.lineno, f"{node.module}.{a.name}") for a in node.names)
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names if a.name.startswith("mobex"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, list[tuple[int, str]]]:
    modules = {_module_name(p): p for p in MOBEX.rglob("*.py")}
    graph: dict[str, list[tuple[int, str]]] = {}
    for name, path in modules.items():
        edges = []
        for line, target in _imports(ast.parse(path.read_text(), str(path))):
            while target not in modules and "." in target:  # `from mobex.x import name` names an attribute
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                edges.append((line, target))
        graph[name] = edges
    return graph


def test_no_module_imports_from_a_layer_above() -> None:
    graph = _graph()
    upward = [
        f"{module}:{line} imports {target} (layer {_layer_of(target)} > {_layer_of(module)})"
        for module, edges in sorted(graph.items())
        for line, target in edges
        if _layer_of(target) > _layer_of(module)
    ]
    assert not upward, "imports against the layering:\n  " + "\n  ".join(upward)


def test_the_import_graph_has_no_cycle() -> None:
    graph = {m: sorted({t for _, t in edges if not m.startswith(t + ".")}) for m, edges in _graph().items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[str] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert not cycles, "import cycles:\n  " + "\n  ".join(cycles)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The walker finds imports inside functions and skips TYPE_CHECKING blocks (so the tests above can fail)."""
    source = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mobex.pipeline import build\n"
        "def f():\n    from mobex.cli import app\n"
    )
    assert [t for _, t in _imports(ast.parse(source))] == ["mobex.cli.app"]
    assert _layer_of("mobex.cli") > _layer_of("mobex.recipe")
