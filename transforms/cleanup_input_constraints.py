"""cleanup_input_constraints: remove export's runtime asserts and guard module.

Before: %g = call_module[_guards_fn](%input_ids, %position_ids); aten._assert_tensor_metadata(%x, dtype=...)
After: neither (shapes change later, when caches are inserted, so these checks would be wrong).
"""

from __future__ import annotations

import torch
from torch import fx

from autodeploy_cli.graph.core import is_op
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo
from autodeploy_cli.pipeline.registry import register

_ASSERT_OPS = (
    torch.ops.aten._assert_tensor_metadata.default,
    torch.ops.aten._assert_scalar.default,
    torch.ops.aten.sym_constrain_range_for_size.default,
    torch.ops.aten.sym_constrain_range.default,
    torch.ops.aten._assert_async.msg,
)


@register("cleanup_input_constraints")
class CleanupInputConstraints(BaseTransform):
    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        count = 0
        for node in list(gm.graph.nodes):
            is_guard_module = node.op == "call_module" and str(node.target).startswith("_guards_fn")
            if (is_guard_module or is_op(node, _ASSERT_OPS)) and not node.users:
                gm.graph.erase_node(node)
                if is_guard_module and hasattr(gm, str(node.target)):
                    delattr(gm, str(node.target))
                count += 1
        if not count:
            return TransformInfo.untouched()
        return TransformInfo(num_matches=count, is_clean=False, has_valid_shapes=True)
