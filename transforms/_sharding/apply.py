"""Applying a `ShardPlan` to the meta graph: weights get this rank's shapes (and a slicer for loading), literal
sizes are rescaled, and the collectives go in.

    rowwise  %y = linear(%x, %w_local)   ->  %r = torch_dist_all_reduce(%y);  %out = add(%r, %bias)   (bias once)
    gather   %y = linear(%x, %w_local)   ->  %g = torch_dist_all_gather(%y, -1, ws);  [slice(%g, -1, 0, n)]
    ep       torch_moe(x, ids, w, [e0..eN]) -> torch_moe(x, ids - lo, w, [e_lo..e_hi)) -> torch_dist_all_reduce
    vocab    embedding(%w, %ids) -> embedding(%w_local, (ids - start) * valid) * valid -> torch_dist_all_reduce
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from autodeploy_cli.graph.match import drop_unused_attrs, val
from autodeploy_cli.ops import load_ops
from transforms._sharding.plan import ShardPlan
from transforms._sharding.regions import linear_bias

aten = torch.ops.aten


def _set_meta(gm: fx.GraphModule, name: str, shape: tuple[int, ...]) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = gm.get_submodule(owner_name) if owner_name else gm
    old = getattr(owner, leaf)
    new = torch.empty(shape, dtype=old.dtype, device="meta")
    if isinstance(old, torch.nn.Parameter):
        setattr(owner, leaf, torch.nn.Parameter(new, requires_grad=False))
    else:
        owner.register_buffer(leaf, new, persistent=leaf in owner._buffers and leaf not in
                              owner._non_persistent_buffers_set)


def _after(graph: fx.Graph, node: fx.Node, target: Any, args: tuple) -> fx.Node:
    """A new node right after `node` computing target(*args), taking over `node`'s users."""
    users = [u for u in node.users]
    with graph.inserting_after(node):
        new = graph.call_function(target, args)
    for u in users:
        u.replace_input_with(node, new)
    return new


def _linear(graph: fx.Graph, node: fx.Node, style: str, full_out: int, local_out: int, ws: int) -> None:
    dist = torch.ops.auto_deploy
    if style == "rowwise":
        bias = linear_bias(node)
        node.args = tuple(node.args[:2])
        node.kwargs = {k: v for k, v in node.kwargs.items() if k != "bias"}
        out = _after(graph, node, dist.torch_dist_all_reduce.default, (node,))
        if bias is not None:
            _after(graph, out, aten.add.Tensor, (out, bias))
    elif style == "gather":
        out = _after(graph, node, dist.torch_dist_all_gather.default, (node, -1, ws))
        if local_out * ws != full_out:  # zero rows padded the split: cut their outputs off
            _after(graph, out, aten.slice.Tensor, (out, -1, 0, full_out))


def _moe(gm: fx.GraphModule, node: fx.Node, mode: str, lo: int, hi: int) -> list[str]:
    graph = gm.graph
    dropped = []
    if mode == "ep":
        args = list(node.args)
        for i in (3, 4, 5):
            dropped += [str(w.target) for j, w in enumerate(args[i]) if not lo <= j < hi]
            args[i] = list(args[i][lo:hi])
        if lo:
            with graph.inserting_before(node):
                args[1] = graph.call_function(aten.sub.Tensor, (args[1], lo))
        node.args = tuple(args)
    _after(graph, node, torch.ops.auto_deploy.torch_dist_all_reduce.default, (node,))
    return dropped


def _embedding(graph: fx.Graph, node: fx.Node, start: int, rows: int) -> None:
    ids = node.args[1]
    with graph.inserting_before(node):
        shifted = graph.call_function(aten.sub.Tensor, (ids, start))
        valid = graph.call_function(aten.logical_and.default, (graph.call_function(aten.ge.Scalar, (shifted, 0)),
                                                               graph.call_function(aten.lt.Scalar, (shifted, rows))))
        safe = graph.call_function(aten.mul.Tensor, (shifted, valid))
    node.args = (node.args[0], safe, *node.args[2:])
    dtype = val(node).dtype
    users = list(node.users)
    with graph.inserting_after(node):
        mask = graph.call_function(aten.unsqueeze.default, (valid, -1))
    with graph.inserting_after(mask):
        mask = graph.call_function(aten.to.dtype, (mask, dtype))
    with graph.inserting_after(mask):
        masked = graph.call_function(aten.mul.Tensor, (node, mask))
    with graph.inserting_after(masked):
        out = graph.call_function(torch.ops.auto_deploy.torch_dist_all_reduce.default, (masked,))
    for u in users:
        u.replace_input_with(node, out)


def apply_plan(gm: fx.GraphModule, plan: ShardPlan, slicers: dict) -> int:
    """Rewrite `gm` for this rank; fills `slicers` (graph weight -> this rank's part). Returns the edits applied."""
    load_ops()
    nodes = {n.name: n for n in gm.graph.nodes}
    for e in plan.args:
        node = nodes[e.node]
        args = list(node.args) + [None] * max(0, e.index + 1 - len(node.args))
        args[e.index] = e.value
        node.args = tuple(args)
    for name, split in plan.splits.items():
        _set_meta(gm, name, split.local_shape)
        slicers[name] = split.slicer()
    for e in plan.linears:
        node = nodes[e.node]
        split = plan.splits.get(str(node.args[1].target))
        local = split.local_shape[0] if split is not None else e.full_out
        _linear(gm.graph, node, e.style, e.full_out, local, plan.world_size)
    dropped: list[str] = []
    for e in plan.moe:
        dropped += _moe(gm, nodes[e.node], e.mode, e.lo, e.hi)
    for e in plan.embeddings:
        _embedding(gm.graph, nodes[e.node], e.start, e.rows)
    gm.graph.eliminate_dead_code()
    drop_unused_attrs(gm, dropped)
    gm.recompile()
    return plan.num_edits()
