"""cleanup_noop_add: drop additions of zero that change neither shape nor dtype.

Before: %a = aten.add.Tensor(%arange, 0)   After: uses of %a read %arange directly.
"""

from __future__ import annotations

import torch
from torch import fx

from autodeploy_cli.graph.core import is_op
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo
from autodeploy_cli.pipeline.registry import register


def _zero_operand(node: fx.Node) -> fx.Node | None:
    """The tensor operand when the other operand is a scalar zero of a kind that cannot change the dtype."""
    if len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1:
        return None
    a, b = node.args
    for x, z in ((a, b), (b, a)):
        if not isinstance(x, fx.Node) or isinstance(z, fx.Node) or z != 0 or isinstance(z, bool):
            continue
        val, out = x.meta.get("val"), node.meta.get("val")
        if val is None or out is None:
            continue
        if val.dtype == out.dtype and val.shape == out.shape:
            return x
    return None


@register("cleanup_noop_add")
class CleanupNoopAdd(BaseTransform):
    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        count = 0
        for node in list(gm.graph.nodes):
            if not is_op(node, (torch.ops.aten.add.Tensor, torch.ops.aten.add.Scalar)):
                continue
            keep = _zero_operand(node)
            if keep is not None:
                node.replace_all_uses_with(keep)
                gm.graph.erase_node(node)
                count += 1
        if not count:
            return TransformInfo.untouched()
        return TransformInfo(num_matches=count, is_clean=False, has_valid_shapes=True)
