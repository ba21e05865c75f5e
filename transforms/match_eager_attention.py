"""match_eager_attention: HF's eager attention (matmul, scale, soft-cap, mask, softmax, matmul) becomes
`auto_deploy::torch_attention` (layout bnsd; a recognised causal/sliding-window mask becomes flags).

Before:
    %kt = aten.transpose.int(%k, 2, 3)
    %w = aten.matmul(%q, %kt);  %w1 = aten.mul.Tensor(%w, 0.25)
    [%w2 = aten.div.Tensor(%w1, 50.0); %t = aten.tanh(%w2); %w3 = aten.mul.Tensor(%t, 50.0)]   # soft-capping
    %w4 = aten.add.Tensor(%w3, %mask)
    %p = aten.softmax.int(%w4, -1, torch.float32); %p1 = aten.to.dtype(%p, ...); %p2 = aten.dropout(%p1, 0.0, False)
    %o = aten.matmul(%p2, %v)
After:
    %o = auto_deploy.torch_attention(%q, %k, %v, attn_mask=None, is_causal=True, scale=0.25, logit_cap=50.0,
                                     sliding_window=None, layout='bnsd')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import fx

from autodeploy_cli.graph.attention_mask import attention_call, erase_dropped_masks
from autodeploy_cli.graph.core import is_op, op_name
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.graph.match import (
    ALIAS_OPS, CAST_OPS, arg, erase_if_unused, operands, rank, record_miss, replace, scalar, skip, sole_user,
)
from autodeploy_cli.pipeline.registry import register

aten = torch.ops.aten
SOFTMAX_OPS = (aten.softmax.int, aten._softmax.default, aten._safe_softmax.default)
DROPOUT_OPS = (aten.dropout.default, aten.native_dropout.default, aten.feature_dropout.default)


@dataclass
class MatchEagerAttentionOptions(TransformOptions):
    requires_shape_prop: bool = True  # reads the ranks of q, k, v and of the scores


@dataclass
class _Scores:
    q: fx.Node
    k: fx.Node
    scale: Optional[float]
    logit_cap: Optional[float]
    nodes: list


def _scaled(node: Any) -> tuple[Any, Optional[float]]:
    """(inner, scale) for mul(x, s) / mul(s, x) / div(x, s) with a Python number s; (node, None) otherwise."""
    if is_op(node, aten.mul.Tensor) or is_op(node, aten.mul.Scalar):
        a, b = operands(node)
        if scalar(b) is not None and isinstance(a, fx.Node):
            return a, scalar(b)
        if scalar(a) is not None and isinstance(b, fx.Node):
            return b, scalar(a)
    if (is_op(node, aten.div.Tensor) or is_op(node, aten.div.Scalar)) and scalar(operands(node)[1]):
        return operands(node)[0], 1.0 / scalar(operands(node)[1])
    return node, None


def _softcapped(node: Any) -> tuple[Any, Optional[float], list]:
    """(inner, cap) for cap * tanh(x / cap); (node, None) otherwise."""
    outer, cap = _scaled(node)
    if cap is None or not is_op(outer, aten.tanh.default):
        return node, None, []
    inner, inv = _scaled(outer.args[0])
    if inv is None or abs(inv * cap - 1.0) > 1e-6:
        return node, None, []
    return inner, cap, [node, outer, outer.args[0]]


def _kt_source(kt: Any) -> Optional[fx.Node]:
    """k if kt is k transposed over its last two dims."""
    if not is_op(kt, aten.transpose.int):
        return None
    r = rank(kt)
    dims = {d % r if r else d for d in kt.args[1:3]}
    return kt.args[0] if r == 4 and dims == {2, 3} else None


def _parse_scores(node: Any) -> tuple[Optional[_Scores], str]:
    """Parse `[cap * tanh(] q @ k^T * scale [/ cap)]` (casts allowed between steps)."""
    nodes = []
    node = skip(node, CAST_OPS)
    node, cap, capped = _softcapped(node)
    nodes += capped
    node = skip(node, CAST_OPS)
    inner, scale = _scaled(node)
    if scale is not None:
        nodes.append(node)
    mm = skip(inner, CAST_OPS)
    if not is_op(mm, aten.matmul.default):
        what = op_name(mm).replace("aten.", "") if isinstance(mm, fx.Node) else repr(mm)
        return None, f"scores come from `{what}`, not matmul(q, k^T)"
    q, kt = mm.args[0], mm.args[1]
    k = _kt_source(kt)
    if k is None or rank(q) != 4:
        return None, "scores are not matmul(q, k.transpose(2, 3)) of 4-D [b, n, s, d] tensors"
    return _Scores(q, k, 1.0 if scale is None else scale, cap, nodes + [mm, kt]), ""


def _value_matmul(softmax: fx.Node) -> tuple[Optional[fx.Node], list]:
    """The matmul(probs, v) fed by the softmax (through casts and inference-time dropout), and the nodes between
    (dropout is not removed by dead-code elimination: it is seeded, hence "impure")."""
    node, between = softmax, []
    while True:
        user = sole_user(node)
        if user is None:
            return None, []
        if is_op(user, CAST_OPS + ALIAS_OPS + DROPOUT_OPS):
            node = user
            between.append(user)
            continue
        if is_op(user, aten.matmul.default) and user.args[0] is node:
            return user, between
        return None, []


def match_one(softmax: fx.Node) -> tuple[Optional[dict], str]:
    """The pieces of one eager attention block anchored at its softmax, or (None, why not)."""
    dim = arg(softmax, 1, "dim")
    if rank(softmax) != 4 or dim not in (-1, 3):
        return None, "softmax is not over the last dim of 4-D scores"
    pv, between = _value_matmul(softmax)
    if pv is None:
        return None, "softmax output does not feed matmul(probs, v)"
    x = skip(softmax.args[0], CAST_OPS)
    mask = None
    if is_op(x, aten.add.Tensor):
        a, b = operands(x)
        for scores_side, mask_side in ((a, b), (b, a)):
            parsed, why = _parse_scores(scores_side)
            if parsed is not None and isinstance(mask_side, fx.Node):
                return dict(scores=parsed, mask=mask_side, pv=pv, extra=[x] + between), ""
        return None, why
    parsed, why = _parse_scores(x)
    if parsed is None:
        return None, why
    return dict(scores=parsed, mask=mask, pv=pv, extra=between), ""


@register("match_eager_attention")
class MatchEagerAttention(BaseTransform):
    options_cls = MatchEagerAttentionOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        count, cache, touched = 0, {}, []
        for node in list(gm.graph.nodes):
            if not is_op(node, SOFTMAX_OPS) or rank(node) != 4:
                continue
            found, why = match_one(node)
            if found is None:
                record_miss(ctx.misses, "attention", node, why)
                continue
            s: _Scores = found["scores"]
            pv: fx.Node = found["pv"]
            with gm.graph.inserting_before(pv):
                new = attention_call(gm.graph, s.q, s.k, pv.args[1], found["mask"], is_causal=False, scale=s.scale,
                                     logit_cap=s.logit_cap, layout="bnsd", gm=gm, mask_cache=cache)
            replace(pv, new)
            touched.append(new)
            erase_if_unused(gm.graph, [pv, node] + s.nodes + found["extra"])
            count += 1
        erase_dropped_masks(gm, cache)
        return TransformInfo.matched(count, touched)
