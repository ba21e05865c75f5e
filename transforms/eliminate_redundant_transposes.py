"""eliminate_redundant_transposes: a transpose undone by the same transpose disappears.

Before:
    %a = aten.transpose.int(%x, 1, 2)
    %b = aten.reshape(%a, [%s0, -1, %s1, 16])        # only if it keeps the shape (a no-op reshape)
    %c = aten.transpose.int(%b, 1, 2)
After: uses of %c read %x directly (%a, %b stay only if something else uses them).
Layout transforms insert transposes freely and rely on this pass to cancel them against the model's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import fx

from autodeploy_cli.graph.core import is_op
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.graph.match import ALIAS_OPS, VIEW_OPS, norm_dim, rank, val
from autodeploy_cli.pipeline.registry import register

aten = torch.ops.aten


@dataclass
class EliminateRedundantTransposesOptions(TransformOptions):
    requires_shape_prop: bool = True  # compares shapes to prove a reshape in between is a no-op


def _same_shape(a: Any, b: Any) -> bool:
    va, vb = val(a), val(b)
    if va is None or vb is None or not hasattr(va, "shape") or not hasattr(vb, "shape"):
        return False
    return [str(d) for d in va.shape] == [str(d) for d in vb.shape]


def _dims(node: fx.Node) -> Optional[frozenset]:
    r = rank(node)
    dims = {norm_dim(d, r) for d in node.args[1:3]}
    return None if None in dims else frozenset(dims)


def _noop(n: fx.Node) -> bool:
    return is_op(n, ALIAS_OPS) or (is_op(n, VIEW_OPS) and _same_shape(n, n.args[0]))


def _inner_transpose(node: fx.Node) -> Optional[fx.Node]:
    """The transpose feeding `node`, through shape-preserving reshapes/views and aliases."""
    cur = node.args[0]
    while isinstance(cur, fx.Node) and _noop(cur):
        cur = cur.args[0]
    return cur if isinstance(cur, fx.Node) and is_op(cur, aten.transpose.int) else None


@register("eliminate_redundant_transposes")
class EliminateRedundantTransposes(BaseTransform):
    options_cls = EliminateRedundantTransposesOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        count = 0
        for node in list(gm.graph.nodes):
            if not is_op(node, aten.transpose.int):
                continue
            inner = _inner_transpose(node)
            if inner is None or _dims(inner) is None or _dims(inner) != _dims(node):
                continue
            node.replace_all_uses_with(inner.args[0])
            count += 1
        return TransformInfo.matched(count)  # no new nodes: shapes stay valid
