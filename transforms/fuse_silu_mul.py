"""fuse_silu_mul: silu(gate) * up over the two halves of one fused gate|up GEMM becomes one SiLU-and-mul op.

Before (after fuse_gemms):
    %gu = aten.linear(%x, %gate_proj_weight_fused)          # [.., 2I]
    %g = aten.narrow(%gu, -1, 0, I)   %u = aten.narrow(%gu, -1, I, I)
    %y = aten.mul(aten.silu(%g), %u)
After:
    %y = auto_deploy.triton_silu_and_mul(%gu)                # (torch_silu_and_mul with backend torch)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import fx

from autodeploy_cli.graph.core import get_attr_value
from autodeploy_cli.config.schema import BACKEND_CHOICES
from autodeploy_cli.ops.backends import fused_op, resolve
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.pipeline.registry import register

aten = torch.ops.aten
_FP8_LINEARS = ("auto_deploy::torch_quant_fp8_linear", "auto_deploy::torch_quant_fp8_block_linear")


@dataclass
class FuseSiluMulOptions(TransformOptions):
    backend: str = "auto"  # auto (triton on CUDA, torch elsewhere) | torch | triton
    choices: ClassVar[dict] = {"backend": BACKEND_CHOICES["fused"]}


def _width(gm: fx.GraphModule, node: fx.Node):
    """Last-dim size of `node` from its shape metadata or, for a linear, its weight."""
    val = node.meta.get("val")
    if val is not None:
        return val.shape[-1]
    fp8 = getattr(node.target, "name", lambda: "")() in _FP8_LINEARS  # (x, weight, ...) like linear
    if (node.target == aten.linear.default or fp8) and node.args[1].op == "get_attr":
        return get_attr_value(gm, node.args[1].target).shape[0]
    return None


def _halves(gm: fx.GraphModule, node: fx.Node):
    """F if node is mul(silu(narrow(F, -1, 0, I)), narrow(F, -1, I, I)) and F's last dim is 2I, else None."""
    if node.op != "call_function" or node.target != aten.mul.Tensor or len(node.args) != 2:
        return None
    a, b = node.args
    if not (isinstance(a, fx.Node) and a.target == aten.silu.default and len(a.users) == 1):
        return None
    g = a.args[0]
    if not (isinstance(g, fx.Node) and isinstance(b, fx.Node)):
        return None
    if g.target != aten.narrow.default or b.target != aten.narrow.default or len(g.users) != 1:
        return None
    if g.args[0] is not b.args[0] or g.args[1] != -1 or b.args[1] != -1:
        return None
    inter = g.args[3]
    if g.args[2] != 0 or b.args[2] != inter or b.args[3] != inter:
        return None
    fused = g.args[0]
    return fused if _width(gm, fused) == 2 * inter else None


@register("fuse_silu_mul")
class FuseSiluMul(BaseTransform):
    options_cls = FuseSiluMulOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        backend = resolve("fused", self.options.backend, ctx.device.type)
        graph, count = gm.graph, 0
        for node in list(graph.nodes):
            fused = _halves(gm, node)
            if fused is None:
                continue
            with graph.inserting_before(node):
                new = graph.call_function(fused_op(backend, "silu_and_mul"), (fused,))
                if "val" in node.meta:
                    new.meta["val"] = node.meta["val"]
            node.replace_all_uses_with(new)
            count += 1
        if not count:
            return TransformInfo.untouched("no silu(gate) * up over a fused gate|up GEMM")
        return TransformInfo(num_matches=count, is_clean=False, has_valid_shapes=True, note=f"backend {backend}")
