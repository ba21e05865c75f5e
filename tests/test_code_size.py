"""Modules stay under 350 lines (kernels excepted) and functions under 60 (kernels and tests excepted)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKED = ("autodeploy_cli", "transforms", "model_registry", "benchmarks")


def _files():
    for pkg in CHECKED:
        yield from sorted((ROOT / pkg).rglob("*.py"))


def test_modules_under_350_lines():
    long = [f"{p.relative_to(ROOT)}: {n}" for p in _files() if (n := len(p.read_text().splitlines())) > 350]
    assert long == []


def test_functions_under_60_lines():
    long = []
    for p in _files():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name}: {n}")
    assert long == []
