"""fuse_add_rmsnorm: a residual add whose sum feeds an RMSNorm becomes one op returning (normed, sum).

Before:
    %h = aten.add.Tensor(%residual, %attn_out)
    %n = auto_deploy.torch_rmsnorm(%h, %w, 1e-05, 0.0)
    ... %n ... and later ... aten.add.Tensor(%h, %mlp_out)
After:
    %f = auto_deploy.triton_fused_add_rmsnorm(%residual, %attn_out, %w, 1e-05, 0.0)   # one pass over the row
    %n = getitem(%f, 0)   %h = getitem(%f, 1)
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import fx

from autodeploy_cli.ops import load_ops
from autodeploy_cli.config.schema import BACKEND_CHOICES
from autodeploy_cli.ops.backends import fused_op, resolve
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.pipeline.registry import register


@dataclass
class FuseAddRmsnormOptions(TransformOptions):
    backend: str = "auto"  # auto (triton on CUDA, torch elsewhere) | torch | triton
    choices: ClassVar[dict] = {"backend": BACKEND_CHOICES["fused"]}


def _residual_add(add: fx.Node) -> bool:
    """A tensor + tensor add without broadcasting (shapes from export's metadata; new nodes may lack it)."""
    if not (add.target == torch.ops.aten.add.Tensor and len(add.args) == 2 and not add.kwargs):
        return False
    out = add.meta.get("val")
    if out is None or not all(isinstance(a, fx.Node) for a in add.args):
        return False
    vals = [a.meta.get("val") for a in add.args]
    known = [v for v in vals if v is not None]
    return bool(known) and all(v.shape == out.shape and v.dtype == out.dtype for v in known)


@register("fuse_add_rmsnorm")
class FuseAddRmsnorm(BaseTransform):
    options_cls = FuseAddRmsnormOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        load_ops()
        backend = resolve("fused", self.options.backend, ctx.device.type)
        norm_op = torch.ops.auto_deploy.torch_rmsnorm.default
        graph, count = gm.graph, 0
        for node in list(graph.nodes):
            if node.op != "call_function" or node.target != norm_op:
                continue
            add = node.args[0]
            if not (isinstance(add, fx.Node) and _residual_add(add)):
                continue
            x, residual = add.args
            eps = node.args[2]
            offset = node.args[3] if len(node.args) > 3 else node.kwargs.get("weight_offset", 0.0)
            with graph.inserting_after(add):  # the sum's other users may come before the norm
                fused = graph.call_function(fused_op(backend, "fused_add_rmsnorm"),
                                            (x, residual, node.args[1], eps, offset))
            with graph.inserting_after(fused):
                total = graph.call_function(operator.getitem, (fused, 1))
            with graph.inserting_after(fused):
                normed = graph.call_function(operator.getitem, (fused, 0))
            if "val" in node.meta and "val" in add.meta:  # shapes unchanged: keep the metadata valid
                normed.meta["val"], total.meta["val"] = node.meta["val"], add.meta["val"]
                fused.meta["val"] = (node.meta["val"], add.meta["val"])
            node.replace_all_uses_with(normed)
            graph.erase_node(node)
            add.replace_all_uses_with(total)
            graph.erase_node(add)
            count += 1
        if not count:
            return TransformInfo.untouched("no residual add feeding an RMSNorm")
        return TransformInfo(num_matches=count, is_clean=False, has_valid_shapes=True, note=f"backend {backend}")
