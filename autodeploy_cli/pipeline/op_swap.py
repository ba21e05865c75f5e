"""The base of fusions that swap a canonical op for a backend's implementation node for node (same arguments):
fuse_rmsnorm, optimize_rope. A subclass names the source op, the fused-op key and, if needed, which nodes qualify.

Before:  %n = auto_deploy.torch_rmsnorm(%x, %w, 1e-05, 0.0)
After:   %n = auto_deploy.triton_rmsnorm(%x, %w, 1e-05, 0.0)
A backend without an implementation of the key (e.g. torch: the reference op is already the implementation)
leaves the graph as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import fx

from autodeploy_cli.config.schema import BACKEND_CHOICES
from autodeploy_cli.ops import load_ops
from autodeploy_cli.ops.backends import FUSED_OPS, fused_op, resolve
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions


@dataclass
class OpSwapOptions(TransformOptions):
    backend: str = "auto"  # auto (triton on CUDA, torch elsewhere) | torch | triton
    choices: ClassVar[dict] = {"backend": BACKEND_CHOICES["fused"]}


class OpSwapTransform(BaseTransform):
    options_cls = OpSwapOptions
    source_op: ClassVar[str] = ""  # canonical op in the auto_deploy namespace, e.g. "torch_rmsnorm"
    fused_key: ClassVar[str] = ""  # key of autodeploy_cli.ops.backends.FUSED_OPS

    def accepts(self, node: fx.Node) -> bool:
        """Whether this node of the source op can be swapped (default: every one)."""
        return True

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        load_ops()
        backend = resolve("fused", self.options.backend, ctx.device.type)
        if backend not in FUSED_OPS[self.fused_key]:
            return TransformInfo.untouched(f"backend {backend}: the reference op stays")
        src = getattr(torch.ops.auto_deploy, self.source_op).default
        nodes = [n for n in gm.graph.nodes if n.op == "call_function" and n.target == src and self.accepts(n)]
        if not nodes:
            return TransformInfo.untouched(f"no {self.source_op} to swap")
        op = fused_op(backend, self.fused_key)
        for n in nodes:
            n.target = op
        return TransformInfo(num_matches=len(nodes), is_clean=False, has_valid_shapes=True, note=f"backend {backend}")
