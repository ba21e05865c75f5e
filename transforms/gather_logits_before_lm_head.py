"""gather_logits_before_lm_head: compute logits only for the tokens that need them (the last of each sequence).

The LM head is the largest matmul of a prefill ([T, hidden] x [hidden, vocab]); the runtime samples only the last
token of each sequence. The hidden states are gathered by a new graph input `logits_gather_idx` (flat token
indices, from the sequence info) before the head; element-wise ops after it (soft-capping, casts) follow unchanged.

Before:
    %norm = ... : 1 x T x 64
    %logits = aten.linear(%norm, %lm_head_weight) : 1 x T x 320
After:
    %flat = aten.reshape(%norm, [-1, 64]) : T x 64
    %sel = aten.index_select(%flat, 0, %logits_gather_idx) : G x 64
    %hid = aten.unsqueeze(%sel, 0) : 1 x G x 64
    %logits = aten.linear(%hid, %lm_head_weight) : 1 x G x 320
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import fx

from autodeploy_cli.graph.core import is_op
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo
from autodeploy_cli.pipeline.registry import register
from autodeploy_cli.graph.inputs import add_graph_input, refresh_vals

aten = torch.ops.aten
GATHER_INPUT = "logits_gather_idx"
_HEAD_OPS = (aten.linear.default, aten.mm.default, aten.matmul.default)
_HEAD_OP_NAMES = {"auto_deploy::triton_linear"}  # optimize_linear's GEMV-capable linear (input first, like linear)
# FP8 linears (a quantized LM head): the input comes first too
_HEAD_OP_NAMES |= {f"auto_deploy::{b}_quant_fp8{v}_linear" for b in ("torch", "triton") for v in ("", "_block")}
# ops allowed between the head and the output: element-wise with scalar partners (soft-capping, casts)
_ELEMENTWISE = (aten.tanh.default, aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar,
                aten.to.dtype, aten._to_copy.default, aten.alias.default, aten.clone.default)


def _last_dim_op(node: fx.Node) -> bool:
    """A sharded lm_head's logits gather (and the cut of padded vocabulary rows): per token, on the last dim."""
    name = getattr(node.target, "name", lambda: "")()
    if name == "auto_deploy::torch_dist_all_gather":
        return node.args[1] == -1
    return is_op(node, aten.slice.Tensor) and node.args[1] == -1 and node.args[2] == 0


def find_lm_head(gm: fx.GraphModule) -> Optional[fx.Node]:
    """The matmul producing the graph output through element-wise ops only (None if there is no such node)."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    node = out.args[0]
    while isinstance(node, fx.Node):
        if is_op(node, _HEAD_OPS) or getattr(node.target, "name", lambda: "")() in _HEAD_OP_NAMES:
            return node
        if not (is_op(node, _ELEMENTWISE) or _last_dim_op(node)):
            return None
        tensors = [a for a in node.args if isinstance(a, fx.Node)]
        if len(tensors) != 1:
            return None  # e.g. x * y of two tensors: not a per-token op we can move past
        node = tensors[0]
    return None


@register("gather_logits_before_lm_head")
class GatherLogitsBeforeLmHead(BaseTransform):
    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        if any(n.op == "placeholder" and n.name == GATHER_INPUT for n in gm.graph.nodes):
            return TransformInfo.untouched("already gathered")
        head = find_lm_head(gm)
        if head is None:
            return TransformInfo.untouched("no LM head matmul feeds the output")
        hidden = head.args[0]
        val = hidden.meta.get("val") if isinstance(hidden, fx.Node) else None
        if val is None:
            return TransformInfo.untouched("LM head input has no shape")
        iface = ctx.cache_interface()
        idx = add_graph_input(gm, iface, GATHER_INPUT)
        graph = gm.graph
        with graph.inserting_before(head):
            flat = graph.call_function(aten.reshape.default, (hidden, [-1, int(val.shape[-1])]))
            sel = graph.call_function(aten.index_select.default, (flat, 0, idx))
            hid = graph.call_function(aten.unsqueeze.default, (sel, 0))
        head.replace_input_with(hidden, hid)
        downstream, node = [], head  # the head and the element-wise ops after it now see G rows, not T
        while node.op != "output":
            downstream.append(node)
            node = next(iter(node.users))
        changed = [flat, sel, hid, *downstream]
        before = [n.meta.get("val") for n in changed]
        refresh_vals(changed)
        iface.logits_gathered = True
        ctx.use_cached_probe()
        # shapes stay valid when every changed node got a new value (a refresh that could not run leaves the old)
        fresh = all(n.meta.get("val") is not None and n.meta.get("val") is not old for n, old in zip(changed, before))
        return TransformInfo(num_matches=1, is_clean=False, has_valid_shapes=fresh)
