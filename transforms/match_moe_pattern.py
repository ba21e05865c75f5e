"""match_moe_pattern: transformers' mixture-of-experts block (after its router) becomes `auto_deploy::torch_moe`.

transformers 5 stores experts stacked (gate_up_proj [E, 2i, h], down_proj [E, h, i]) and runs them with one of
several "experts implementations". Two export cleanly and are recognised here:
  * batched_mm: x.repeat_interleave(k) -> bmm(gate_up_proj[ids], x) -> silu(gate) * up -> bmm(down_proj[ids], .)
  * grouped_mm: sort by expert -> grouped_mm(x[perm // k], gate_up_proj^T, offs) -> silu * up -> grouped_mm(...)
    (aten._grouped_mm, or transformers' `grouped_mm_fallback` op in float32) -> un-permute
Both end in `(out * routing_weights).view(tokens, k, h).sum(1)`, where the match is anchored.

Before (batched_mm):
    %ids = aten.reshape(%topk_ids, [-1]); %w = aten.reshape(%topk_weights, [-1])
    %xr = aten.repeat_interleave.self_int(%x, 2, 0)
    %gu = aten.squeeze.dim(aten.bmm(aten.index.Tensor(%gate_up_proj, [%ids]), aten.unsqueeze(%xr, -1)), -1)
    %a = aten.mul.Tensor(aten.silu(getitem(aten.chunk(%gu, 2, -1), 0)), getitem(..., 1))
    %o = aten.squeeze.dim(aten.bmm(aten.index.Tensor(%down_proj, [%ids]), aten.unsqueeze(%a, -1)), -1)
    %y = aten.sum.dim_IntList(aten.view(aten.mul.Tensor(%o, aten.unsqueeze(%w, -1)), [%t, 2, 64]), [1])
After:
    %y = auto_deploy.torch_moe(%x, %topk_ids, %topk_weights, [%experts_0_gate_proj_weight, ...],   # get_attr
                               [%experts_0_down_proj_weight, ...], [%experts_0_up_proj_weight, ...])
Per-expert weights are new graph parameters `<experts>.<e>.{gate,up,down}_proj.weight`; weight hooks fill them
with views of the checkpoint's stacked tensors at load time (no copy). The router (softmax, top-k, normalisation)
and shared experts stay outside. `ctx.facts.moe_experts_implementation` records the implementation matched.

The export patches (`hf_experts_to_torch_moe`, `llama4_moe_to_torch_moe`) already emit the canonical form
`torch_moe_stacked`, its weights view chains (slice / transpose) of transformers' stacked parameters: one graph
weight per tensor, not per expert. They stay as they are (fuse_moe fuses them), unless `lift_stacked_experts`
asks for torch_moe over per-expert parameters, each filled at load time by replaying its view chain on the
checkpoint tensor and taking expert e (a view again: no copy), biases included (`<experts>.<e>.<kind>_proj.bias`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import fx, nn

from autodeploy_cli.ops import load_ops
from autodeploy_cli.graph.core import get_attr_value, is_op, op_name
from autodeploy_cli.graph.inputs import bound_args
from autodeploy_cli.graph.views import replay, view_chain
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.graph.match import (
    ALIAS_OPS, CAST_OPS, VIEW_OPS, ancestors, arg, descendants, drop_unused_attrs, erase_if_unused, graph_position,
    rank, record_miss, replace, skip, split_binary, static_shape, val,
)
from autodeploy_cli.pipeline.registry import register

aten = torch.ops.aten
GROUPED_MM = ("aten._grouped_mm", "transformers.grouped_mm_fallback")
# transformers >= 5.17 zeroes expert-parallel "sentinel" rows (ids >= num_experts) with masked_fill and clamps ids;
# without expert parallelism no id is out of range, so both are no-ops here (torch_moe ignores such ids anyway)
SENTINEL_OPS = (aten.masked_fill.Scalar, aten.masked_fill_.Scalar, aten.clamp.default, aten.clamp_.default)
THROUGH = CAST_OPS + SENTINEL_OPS
LIST_KINDS = {"w1_weight": ("gate", "weight"), "w3_weight": ("up", "weight"), "w2_weight": ("down", "weight"),
              "w1_bias": ("gate", "bias"), "w3_bias": ("up", "bias"), "w2_bias": ("down", "bias")}


@dataclass
class MatchMoeOptions(TransformOptions):
    requires_shape_prop: bool = True  # reads k (top-k) and expert weight shapes
    # also turn the export patches' torch_moe_stacked into torch_moe over one parameter per expert (E x 3 graph
    # weights per layer: slow to build for 128+ experts); off: stacked weights stay stacked until fuse_moe;
    # None (default): lift only when world_size > 1 (expert parallelism slices the per-expert lists)
    lift_stacked_experts: Optional[bool] = None


def _is(node: Any, *ops: Any) -> bool:
    return isinstance(node, fx.Node) and is_op(node, ops)


def _unsqueezed(node: Any) -> Optional[fx.Node]:
    """x for unsqueeze(x, -1)."""
    node = skip(node, THROUGH)
    if _is(node, aten.unsqueeze.default) and arg(node, 1, "dim") in (-1, rank(node.args[0])):
        return node.args[0]
    return None


def _flat(node: Any) -> Optional[fx.Node]:
    """x for reshape(x, [-1]) (the flattened [tokens * k] routing tensors)."""
    node = skip(node, THROUGH)
    if _is(node, *VIEW_OPS) and list(node.args[1]) == [-1]:
        return node.args[0]
    return None


def _bmm(node: Any) -> Optional[tuple[fx.Node, fx.Node, fx.Node]]:
    """(param, ids_flat, input) for squeeze(bmm(param[ids_flat], unsqueeze(input, -1)), -1)."""
    node = skip(node, THROUGH)
    if not _is(node, aten.squeeze.dim) or not _is(node.args[0], aten.bmm.default):
        return None
    sel, rhs = node.args[0].args
    inp = _unsqueezed(rhs)
    if not _is(sel, aten.index.Tensor) or sel.args[0].op != "get_attr" or inp is None or len(sel.args[1]) != 1:
        return None
    return sel.args[0], sel.args[1][0], inp


def _grouped(node: Any) -> Optional[tuple[fx.Node, fx.Node, fx.Node]]:
    """(param, offsets, input) for grouped_mm(input, param.transpose(-2, -1), offsets)."""
    node = skip(node, THROUGH)
    if not (isinstance(node, fx.Node) and node.op == "call_function" and op_name(node) in GROUPED_MM):
        return None
    inp, w, offs = node.args[:3]
    if not _is(w, aten.transpose.int) or w.args[0].op != "get_attr" or set(w.args[1:3]) not in ({-2, -1}, {1, 2}):
        return None
    return w.args[0], offs, skip(inp, THROUGH)


def _gated_silu(node: Any) -> Optional[tuple[fx.Node, bool]]:
    """(proj, gate_first) for silu(chunk(proj, 2, -1)[g]) * chunk(proj, 2, -1)[1 - g]."""
    node = skip(node, THROUGH)
    if not _is(node, aten.mul.Tensor):
        return None
    split = split_binary(node, lambda n: _is(n, aten.silu.default))
    if split is None:
        return None
    gate, up = split[0].args[0], split[1]
    if not all(isinstance(g, fx.Node) and g.target is operator.getitem for g in (gate, up)):
        return None
    chunk = gate.args[0]
    if chunk is not up.args[0] or not _is(chunk, aten.chunk.default) or chunk.args[1] != 2:
        return None
    return chunk.args[0], gate.args[1] == 0


def match_one(total: fx.Node) -> tuple[Optional[dict], str]:
    """The experts block ending at `total` = view(weighted, [t, k, h]).sum(1)."""
    if not _is(total, aten.sum.dim_IntList) or list(arg(total, 1, "dim") or []) != [1]:
        return None, ""
    view = total.args[0]
    shape = static_shape(view)
    if not _is(view, *VIEW_OPS) or shape is None or len(shape) != 3 or shape[1] is None:
        return None, ""
    top_k, weighted = shape[1], skip(view.args[0], THROUGH)
    impl, perm = "batched_mm", None
    if _is(weighted, aten.index.Tensor):  # grouped_mm: un-permute
        impl, weighted = "grouped_mm", skip(weighted.args[0], THROUGH)
    if not _is(weighted, aten.mul.Tensor):
        return None, ""
    split = split_binary(weighted, lambda n: _unsqueezed(n) is not None)
    if split is None:
        return None, ""
    sw, down_out = _unsqueezed(split[0]), split[1]
    if impl == "grouped_mm":
        if not _is(sw, aten.index.Tensor):
            return None, "grouped_mm routing weights are not permuted"
        sw, perm = sw.args[0], sw.args[1][0]
    sw_tk = _flat(sw)
    down = _bmm(down_out) if impl == "batched_mm" else _grouped(down_out)
    if down is None or sw_tk is None:
        return None, f"{impl}: down projection or routing weights not recognised"
    gated = _gated_silu(down[2])
    if gated is None:
        return None, f"{impl}: expert activation is not silu(gate) * up"
    up = _bmm(gated[0]) if impl == "batched_mm" else _grouped(gated[0])
    if up is None:
        return None, f"{impl}: gate/up projection not recognised"
    if impl == "batched_mm":
        ids_tk, ids2 = _flat(down[1]), _flat(up[1])
        x = up[2]
        if not _is(x, aten.repeat_interleave.self_int) or ids_tk is None or ids_tk is not ids2:
            return None, "batched_mm: tokens are not repeated per top-k slot"
        x = x.args[0]
    else:
        sort = perm.args[0] if perm.target is operator.getitem else None
        ids_tk = _flat(sort.args[0]) if _is(sort, aten.sort.default) else None
        gathered = up[2]
        if ids_tk is None or not _is(gathered, aten.index.Tensor) or down[1] is not up[1]:
            return None, "grouped_mm: expert sort/offsets not recognised"
        x = gathered.args[0]
    return dict(impl=impl, x=x, ids=ids_tk, weights=sw_tk, gate_up=up[0], down=down[0], gate_first=gated[1],
                top_k=top_k, total=total), ""


def _expert_params(gm: fx.GraphModule, found: dict, hooks: dict) -> tuple[list, list, list]:
    """Per-expert gate/down/up parameters (registered on the graph module) and their weight hooks."""
    gu_name, down_name = found["gate_up"].target, found["down"].target
    gate_up = get_attr_value(gm, gu_name)
    down = get_attr_value(gm, down_name)
    n_exp, inter = gate_up.shape[0], gate_up.shape[1] // 2
    prefix = gu_name.rpartition(".")[0]
    owner = gm.get_submodule(prefix)
    lo, hi = (slice(0, inter), slice(inter, None)) if found["gate_first"] else (slice(inter, None), slice(0, inter))
    nodes: dict[str, list] = {"gate": [], "down": [], "up": []}
    for e in range(n_exp):
        if not hasattr(owner, str(e)):
            owner.add_module(str(e), nn.Module())
        expert = getattr(owner, str(e))
        for kind, src, rows, tensor in (("gate", gu_name, lo, gate_up), ("up", gu_name, hi, gate_up),
                                        ("down", down_name, slice(None), down)):
            if not hasattr(expert, f"{kind}_proj"):
                expert.add_module(f"{kind}_proj", nn.Module())
            proj = getattr(expert, f"{kind}_proj")
            proj.register_parameter("weight", nn.Parameter(tensor[e, rows], requires_grad=False))
            name = f"{prefix}.{e}.{kind}_proj.weight"  # the per-expert names older HF checkpoints use
            hooks[name] = lambda t, src=src, e=e, rows=rows: t[src][e, rows]  # a view: no copy
            nodes[kind].append(name)
    return nodes["gate"], nodes["down"], nodes["up"]


def _expert_hook(src: str, steps: list, e: int):
    return lambda t: replay(t[src], steps)[e]  # a view of the checkpoint tensor: no copy


def _fake_stacked(x: Any, param: torch.Tensor, steps: list) -> Any:
    """The stacked weight (after its view chain) as a fake tensor of the graph's fake mode, None without one."""
    from torch._guards import detect_fake_mode

    mode = detect_fake_mode([val(x)]) if val(x) is not None else None
    if mode is None:
        return None
    with mode:
        return replay(mode.from_tensor(param, static_shapes=True), steps)


def lift_stacked(gm: fx.GraphModule, node: fx.Node, hooks: dict) -> Optional[tuple[fx.Node, list, list]]:
    """torch_moe over per-expert parameters (+ weight hooks) for a torch_moe_stacked whose weights are view chains
    of stacked parameters: (the new torch_moe node, its get_attr nodes, the stacked parameter names), or None when
    a weight is something else."""
    args = bound_args(node)
    chains = {k: view_chain(args[k]) for k in LIST_KINDS if args.get(k) is not None}
    if any(c is None for c in chains.values()):
        return None
    gated = "w3_weight" in chains
    lists: dict[str, list] = {}
    for key, (src, steps) in chains.items():
        kind, leaf = LIST_KINDS[key]
        kind = "up" if key.startswith("w1") and not gated else kind  # a non-gated expert's only input projection
        prefix = src.target.rpartition(".")[0]
        stacked_meta = replay(get_attr_value(gm, src.target), steps)
        fake = _fake_stacked(args["x"], get_attr_value(gm, src.target), steps)
        nodes = []
        for e in range(stacked_meta.shape[0]):
            name = f"{prefix}.{e}.{kind}_proj.{leaf}"
            owner = gm.get_submodule(prefix) if prefix else gm
            for part in (str(e), f"{kind}_proj"):
                if not hasattr(owner, part):
                    owner.add_module(part, nn.Module())
                owner = getattr(owner, part)
            owner.register_parameter(leaf, nn.Parameter(stacked_meta[e], requires_grad=False))
            hooks[name] = _expert_hook(src.target, steps, e)
            with gm.graph.inserting_before(node):
                nodes.append(gm.graph.get_attr(name))
            if fake is not None:  # shape metadata by indexing one fake tensor (a fake copy per expert is slow)
                nodes[-1].meta["val"] = fake[e]
        lists[key] = nodes
    with gm.graph.inserting_before(node):
        new = gm.graph.call_function(
            torch.ops.auto_deploy.torch_moe.default,
            (args["x"], args["selected_experts"], args["routing_weights"], lists["w1_weight"], lists["w2_weight"],
             lists.get("w3_weight", [])),
            {"w1_bias": lists.get("w1_bias"), "w2_bias": lists.get("w2_bias"), "w3_bias": lists.get("w3_bias"),
             "act": args["act"], "routing_on_input": args["routing_on_input"], "alpha": args["alpha"],
             "limit": args["limit"]})
    old = [args[k] for k in chains]
    replace(node, new)
    erase_if_unused(gm.graph, old)
    return new, [n for group in lists.values() for n in group], sorted({src.target for src, _ in chains.values()})


def _router_topks(moe: fx.Node, budget: int = 256) -> set:
    """The top-k nodes of the router feeding a torch_moe: the producers of its expert ids, not looking past its
    hidden-state input (and the views / casts that lead to it)."""
    x = moe.args[0]
    stop = set()
    while isinstance(x, fx.Node) and x not in stop:
        stop.add(x)
        if not (x.op == "call_function" and is_op(x, VIEW_OPS + CAST_OPS + ALIAS_OPS)):
            break
        x = x.args[0]
    seen, todo, found = set(), [moe.args[1]], set()
    while todo and len(seen) < budget:
        n = todo.pop(0)
        if not isinstance(n, fx.Node) or n in seen or n in stop:
            continue
        seen.add(n)
        if _is(n, aten.topk.default):
            found.add(n)
        todo += n.all_input_nodes
    return found


@register("match_moe_pattern")
class MatchMoePattern(BaseTransform):
    options_cls = MatchMoeOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        load_ops()
        hooks = ctx.weight_hooks
        moe_op = torch.ops.auto_deploy.torch_moe.default
        count, impls, stacked, touched = 0, [], [], []
        stacked_op = torch.ops.auto_deploy.torch_moe_stacked.default
        from_patch = [n for n in gm.graph.nodes if n.op == "call_function" and n.target == stacked_op]
        impls += ["export patch"] * len(from_patch)  # already canonical: not a match, but the report names it
        lift = self.options.lift_stacked_experts
        sharded = max(ctx.world_size, getattr(ctx.config, "world_size", 1) or 1) > 1
        for node in from_patch if (lift if lift is not None else sharded) else ():
            lifted = lift_stacked(gm, node, hooks)  # views of the stacked parameters -> per-expert parameters
            if lifted is None:
                record_miss(ctx.misses, "moe", node, "torch_moe_stacked weights are not views of parameters")
                continue
            touched += [lifted[0], *(n for n in lifted[1] if "val" not in n.meta)]
            stacked += lifted[2]
            count += 1
        for node in list(gm.graph.nodes):
            found, why = match_one(node)
            if found is None:
                if why:
                    record_miss(ctx.misses, "moe", node, why)
                continue
            touched += self._replace(gm, node, found, hooks)
            stacked += [found["gate_up"].target, found["down"].target]
            impls.append(found["impl"])
            count += 1
        routed = set().union(*[_router_topks(n) for n in gm.graph.nodes if n.op == "call_function"
                               and n.target in (moe_op, stacked_op)])
        for node in gm.graph.nodes:  # routers whose experts were not recognised
            if _is(node, aten.topk.default) and node not in routed:
                record_miss(ctx.misses, "moe", node, "router top-k found but its experts block was not recognised")
        if count:
            gm.graph.eliminate_dead_code()
            drop_unused_attrs(gm, stacked)
            for name in stacked:
                hooks.pop(name, None)
        if impls:
            ctx.facts.moe_experts_implementation = sorted(set(impls))[0] if len(set(impls)) == 1 else "mixed"
        return TransformInfo.matched(count, touched)

    @staticmethod
    def _replace(gm: fx.GraphModule, node: fx.Node, found: dict, hooks: dict) -> list[fx.Node]:
        """Replace one matched HF experts block by torch_moe over per-expert parameters; the new nodes."""
        names = _expert_params(gm, found, hooks)
        with gm.graph.inserting_before(node):
            lists = [[gm.graph.get_attr(n) for n in group] for group in names]
            new = gm.graph.call_function(torch.ops.auto_deploy.torch_moe.default,
                                         (found["x"], found["ids"], found["weights"], *lists))
        inputs = {found["x"], found["ids"], found["weights"]}
        block = [n for n in ancestors(node, stop=inputs) if n not in inputs]
        pos = graph_position(gm.graph)  # in-place ops on the routing (e.g. clamp_ of sorted ids) have no users
        block += [n for n in descendants(found["ids"]) if pos[n] < pos[new]]
        replace(node, new)
        erase_if_unused(gm.graph, block)  # also the in-place index_put_ of the un-permutation
        return [n for group in lists for n in group] + [new]
