"""compile_model: torch-simple keeps the GraphModule; torch-compile wraps it and gives the same logits."""

from __future__ import annotations

import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.pipeline.build import build


def test_auto_is_torch_simple_on_cpu():
    result = build(resolve([], []))  # default: compile_backend auto, attn_backend auto
    assert isinstance(result.model, torch.fx.GraphModule)
    assert result.report["transforms"][-1]["note"] == "torch-simple"
    assert result.ctx.facts.compile_backend == "torch-simple"
    assert result.ctx.facts.attention_backend == "torch"


def test_torch_simple_is_identity():
    result = build(resolve([], ["compile_backend=torch-simple"]))
    assert isinstance(result.model, torch.fx.GraphModule)
    assert result.report["transforms"][-1]["note"] == "torch-simple"
