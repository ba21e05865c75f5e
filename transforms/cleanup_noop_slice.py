"""cleanup_noop_slice: drop slices that keep the whole dimension.

Before: %s = aten.slice.Tensor(%x, 3, 0, 9223372036854775807)   After: uses of %s read %x directly.
Also a slice to the dim's own symbolic size: aten.slice.Tensor(%x, 1, None, aten.sym_size.int(%x, 1)).
"""

from __future__ import annotations

import torch
from torch import fx

from autodeploy_cli.graph.core import is_op
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo
from autodeploy_cli.pipeline.registry import register

_FULL = 2**62  # export writes "to the end" as INT64_MAX


def _is_noop_slice(node: fx.Node) -> bool:
    defaults = {"dim": 0, "start": None, "end": None, "step": 1}  # aten.slice.Tensor's schema defaults
    given = dict(zip(defaults, node.args[1:]), **node.kwargs)
    x = node.args[0]
    dim, start, end, step = (given.get(k, d) for k, d in defaults.items())
    if start not in (0, None) or step != 1:
        return False
    if end is None or (isinstance(end, int) and end >= _FULL):
        return True
    if isinstance(end, fx.Node) and end.target is torch.ops.aten.sym_size.int and end.args[0] is x:
        return end.args[1] in (dim, dim - x.meta["val"].dim() if "val" in x.meta else dim)  # x[:, :x.shape[1]]
    val = x.meta.get("val") if isinstance(x, fx.Node) else None
    if val is None or not isinstance(end, int):
        return False
    size = val.shape[dim]
    return isinstance(size, int) and end >= size


@register("cleanup_noop_slice")
class CleanupNoopSlice(BaseTransform):
    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        count = 0
        for node in list(gm.graph.nodes):
            if is_op(node, torch.ops.aten.slice.Tensor) and _is_noop_slice(node):
                node.replace_all_uses_with(node.args[0])
                gm.graph.erase_node(node)
                count += 1
        if not count:
            return TransformInfo.untouched()
        return TransformInfo(num_matches=count, is_clean=False, has_valid_shapes=True)
