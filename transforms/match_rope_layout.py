"""match_rope_layout: every `torch_rope_*` op works in the expected layout (bsnd by default), as the RoPE kernels
and the attention layout expect.

Before:
    %rope = auto_deploy.torch_rope_with_explicit_cos_sin(%q, %k, %cos, %sin, 1)        # q: [b, n, s, d]
    %q_embed = getitem(%rope, 0)
After:
    %qt = aten.transpose.int(%q, 1, 2); %kt = aten.transpose.int(%k, 1, 2)               # [b, s, n, d]
    %rope = auto_deploy.torch_rope_with_explicit_cos_sin(%qt, %kt, %cos, %sin, 2)
    %q_embed = aten.transpose.int(getitem(%rope, 0), 1, 2)
`eliminate_redundant_transposes` later cancels these against HF's transposes and the attention layout's.
"""

from __future__ import annotations

import operator
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
UNSQUEEZE_DIM = {"bnsd": 1, "bsnd": 2}  # the head dim cos/sin lack, per layout


@dataclass
class MatchRopeLayoutOptions(TransformOptions):
    expected_layout: str = "bsnd"  # layout of q/k at every RoPE op: bsnd ([b, s, n, d]) or bnsd
    choices: ClassVar[dict] = {"expected_layout": ("bsnd", "bnsd")}


def rope_ops() -> tuple:
    load_ops()
    ad = torch.ops.auto_deploy
    return (ad.torch_rope_with_explicit_cos_sin.default, ad.torch_rope_with_qk_interleaving.default,
            ad.torch_rope_with_complex_freqs.default)


@register("match_rope_layout")
class MatchRopeLayout(BaseTransform):
    options_cls = MatchRopeLayoutOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        want = UNSQUEEZE_DIM[self.options.expected_layout]
        count, touched = 0, []
        graph = gm.graph
        for node in list(graph.nodes):
            if not is_op(node, rope_ops()):
                continue
            # unsqueeze_dim is the last parameter of every RoPE op; torch.export drops it when it equals the default
            schema = node.target._schema.arguments
            if len(node.args) == len(schema):
                udim, tables = node.args[-1], node.args[2:-1]
            else:
                udim, tables = node.kwargs.get("unsqueeze_dim", schema[-1].default_value), node.args[2:]
            if udim == want:
                continue
            with graph.inserting_before(node):
                q, k = (copy_meta(graph.call_function(aten.transpose.int, (x, 1, 2)), node) for x in node.args[:2])
            node.args = (q, k, *tables, want)
            node.kwargs = {k_: v for k_, v in node.kwargs.items() if k_ != "unsqueeze_dim"}
            touched += [q, k, node]
            for user in list(node.users):
                if user.target is not operator.getitem:
                    continue
                with graph.inserting_after(user):
                    back = copy_meta(graph.call_function(aten.transpose.int, (user, 1, 2)), user)
                user.replace_all_uses_with(back, delete_user_cb=lambda u, back=back: u is not back)
                touched += [user, back]
            count += 1
        return TransformInfo.matched(count, touched)
