"""optimize_rope: each layer's RoPE on q and k runs as one Triton launch reading the cos/sin rows that the graph
computes once per forward (shared by all layers).

Before:  %r = auto_deploy.torch_rope_with_explicit_cos_sin(%q, %k, %cos, %sin, 2)     # q/k [b, s, n, d]
After:   %r = auto_deploy.triton_rope_with_explicit_cos_sin(%q, %k, %cos, %sin, 2)
Only the bsnd layout (unsqueeze_dim 2) is rewritten; with backend torch (CPU default) nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import fx

from autodeploy_cli.ops import load_ops
from autodeploy_cli.ops.fused_backends import BACKENDS, fused_op, resolve_backend
from autodeploy_cli.pipeline.interface import BaseTransform, TransformContext, TransformInfo, TransformOptions
from autodeploy_cli.pipeline.registry import register


@dataclass
class OptimizeRopeOptions(TransformOptions):
    backend: str = "auto"  # auto (triton on CUDA, torch elsewhere) | torch | triton
    choices: ClassVar[dict] = {"backend": BACKENDS}


def _unsqueeze_dim(n: fx.Node) -> int:
    return n.args[4] if len(n.args) > 4 else n.kwargs.get("unsqueeze_dim", 1)


@register("optimize_rope")
class OptimizeRope(BaseTransform):
    options_cls = OptimizeRopeOptions

    def apply(self, gm: fx.GraphModule, ctx: TransformContext) -> TransformInfo:
        load_ops()
        backend = resolve_backend(self.options.backend, ctx.device)
        if backend == "torch":
            return TransformInfo.untouched("backend torch: the reference op stays")
        src = torch.ops.auto_deploy.torch_rope_with_explicit_cos_sin.default
        nodes = [n for n in gm.graph.nodes if n.op == "call_function" and n.target == src and _unsqueeze_dim(n) == 2]
        if not nodes:
            return TransformInfo.untouched("no bsnd torch_rope_with_explicit_cos_sin")
        op = fused_op(backend, "rope_with_explicit_cos_sin")
        for n in nodes:
            n.target = op
        return TransformInfo(num_matches=len(nodes), is_clean=False, has_valid_shapes=True, note=f"backend {backend}")
