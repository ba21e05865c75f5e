"""match_eager_attention: HF's eager attention (matmul, scale, soft-cap, mask, softmax, matmul) becomes
`auto_deploy::torch_attention` (layout bnsd; a recognised causal / sliding-window / ALiBi mask becomes flags).

The softmax input is read by `autodeploy_cli.graph.scores.parse_scores`: one q @ k^T product (4-D matmul, or a 3-D
bmm / baddbmm on [b*n, s, d] between views, as Bloom and XGLM write it) with its scale and soft cap, additive terms
(masks, position biases) and fills with a very negative value (masked_fill, where, max(x, min) clamps). The terms
and fills become one mask, which the mask classifier evaluates.

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
Bloom (3-D, ALiBi folded into baddbmm):
    %s = aten.baddbmm(%alibi, %q3, %kt3, beta=1.0, alpha=0.25); %s4 = aten.view(%s, [b, n, s, s]) + %mask
    ... softmax ... %o3 = aten.bmm(%p3, %v3)
->  %o3 = aten.flatten(auto_deploy.torch_attention(%q, %k, %v, is_causal=True, scale=0.25,
                                                   alibi_slopes=%alibi_slopes_0, layout='bnsd'), 0, 1)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import fx

from autodeploy_cli.graph.attention_mask import attention_call, erase_dropped_masks, mask_cache_for
from autodeploy_cli.graph.core import is_op
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.graph.match import (
    ALIAS_OPS, CAST_OPS, VIEW_OPS, arg, erase_if_unused, rank, record_miss, replace, skip, sole_user,
)
from autodeploy_cli.graph.scores import Scores, build_mask, heads_of, key_of, parse_scores, to_4d
from autodeploy_cli.pipeline.registry import register

aten = torch.ops.aten
SOFTMAX_OPS = (aten.softmax.int, aten._softmax.default, aten._safe_softmax.default)
DROPOUT_OPS = (aten.dropout.default, aten.native_dropout.default, aten.feature_dropout.default)


@dataclass
class MatchEagerAttentionOptions(TransformOptions):
    requires_shape_prop: bool = True  # reads the ranks of q, k, v and of the scores


def _value_product(softmax: fx.Node) -> tuple[Optional[fx.Node], list]:
    """The matmul(probs, v) or bmm(probs, v) fed by the softmax (through casts, views and inference-time dropout),
    and the nodes between (dropout is not removed by dead-code elimination: it is seeded, hence "impure")."""
    node, between = softmax, []
    while True:
        user = sole_user(node)
        if user is None:
            return None, []
        if is_op(user, CAST_OPS + ALIAS_OPS + DROPOUT_OPS + VIEW_OPS):
            node = user
            between.append(user)
            continue
        if is_op(user, (aten.matmul.default, aten.bmm.default)) and user.args[0] is node:
            return user, between
        return None, []


def match_one(softmax: fx.Node) -> tuple[Optional[dict], str]:
    """The pieces of one eager attention block anchored at its softmax, or (None, why not)."""
    dim = arg(softmax, 1, "dim")
    if rank(softmax) not in (3, 4) or not isinstance(dim, int) or dim not in (-1, rank(softmax) - 1):
        return None, "softmax is not over the last dim of 3-D or 4-D scores"
    pv, between = _value_product(softmax)
    if pv is None:
        return None, "softmax output does not feed matmul(probs, v)"
    scores, why = parse_scores(softmax.args[0])
    if scores is None:
        return None, why
    heads = heads_of(skip(softmax.args[0], CAST_OPS)) or next(
        (heads_of(n) for n in scores.nodes if rank(n) == 4), None)
    if 3 in (rank(scores.q), rank(pv.args[1])) and heads is None:
        return None, "q, k, v are [b*n, s, d] but the head count is unknown (no [b, n, s, s] scores)"
    return dict(scores=scores, pv=pv, heads=heads, extra=between), ""


def _insert(gm: fx.GraphModule, found: dict, cache: dict, new: list) -> fx.Node:
    """torch_attention for a matched block (before its value product); returns the node replacing the product."""
    s: Scores = found["scores"]
    pv: fx.Node = found["pv"]
    g, heads = gm.graph, found["heads"]
    with g.inserting_before(pv):
        three_d = rank(pv.args[1]) == 3  # the value product is a bmm on [b*n, s, d]: so is its result
        q = to_4d(g, s.q, heads, new) if rank(s.q) == 3 else s.q
        k = key_of(g, s.kt, heads, new)
        v = to_4d(g, pv.args[1], heads, new) if three_d else pv.args[1]
        mask = build_mask(g, s, heads or 1, new)
        attn = attention_call(g, q, k, v, mask, is_causal=False, scale=s.scale, logit_cap=s.logit_cap,
                              layout="bnsd", gm=gm, mask_cache=cache)
        new += [a for a in attn.all_input_nodes if a.op == "get_attr"] + [attn]
        out = g.call_function(aten.flatten.using_ints, (attn, 0, 1)) if three_d else attn
    return out


@register("match_eager_attention")
class MatchEagerAttention(BaseTransform):
    options_cls = MatchEagerAttentionOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        count, cache, touched = 0, mask_cache_for(ctx), []
        for node in list(gm.graph.nodes):
            if not is_op(node, SOFTMAX_OPS) or rank(node) not in (3, 4):
                continue
            found, why = match_one(node)
            if found is None:
                if rank(node) == 4 or "matmul" not in why:  # 3-D softmaxes that feed no value product: not attention
                    record_miss(ctx.misses, "attention", node, why)
                continue
            out = _insert(gm, found, cache, touched)
            replace(found["pv"], out)
            touched.append(out)
            erase_if_unused(gm.graph, [found["pv"], node] + found["extra"] + found["scores"].nodes[::-1])
            count += 1
        erase_dropped_masks(gm, cache)
        return TransformInfo.matched(count, touched)
