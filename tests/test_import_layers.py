"""The dependency direction of DESIGN.md §2, read from every import statement (also those inside functions: a lazy
import still points one way): no circle among our modules, and no arrow a layer may not draw."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("autodeploy_cli", "transforms", "kernels", "model_registry")
SKIP = ("model_registry/tools",)  # maintenance scripts, not part of the product's import graph

# layer -> the layers it may import (besides itself); a module's layer is the longest matching prefix below
LEAVES = {"autodeploy_cli.errors", "autodeploy_cli.log"}
ALLOWED: dict[str, set[str]] = {
    "model_registry": set(),
    "autodeploy_cli.config": {"model_registry"},
    "autodeploy_cli.ops": {"autodeploy_cli.config"},
    "kernels": {"autodeploy_cli.ops", "autodeploy_cli.config"},
    "autodeploy_cli.graph": {"autodeploy_cli.ops", "autodeploy_cli.config"},
    "autodeploy_cli.models": {"autodeploy_cli.ops", "autodeploy_cli.config", "model_registry"},
    "autodeploy_cli.export": {"autodeploy_cli.ops", "autodeploy_cli.config"},
    "autodeploy_cli.distributed": {"autodeploy_cli.ops", "autodeploy_cli.config"},
    # transforms see the transform contract of the pipeline, not its runner
    "transforms": {"autodeploy_cli.pipeline.interface", "autodeploy_cli.pipeline.registry",
                   "autodeploy_cli.pipeline.op_swap", "autodeploy_cli.graph", "autodeploy_cli.ops",
                   "autodeploy_cli.models", "autodeploy_cli.export", "autodeploy_cli.distributed",
                   "autodeploy_cli.config"},
    "autodeploy_cli.pipeline": {"transforms", "autodeploy_cli.export", "autodeploy_cli.graph", "autodeploy_cli.models",
                                "autodeploy_cli.ops", "autodeploy_cli.distributed", "autodeploy_cli.config",
                                "model_registry"},
    # the runtime is handed a built model: it never imports the pipeline, the transforms or the graph helpers
    "autodeploy_cli.runtime": {"autodeploy_cli.ops", "autodeploy_cli.distributed", "autodeploy_cli.config"},
    "autodeploy_cli.llm": {"autodeploy_cli.pipeline", "autodeploy_cli.runtime", "autodeploy_cli.distributed",
                           "autodeploy_cli.models", "autodeploy_cli.config"},
}
ALLOWED.update({leaf: set() for leaf in LEAVES})
FRONT = {"autodeploy_cli.bench", "autodeploy_cli.serve", "autodeploy_cli.eval"}
for front in FRONT:  # front ends: the runtime through the LLM API, models for tokenizers and configs
    ALLOWED[front] = {"autodeploy_cli.llm", "autodeploy_cli.runtime", "autodeploy_cli.models",
                      "autodeploy_cli.distributed", "autodeploy_cli.config", "autodeploy_cli.bench",
                      "autodeploy_cli.serve"}
TOP = ("autodeploy_cli.cli", "autodeploy_cli.commands", "autodeploy_cli.__main__", "autodeploy_cli")  # may import all


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if any(rel.startswith(s) for s in SKIP):
                continue
            name = rel[:-3].replace("/", ".")
            out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that `name` imports (`from a import b` is a.b when that is a module, else a)."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_pkg else name.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _layer(module: str) -> str:
    if module in LEAVES:
        return module
    keys = [k for k in [*ALLOWED, *TOP] if module == k or module.startswith(k + ".")]
    return max(keys, key=len) if keys else module


def test_no_import_cycles():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_imports_point_down_the_layers():
    bad = []
    for module, deps in _graph().items():
        layer = _layer(module)
        if layer in TOP or layer.startswith("autodeploy_cli.cli"):
            continue
        allowed = ALLOWED.get(layer)
        assert allowed is not None, f"module {module} is in no layer of this test: add it"
        for dep in deps:
            dep_layer = _layer(dep)
            ok = dep_layer == layer or dep in LEAVES or any(dep == a or dep.startswith(a + ".") for a in allowed)
            if not ok:
                bad.append(f"{module} -> {dep}")
    assert bad == []


def test_the_check_sees_lazy_imports():
    """A deliberately upward lazy import is caught (the test would otherwise pass on an empty graph)."""
    path = Path(__file__).parent / "_probe_runtime_module.py"
    path.write_text("def f():\n    from autodeploy_cli.pipeline.build import build\n")
    try:
        deps = _imports("autodeploy_cli.runtime.x", path, set(_modules()))
    finally:
        path.unlink()
    assert deps == {"autodeploy_cli.pipeline.build"}
    assert _layer("autodeploy_cli.runtime.x") == "autodeploy_cli.runtime"
    assert "autodeploy_cli.pipeline" not in ALLOWED["autodeploy_cli.runtime"]
