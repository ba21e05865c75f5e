"""Packaging hazards: our top-level `kernels` must not look like Hugging Face's `kernels` distribution, and the
dependency direction cli -> {pipeline, runtime, bench} -> transforms -> ops <- kernels holds."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_transformers_does_not_mistake_our_kernels_package():
    code = (
        "import kernels, transforms, model_registry\n"
        "assert not hasattr(kernels, '__version__') and not hasattr(transforms, '__version__')\n"
        "from transformers.utils.import_utils import is_kernels_available\n"
        "import transformers.integrations.hub_kernels as hk\n"
        "print(is_kernels_available())\n"
        "import torch\n"
        "from transformers import LlamaConfig, AutoModelForCausalLM\n"
        "cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,\n"
        "                  num_attention_heads=2, num_key_value_heads=1)\n"
        "m = AutoModelForCausalLM.from_config(cfg).eval()\n"
        "print(tuple(m(torch.tensor([[1, 2, 3]])).logits.shape))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "(1,", "3,", "64)"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_dependency_direction():
    """Transforms never import kernels or the runtime; kernels never import transforms; the runtime never imports
    transforms (the sequence info they share lives in autodeploy_cli.ops)."""
    problems = []
    rules = {
        "transforms": ("kernels", "autodeploy_cli.runtime", "autodeploy_cli.bench", "autodeploy_cli.cli"),
        "kernels": ("transforms", "autodeploy_cli.cli", "autodeploy_cli.pipeline", "autodeploy_cli.runtime"),
        "autodeploy_cli/runtime": ("transforms",),
        "autodeploy_cli/ops": ("transforms", "kernels"),
    }
    for folder, banned in rules.items():
        for path in (ROOT / folder).rglob("*.py"):
            for name in _imports(path):
                if any(name == b or name.startswith(b + ".") for b in banned):
                    problems.append(f"{path.relative_to(ROOT)} imports {name}")
    assert problems == []
