"""fuse_rmsnorm: the canonical RMSNorm runs as one Triton kernel (one read, one write per row).

Before:  %n = auto_deploy.torch_rmsnorm(%x, %w, 1e-05, 0.0)
After:   %n = auto_deploy.triton_rmsnorm(%x, %w, 1e-05, 0.0)
With backend torch (the default on CPU) the reference op stays and the transform reports no match.
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
class FuseRmsnormOptions(TransformOptions):
    backend: str = "auto"  # auto (triton on CUDA, torch elsewhere) | torch | triton
    choices: ClassVar[dict] = {"backend": BACKENDS}


@register("fuse_rmsnorm")
class FuseRmsnorm(BaseTransform):
    options_cls = FuseRmsnormOptions

    def apply(self, gm: fx.GraphModule, ctx: TransformContext) -> TransformInfo:
        load_ops()
        backend = resolve_backend(self.options.backend, ctx.device)
        if backend == "torch":
            return TransformInfo.untouched("backend torch: the reference op stays")
        nodes = [n for n in gm.graph.nodes if n.op == "call_function"
                 and n.target == torch.ops.auto_deploy.torch_rmsnorm.default]
        if not nodes:
            return TransformInfo.untouched("no torch_rmsnorm")
        op = fused_op(backend, "rmsnorm")
        for n in nodes:
            n.target = op
        return TransformInfo(num_matches=len(nodes), is_clean=False, has_valid_shapes=True, note=f"backend {backend}")
