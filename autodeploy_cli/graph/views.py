"""View chains: a parameter seen through slice / transpose / select nodes, replayed on real tensors.

The MoE export patches hand the experts' stacked parameters to their op through a few view ops (gate and up halves,
the transposed layout of gpt-oss and Llama-4); transforms follow such a chain back to the parameter and replay it
on the checkpoint or loaded tensor (every step is a view: nothing is copied).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import fx

aten = torch.ops.aten
VIEW_CHAIN_OPS = (aten.select.int, aten.slice.Tensor, aten.transpose.int, aten.t.default, aten.permute.default,
                  aten.alias.default)

Steps = list[tuple[Any, tuple, dict]]


def view_chain(node: Any) -> Optional[tuple[fx.Node, Steps]]:
    """(get_attr node, [(op, args, kwargs), ...] from it outwards) if `node` is view ops over a parameter."""
    steps = []
    while isinstance(node, fx.Node) and node.op == "call_function" and node.target in VIEW_CHAIN_OPS:
        steps.append((node.target, tuple(node.args[1:]), dict(node.kwargs)))
        node = node.args[0]
    if not (isinstance(node, fx.Node) and node.op == "get_attr"):
        return None
    return node, steps[::-1]


def replay(t: torch.Tensor, steps: Steps) -> torch.Tensor:
    """The chain's views applied to `t`."""
    for op, args, kwargs in steps:
        t = op(t, *args, **kwargs)
    return t
