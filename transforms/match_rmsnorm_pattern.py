"""match_rmsnorm_pattern: HF RMSNorm (float32 statistics, rsqrt(mean(x^2) + eps), weight) becomes
`auto_deploy::torch_rmsnorm`, including the Gemma `(1 + w)` form (weight_offset=1.0).

Before (Llama):
    %xf = aten.to.dtype(%x, torch.float32); %p = aten.pow.Tensor_Scalar(%xf, 2); %m = aten.mean.dim(%p, [-1], True)
    %a = aten.add.Tensor(%m, 1e-06); %r = aten.rsqrt(%a); %n = aten.mul.Tensor(%xf, %r)
    %c = aten.to.dtype(%n, torch.float32); %y = aten.mul.Tensor(%weight, %c)
After:
    %y = auto_deploy.torch_rmsnorm(%x, %weight, 1e-06, 0.0)
Gemma: ... %w1 = aten.add.Tensor(aten.to.dtype(%weight, f32), 1.0); %y = aten.type_as(aten.mul(%n, %w1), %xf)
    -> %y = auto_deploy.torch_rmsnorm(%x, %weight, 1e-06, 1.0)
A norm missing a piece (e.g. no `+ eps`) is left alone and reported with the chain seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import fx

from autodeploy_cli.ops import load_ops
from autodeploy_cli.graph.core import is_op, op_name
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.graph.match import (
    CAST_OPS, arg, dtype, is_last_dim, is_param, operands, rank, record_miss, replace, scalar, skip,
    split_binary, static_shape,
)
from autodeploy_cli.pipeline.registry import register

aten = torch.ops.aten


@dataclass
class MatchRMSNormOptions(TransformOptions):
    requires_shape_prop: bool = True  # checks ranks/sizes of x and the weight


def _squared(node: Any) -> Optional[fx.Node]:
    """x for pow(x, 2) or x * x."""
    if is_op(node, aten.pow.Tensor_Scalar) and scalar(node.args[1]) == 2.0:
        return node.args[0]
    if is_op(node, aten.mul.Tensor) and node.args[0] is node.args[1]:
        return node.args[0]
    return None


def _statistics(rsqrt: fx.Node) -> tuple[Optional[tuple[fx.Node, float]], str]:
    """(xf, eps) for rsqrt(mean(xf^2, -1, keepdim) + eps)."""
    add = rsqrt.args[0]
    if not is_op(add, (aten.add.Tensor, aten.add.Scalar)):
        what = op_name(add).replace("aten.", "") if isinstance(add, fx.Node) else repr(add)
        return None, f"rsqrt input is `{what}`, not mean(x^2) + eps (no eps add)"
    split = split_binary(add, lambda n: scalar(n) is not None)
    if split is None:
        return None, "rsqrt input adds a tensor, not a constant eps"
    eps, mean = scalar(split[0]), split[1]
    if not is_op(mean, aten.mean.dim):
        return None, "eps is not added to a mean"
    dims, keep = arg(mean, 1, "dim"), arg(mean, 2, "keepdim", False)
    if not (isinstance(dims, (list, tuple)) and len(dims) == 1 and is_last_dim(dims[0], mean.args[0]) and keep):
        return None, "mean is not over the last dim with keepdim=True"
    xf = _squared(mean.args[0])
    if xf is None:
        return None, "mean is not of x^2"
    return (xf, eps), ""


def _weighted(normed: fx.Node, hidden: Optional[int]) -> Optional[tuple[fx.Node, fx.Node, float]]:
    """(out, weight, offset) for the weight multiply after the normalisation (casts around it allowed)."""
    y = normed
    while len(y.users) == 1 and is_op(next(iter(y.users)), CAST_OPS):
        y = next(iter(y.users))
    if len(y.users) != 1:
        return None
    mul = next(iter(y.users))
    if not is_op(mul, aten.mul.Tensor):
        return None
    _, w = split_binary(mul, lambda n: n is y) or (None, None)
    offset = 0.0
    if is_op(w, (aten.add.Tensor, aten.add.Scalar)):
        split = split_binary(w, lambda n: scalar(n) is not None)
        if split is None:
            return None
        offset, w = scalar(split[0]), split[1]
    if not is_param(w) or rank(w) != 1:
        return None
    size = (static_shape(w) or (None,))[0]
    if hidden is not None and size is not None and size != hidden:
        return None
    out = mul
    while len(out.users) == 1 and is_op(next(iter(out.users)), CAST_OPS):
        out = next(iter(out.users))
    return out, skip(w, CAST_OPS), offset


def match_one(rsqrt: fx.Node) -> tuple[Optional[dict], str]:
    stats, why = _statistics(rsqrt)
    if stats is None:
        return None, why
    xf, eps = stats
    normed = [u for u in rsqrt.users if is_op(u, aten.mul.Tensor) and set(operands(u)) == {xf, rsqrt}]
    if len(rsqrt.users) != 1 or len(normed) != 1:
        return None, "rsqrt(...) does not multiply the same x whose square was averaged"
    x = skip(xf, CAST_OPS)
    hidden = (static_shape(x) or (None,))[-1] if rank(x) else None
    weighted = _weighted(normed[0], hidden)
    if weighted is None:
        return None, "normalised x is not multiplied by a 1-D weight [(1 +) w]"
    out, weight, offset = weighted
    return dict(x=x, weight=weight, eps=eps, offset=offset, out=out), ""


@register("match_rmsnorm_pattern")
class MatchRMSNormPattern(BaseTransform):
    options_cls = MatchRMSNormOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        load_ops()
        count, touched = 0, []
        for node in list(gm.graph.nodes):
            if not is_op(node, aten.rsqrt.default):
                continue
            found, why = match_one(node)
            if found is None:
                record_miss(ctx.misses, "rmsnorm", node, why)
                continue
            out = found["out"]
            with gm.graph.inserting_before(out):
                new = gm.graph.call_function(torch.ops.auto_deploy.torch_rmsnorm.default,
                                             (found["x"], found["weight"], found["eps"], found["offset"]))
                touched.append(new)
                if dtype(out) is not None and dtype(found["x"]) is not None and dtype(out) != dtype(found["x"]):
                    new = gm.graph.call_function(aten.to.dtype, (new, dtype(out)))  # e.g. fp32 weight * bf16 x
                    touched.append(new)
            replace(out, new)
            count += 1
        return TransformInfo.matched(count, touched)
