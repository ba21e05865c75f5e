"""match_sdpa_to_torch_attention: `F.scaled_dot_product_attention` calls become `auto_deploy::torch_attention`.

Before:
    %o = aten.scaled_dot_product_attention(%q, %k, %v, %mask, 0.0, False, scale=0.25)      # q, k, v: [b, n, s, d]
After:
    %o = auto_deploy.torch_attention(%q, %k, %v, attn_mask=None, is_causal=True, scale=0.25, sliding_window=None,
                                     layout='bnsd')
A mask that evaluates to the causal (sliding-window) mask becomes flags; any other mask is kept. GQA inputs
(enable_gqa=True) are native to torch_attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from autodeploy_cli.graph.attention_mask import erase_dropped_masks, mask_cache_for, sdpa_to_torch_attention
from autodeploy_cli.graph.core import is_op
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.graph.match import replace
from autodeploy_cli.pipeline.registry import register

aten = torch.ops.aten


@dataclass
class MatchSdpaOptions(TransformOptions):
    requires_shape_prop: bool = False  # structure only; masks are evaluated on real tensors


@register("match_sdpa_to_torch_attention")
class MatchSdpaToTorchAttention(BaseTransform):
    options_cls = MatchSdpaOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        count, cache, touched = 0, mask_cache_for(ctx), []
        for node in list(gm.graph.nodes):
            if not is_op(node, aten.scaled_dot_product_attention.default):
                continue
            new = sdpa_to_torch_attention(gm, node, mask_cache=cache)
            replace(node, new)
            touched.append(new)
            count += 1
        erase_dropped_masks(gm, cache)
        return TransformInfo.matched(count, touched)
