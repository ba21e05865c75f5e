"""match_grouped_attention: attention over repeated K/V heads becomes native grouped-query `torch_attention`.

Before:
    %kr = auto_deploy.torch_attention_repeat_kv(%k, 2)
    %vr = auto_deploy.torch_attention_repeat_kv(%v, 2)
    %o = aten.scaled_dot_product_attention(%q, %kr, %vr, %mask, scale=0.25)   (or torch_attention(%q, %kr, %vr, ...))
After:
    %o = auto_deploy.torch_attention(%q, %k, %v, attn_mask=None, is_causal=True, scale=0.25, layout='bnsd')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import fx

from autodeploy_cli.ops import load_ops
from autodeploy_cli.graph.attention_mask import erase_dropped_masks, mask_cache_for, sdpa_to_torch_attention
from autodeploy_cli.graph.core import is_op
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.graph.match import replace
from autodeploy_cli.pipeline.registry import register

aten = torch.ops.aten


@dataclass
class MatchGroupedAttentionOptions(TransformOptions):
    requires_shape_prop: bool = False  # structure only


def _unrepeated(node: object) -> Optional[tuple[fx.Node, int]]:
    if isinstance(node, fx.Node) and is_op(node, torch.ops.auto_deploy.torch_attention_repeat_kv.default):
        return node.args[0], node.args[1]
    return None


@register("match_grouped_attention")
class MatchGroupedAttention(BaseTransform):
    options_cls = MatchGroupedAttentionOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        load_ops()
        attention = torch.ops.auto_deploy.torch_attention.default
        count, cache, touched = 0, mask_cache_for(ctx), []
        for node in list(gm.graph.nodes):
            is_sdpa = is_op(node, aten.scaled_dot_product_attention.default)
            if not (is_sdpa or (is_op(node, attention) and node.kwargs.get("layout", "bsnd") == "bnsd")):
                continue
            k, v = node.args[1], node.args[2]
            rk, rv = _unrepeated(k), _unrepeated(v)
            if rk is None or rv is None or rk[1] != rv[1]:
                continue
            if is_sdpa:
                new = sdpa_to_torch_attention(gm, node, rk[0], rv[0], cache)
                replace(node, new)
            else:
                node.args = (node.args[0], rk[0], rv[0], *node.args[3:])
                new = node
            touched.append(new)
            count += 1
        erase_dropped_masks(gm, cache)
        return TransformInfo.matched(count, touched)
