"""match_repeat_kv: HF's `repeat_kv` expand chain becomes `auto_deploy::torch_attention_repeat_kv`.

Before:
    %u = aten.unsqueeze(%k, 2)                       # [b, n_kv, 1, s, d]
    %e = aten.expand(%u, [%b, 2, 2, %s, 16])         # [b, n_kv, n_rep, s, d]
    %r = aten.reshape(%e, [%b, 4, %s, 16])           # [b, n_kv * n_rep, s, d]
After:
    %r = auto_deploy.torch_attention_repeat_kv(%k, 2)
`match_grouped_attention` then folds it into torch_attention (native GQA).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from autodeploy_cli.ops import load_ops
from autodeploy_cli.graph.core import is_op
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.graph.match import VIEW_OPS, arg, rank, replace, static_shape
from autodeploy_cli.pipeline.registry import register

aten = torch.ops.aten


@dataclass
class MatchRepeatKVOptions(TransformOptions):
    requires_shape_prop: bool = True  # reads the static head counts of the expand chain


def repeat_kv_source(reshape: fx.Node) -> tuple[fx.Node, int] | None:
    """(kv, n_rep) if `reshape` is the end of a repeat_kv chain on a 4-D [b, n_kv, s, d] tensor."""
    if not is_op(reshape, VIEW_OPS):
        return None
    expand = arg(reshape, 0, "self")
    if not (isinstance(expand, fx.Node) and is_op(expand, aten.expand.default)):
        return None
    unsq = arg(expand, 0, "self")
    if not (isinstance(unsq, fx.Node) and is_op(unsq, aten.unsqueeze.default) and arg(unsq, 1, "dim") in (2, -3)):
        return None
    kv = arg(unsq, 0, "self")
    # sizes as written in the graph (ints for the head dims), else as recorded in the nodes' fake values
    mid = _sizes(arg(expand, 1, "size"), expand)
    out = _sizes(arg(reshape, 1, "shape"), reshape)
    if rank(kv) != 4 or mid is None or out is None or len(mid) != 5 or len(out) != 4:
        return None
    n_kv, n_rep, d = mid[1], mid[2], mid[4]
    if None in (n_kv, n_rep, d) or n_kv * n_rep != out[1] or out[3] != d:
        return None
    return kv, n_rep


def _sizes(written: object, node: fx.Node) -> list | None:
    """Each dim: the int written in the call, else the static size from the node's value (None if symbolic)."""
    recorded = static_shape(node)
    if not isinstance(written, (list, tuple)) or recorded is None or len(written) != len(recorded):
        return list(recorded) if recorded is not None else None
    return [w if isinstance(w, int) and w >= 0 else r for w, r in zip(written, recorded)]


@register("match_repeat_kv")
class MatchRepeatKV(BaseTransform):
    options_cls = MatchRepeatKVOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        load_ops()
        count, touched = 0, []
        for node in list(gm.graph.nodes):
            found = repeat_kv_source(node)
            if found is None:
                continue
            kv, n_rep = found
            with gm.graph.inserting_before(node):
                new = gm.graph.call_function(torch.ops.auto_deploy.torch_attention_repeat_kv.default, (kv, n_rep))
            replace(node, new)
            touched.append(new)
            count += 1
        return TransformInfo.matched(count, touched)
