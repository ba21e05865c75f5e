"""match_attention_layout: every `torch_attention` gets the layout the attention backends expect (bsnd default).

Before:
    %o = auto_deploy.torch_attention(%q, %k, %v, ..., layout='bnsd')                  # q: [b, n, s, d]
After:
    %qt = aten.transpose.int(%q, 1, 2)   (same for %k, %v)                            # [b, s, n, d]
    %ot = auto_deploy.torch_attention(%qt, %kt, %vt, ..., layout='bsnd')
    %o = aten.transpose.int(%ot, 1, 2)
`eliminate_redundant_transposes` later cancels these transposes against HF's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import fx

from autodeploy_cli.ops import load_ops
from autodeploy_cli.graph.core import is_op
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.graph.match import copy_meta
from autodeploy_cli.pipeline.registry import register

aten = torch.ops.aten


@dataclass
class MatchAttentionLayoutOptions(TransformOptions):
    attn_layout: str = "bsnd"  # the layout every torch_attention should have: bsnd ([b, s, n, d]) or bnsd
    choices: ClassVar[dict] = {"attn_layout": ("bsnd", "bnsd")}


def transpose12(graph: fx.Graph, x: fx.Node, like: fx.Node) -> fx.Node:
    return copy_meta(graph.call_function(aten.transpose.int, (x, 1, 2)), like)


@register("match_attention_layout")
class MatchAttentionLayout(BaseTransform):
    options_cls = MatchAttentionLayoutOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        load_ops()
        want = self.options.attn_layout
        count, touched = 0, []
        for node in list(gm.graph.nodes):
            if not is_op(node, torch.ops.auto_deploy.torch_attention.default):
                continue
            layout = node.kwargs.get("layout", "bsnd")
            if layout == want:
                continue
            with gm.graph.inserting_before(node):
                q, k, v = (transpose12(gm.graph, x, node) for x in node.args[:3])
            node.args = (q, k, v, *node.args[3:])
            node.kwargs = {**node.kwargs, "layout": want}
            with gm.graph.inserting_after(node):
                back = transpose12(gm.graph, node, node)
            node.replace_all_uses_with(back, delete_user_cb=lambda user: user is not back)
            touched += [q, k, v, node, back]
            count += 1
        return TransformInfo.matched(count, touched)
