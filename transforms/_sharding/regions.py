"""Column -> row regions of the graph and the weight splits that realise them.

A region is a closing linear (row split + all-reduce), the opening linears its input depends on (column split),
and the body between them (the ops on paths from the openers to the closer). It is found from the closer
backwards, stopping at linears; values that do not depend on an opener are side inputs (every rank has them in
full: rotary cos/sin, position ids). Fused openers (one linear
whose output is sliced, chunked or split: QKV, gate/up) are split per part, and a K or V part feeding attention
with fewer KV heads than ranks keeps one KV head per rank group (rank // (world_size / kv_heads)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import fx

from autodeploy_cli.graph.core import is_op, op_name
from autodeploy_cli.graph.match import val
from transforms._sharding.plan import ArgEdit, WeightSplit
from transforms._sharding.prove import ROPE, Prover, Refused, Seg, Sh, slice_bounds

aten = torch.ops.aten
LINEAR_OPS = ("aten.linear", "auto_deploy.torch_linear_simple")


def linear_weight(node: fx.Node) -> Optional[fx.Node]:
    """The get_attr weight of a linear with a 2-D weight attribute, else None."""
    if node.op != "call_function" or op_name(node) not in LINEAR_OPS or len(node.args) < 2:
        return None
    w = node.args[1]
    if not isinstance(w, fx.Node) or w.op != "get_attr" or val(w) is None or len(val(w).shape) != 2:
        return None
    return w


def linear_bias(node: fx.Node) -> Optional[fx.Node]:
    b = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    return b if isinstance(b, fx.Node) else None


def own_weight(node: fx.Node) -> bool:
    """A linear whose weight (and bias) no other node reads: it can be split for this linear alone."""
    w, b = linear_weight(node), linear_bias(node)
    return w is not None and len(w.users) == 1 and (b is None or (b.op == "get_attr" and len(b.users) == 1))


@dataclass
class Region:
    closer: fx.Node
    openers: list[fx.Node]
    body: list[fx.Node]
    reason: str = ""  # why it could not be proven (set by `prove`)
    splits: list[WeightSplit] = field(default_factory=list)
    edits: list[ArgEdit] = field(default_factory=list)
    attention: int = 0


def find_region(closer: fx.Node, order: dict[fx.Node, int]) -> Optional[Region]:
    start = closer.args[0]
    if not isinstance(start, fx.Node):
        return None
    seen: set[fx.Node] = set()
    openers: list[fx.Node] = []
    stack = [start]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if linear_weight(n) is not None:
            openers.append(n)
        elif n.op == "call_function":  # ops the prover does not know still belong to the block (and refuse it)
            stack.extend(n.all_input_nodes)
    if not openers:
        return None
    sharded: set[fx.Node] = set()
    frontier = list(openers)
    while frontier:
        for user in frontier.pop().users:
            if user in seen and user not in sharded and linear_weight(user) is None:
                sharded.add(user)
                frontier.append(user)
    if start not in sharded and start not in openers:
        return None
    return Region(closer, sorted(openers, key=order.get), sorted(sharded, key=order.get))


def segments(opener: fx.Node) -> list[tuple[int, fx.Node]]:
    """(size, node carrying that part) of each part of an opener's output: several for a fused output."""
    full = int(val(opener).shape[-1])
    users = list(opener.users)
    nd = len(val(opener).shape)
    last = lambda d: d % nd == nd - 1  # noqa: E731
    if users and all(is_op(u, aten.slice.Tensor) and last(u.args[1]) for u in users):
        parts, steps = [], set()
        for u in users:
            a, b, step = slice_bounds(u)
            parts.append((a, min(b, full), u))
            steps.add(step)
        parts.sort(key=lambda p: p[0])
        tiles = parts[0][0] == 0 and parts[-1][1] == full and all(p[1] == q[0] for p, q in zip(parts, parts[1:]))
        if steps == {1} and tiles:
            return [(b - a, u) for a, b, u in parts]
    if len(users) == 1:
        u = users[0]
        dim = (u.args[2] if len(u.args) > 2 else 0) if u.op == "call_function" else None
        if is_op(u, aten.chunk.default) and last(dim) and full % u.args[1] == 0:
            return [(full // u.args[1], _item(u, i)) for i in range(u.args[1])]
        if is_op(u, aten.split_with_sizes.default) and last(dim):
            return [(s, _item(u, i)) for i, s in enumerate(u.args[1])]
    return [(full, opener)]


def _item(node: fx.Node, i: int) -> Optional[fx.Node]:
    return next((u for u in node.users if u.args[1] == i), None)


def _kv_heads(start: Optional[fx.Node], body: set[fx.Node]) -> Optional[int]:
    """KV heads of the attention this value reaches as its k or v (None when it is no k/v input)."""
    from autodeploy_cli.graph.inputs import bound_args

    stack, seen = [(start, None)] if start is not None else [], set()
    while stack:
        n, part = stack.pop()  # part: which output of a multi-output op (rope) this value is
        if n in seen:
            continue
        seen.add(n)
        for user in n.users:
            if op_name(user) == "auto_deploy.torch_attention":
                a = bound_args(user)
                if n is a["k"] or n is a["v"]:
                    return int(val(n).shape[1 if a["layout"] == "bnsd" else 2])
                return None
            if user not in body or (part is not None and user.args[1] != part):
                continue
            stack.append((user, user.args.index(n) if op_name(user) in ROPE else None))
    return None


def _seeds(region: Region, ws: int, rank: int, head_dim: Optional[int]) -> dict[fx.Node, Sh]:
    body = set(region.body)
    seeds = {}
    for opener in region.openers:
        segs, ranges, offset = [], [], 0
        for size, carrier in segments(opener):
            kv = _kv_heads(carrier, body)
            if kv is not None and kv < ws:
                if ws % kv or size % kv:
                    raise Refused(f"{kv} KV heads cannot be replicated over {ws} ranks")
                local, start = size // kv, (rank // (ws // kv)) * (size // kv)
                segs.append(Seg(size, local, "kv", kv))
            else:
                if size % ws:
                    raise Refused(f"`{opener.name}` has a part of {size} features that does not split over {ws} ranks")
                local, start = size // ws, rank * (size // ws)
                segs.append(Seg(size, local))
            if head_dim and _is_attention_name(opener) and local % head_dim:
                raise Refused(f"`{opener.name}` would keep {local} features per rank, not whole heads of "
                              f"head_dim={head_dim}")
            ranges.append((offset + start, offset + start + local))
            offset += size
        seeds[opener] = Sh(len(val(opener).shape) - 1, tuple(segs))
        region.splits += _linear_splits(opener, 0, ranges)
    return seeds


def _is_attention_name(node: fx.Node) -> bool:
    name = str(linear_weight(node).target)
    return any(k in name for k in ("attention", "Attention", "attn", "Attn", "q_proj", "k_proj", "v_proj", "o_proj"))


def _linear_splits(node: fx.Node, dim: int, ranges: list[tuple[int, int]],
                   pad_to: Optional[int] = None) -> list[WeightSplit]:
    w = linear_weight(node)
    out = [WeightSplit(str(w.target), dim, ranges, tuple(val(w).shape), pad_to)]
    b = linear_bias(node)
    if b is not None and dim == 0:
        out.append(WeightSplit(str(b.target), 0, ranges, tuple(val(b).shape), pad_to))
    return out


def prove(region: Region, ws: int, rank: int, head_dim: Optional[int] = None) -> bool:
    """Fill the region's weight splits and argument edits if every op keeps the split; else set `reason`."""
    region.splits, region.edits = [], []
    try:
        if not all(own_weight(n) for n in [*region.openers, region.closer]):
            raise Refused("a weight of the block is shared with another op")
        seeds = _seeds(region, ws, rank, head_dim)
        prover = Prover(ws, region.body, region.closer)
        prover.run(seeds)
    except Refused as e:
        region.reason = str(e)
        region.splits = []
        return False
    in_features = int(val(linear_weight(region.closer)).shape[1])
    per_rank = in_features // ws
    if head_dim and _is_attention_name(region.closer) and per_rank % head_dim:
        region.reason = f"`{region.closer.name}` would read {per_rank} features per rank, not whole heads"
        region.splits = []
        return False
    region.splits += _linear_splits(region.closer, 1, [(rank * per_rank, (rank + 1) * per_rank)])
    region.edits, region.attention = prover.edits, prover.attention
    return True


def gather_split(node: fx.Node, ws: int, rank: int, granule: int = 1) -> list[WeightSplit]:
    """Simple shard of one linear: its output features in world_size equal blocks (the last padded with zeros)."""
    full = int(val(linear_weight(node)).shape[0])
    per = -(-full // ws)
    if full % ws:
        per = -(-per // granule) * granule
    start, stop = min(rank * per, full), min((rank + 1) * per, full)
    return _linear_splits(node, 0, [(start, stop)], pad_to=per)
