"""optimize_linear: linear layers take in the RMSNorm / SiLU-and-mul that feeds them and run a GEMV at one token.

At batch 1 a decode step is ~130 weight streams and ~200 small launches. The fused ops run their prologue inside a
GEMV kernel when the step has one token (and the unfused kernels + cuBLAS otherwise), which removes the norm and
activation launches and cuBLAS's split-K reduce from the single-token path.

Before (after fuse_gemms, fuse_silu_mul, fuse_add_rmsnorm):
    %f = auto_deploy.triton_fused_add_rmsnorm(%x, %res, %ln_w, 1e-05, 0.0)
    %n = getitem(%f, 0)   %h = getitem(%f, 1)
    %qkv = aten.linear(%n, %qkv_w)
    %a = auto_deploy.triton_silu_and_mul(%gu)   %d = aten.linear(%a, %down_w)
    %o = aten.linear(%attn, %o_w)
After:
    %g = auto_deploy.triton_add_rmsnorm_linear(%x, %res, %ln_w, 1e-05, 0.0, %qkv_w)
    %qkv = getitem(%g, 0)   %h = getitem(%g, 1)
    %d = auto_deploy.triton_silu_mul_linear(%gu, %down_w)
    %o = auto_deploy.triton_linear(%attn, %o_w)                # triton backend only
The LM head keeps its norm separate (gather_logits_before_lm_head moves a row gather in front of it).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import fx

from autodeploy_cli.ops import load_ops
from autodeploy_cli.config.schema import BACKEND_CHOICES
from autodeploy_cli.ops.backends import FUSED_OPS, fused_op, resolve
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.pipeline.registry import register
from transforms.gather_logits_before_lm_head import find_lm_head

aten = torch.ops.aten
_NORMS = {"auto_deploy::torch_rmsnorm", *(f"auto_deploy::{op}" for op in FUSED_OPS["rmsnorm"].values())}
_ADD_NORMS = {f"auto_deploy::{op}" for op in FUSED_OPS["fused_add_rmsnorm"].values()}
_SILU_MULS = {f"auto_deploy::{op}" for op in FUSED_OPS["silu_and_mul"].values()}


@dataclass
class OptimizeLinearOptions(TransformOptions):
    backend: str = "auto"  # auto (triton on CUDA, torch elsewhere) | torch | triton
    fuse_norm: bool = True  # RMSNorm (and residual add) into the linear that reads it
    fuse_silu_mul: bool = True  # SiLU-and-mul into the down projection
    choices: ClassVar[dict] = {"backend": BACKEND_CHOICES["fused"]}


def _name(node: fx.Node) -> str:
    return node.target.name() if node.op == "call_function" and hasattr(node.target, "name") else ""


def _plain_linear(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target == aten.linear.default and not node.kwargs


def _only_user(node: fx.Node) -> Optional[fx.Node]:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _replace(graph: fx.Graph, old: fx.Node, op, args: tuple) -> fx.Node:
    with graph.inserting_before(old):
        new = graph.call_function(op, args)
    if "val" in old.meta:
        new.meta["val"] = old.meta["val"]
    old.replace_all_uses_with(new)
    graph.erase_node(old)
    return new


def _norm_args(norm: fx.Node) -> tuple:
    """(eps, weight_offset) of an rmsnorm / fused_add_rmsnorm node, defaults filled in."""
    first = 2 if _name(norm) in _NORMS else 3
    args = list(norm.args) + [None] * 4
    eps = args[first] if args[first] is not None else norm.kwargs.get("eps")
    off = args[first + 1] if args[first + 1] is not None else norm.kwargs.get("weight_offset", 0.0)
    return eps, off


@register("optimize_linear")
class OptimizeLinear(BaseTransform):
    options_cls = OptimizeLinearOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        load_ops()
        backend = resolve("fused", self.options.backend, ctx.device.type)
        graph, head = gm.graph, find_lm_head(gm)
        counts = {"silu_mul": 0, "norm": 0, "add_norm": 0, "plain": 0}
        for lin in [n for n in graph.nodes if _plain_linear(n)]:
            src, rest = lin.args[0], tuple(lin.args[1:])
            if not isinstance(src, fx.Node):
                continue
            if self.options.fuse_silu_mul and _name(src) in _SILU_MULS and _only_user(src) is lin:
                _replace(graph, lin, fused_op(backend, "silu_mul_linear"), (src.args[0], *rest))
                graph.erase_node(src)
                counts["silu_mul"] += 1
            elif self.options.fuse_norm and lin is not head and _name(src) in _NORMS and _only_user(src) is lin:
                eps, off = _norm_args(src)
                _replace(graph, lin, fused_op(backend, "rmsnorm_linear"), (src.args[0], src.args[1], eps, off, *rest))
                graph.erase_node(src)
                counts["norm"] += 1
            elif self.options.fuse_norm and lin is not head and fuse_add_norm(
                    graph, lin, src, fused_op(backend, "add_rmsnorm_linear")):
                counts["add_norm"] += 1
            elif backend == "triton":
                _replace(graph, lin, fused_op(backend, "linear"), tuple(lin.args))
                counts["plain"] += 1
        total = sum(counts.values())
        if not total:
            return TransformInfo.untouched("no linear layer to optimize")
        note = f"backend {backend}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
        return TransformInfo(num_matches=total, is_clean=False, has_valid_shapes=True, note=note)


def fuse_add_norm(graph: fx.Graph, lin: fx.Node, src: fx.Node, op, extra: tuple = ()) -> bool:
    """%n = getitem(fused_add_rmsnorm(...), 0) read by linear `lin` alone -> one `op`(x, residual, norm_w, eps,
    offset, *lin's parameters, *extra) returning (y, sum) (also used by fuse_fp8_linear)."""
    if not (src.op == "call_function" and src.target is operator.getitem and src.args[1] == 0):
        return False
    fused = src.args[0]
    if not (isinstance(fused, fx.Node) and _name(fused) in _ADD_NORMS and _only_user(src) is lin):
        return False
    sums = [u for u in fused.users if u is not src]
    if not all(u.target is operator.getitem and u.args[1] == 1 for u in sums):
        return False
    params = lin.args[1:]  # weight (and bias): parameters, re-read at the norm's position
    if not all(p is None or (isinstance(p, fx.Node) and p.op == "get_attr") for p in params):
        return False
    eps, off = _norm_args(fused)
    x, residual, norm_w = fused.args[:3]
    with graph.inserting_before(fused):  # where the norm was: the sum's readers all come later
        params = tuple(p if p is None else graph.get_attr(p.target) for p in params)
        new = graph.call_function(op, (x, residual, norm_w, eps, off, *params, *extra))
        out = graph.call_function(operator.getitem, (new, 0))
        total = graph.call_function(operator.getitem, (new, 1))
    if "val" in lin.meta and "val" in fused.meta:
        out.meta["val"], total.meta["val"] = lin.meta["val"], fused.meta["val"][1]
        new.meta["val"] = (lin.meta["val"], fused.meta["val"][1])
    lin.replace_all_uses_with(out)
    graph.erase_node(lin)
    for u in sums:
        u.replace_all_uses_with(total)
        graph.erase_node(u)
    graph.erase_node(src)
    graph.erase_node(fused)
    return True
