"""Shared pattern-matching machinery: hand-written node walkers over the exported ATen graph.

Matchers anchor on one distinctive node (rsqrt, softmax, the rotate-half `cat`, ...) and walk its producers with
the helpers here. Walkers read argument structure and static sizes only, never symbolic values, so they work on
graphs with dynamic batch/sequence dims. Casts and aliases (`to`, `type_as`, `alias`, `contiguous`) are looked
through where a pattern allows them. A candidate that fails a check is recorded as a "miss" (where it was, why,
and the node chain seen) so the build report can say why a block was not matched.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional, Sequence

import torch
from torch import fx

from autodeploy_cli.graph.core import get_attr_value, is_op, op_name

aten = torch.ops.aten

# ops that change neither values nor (for our purposes) layout: casts and aliases
CAST_OPS = (aten.to.dtype, aten.to.dtype_layout, aten._to_copy.default, aten.type_as.default)
ALIAS_OPS = (aten.alias.default, aten.contiguous.default, aten.clone.default, aten.detach.default)
VIEW_OPS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)
TRANSPOSE_OPS = (aten.transpose.int,)


def arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Argument `name` of a call, given positionally at `index` or as a keyword."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def val(node: Any) -> Any:
    """The fake tensor (or value) recorded for a node by export / shape propagation, else None."""
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def static_int(d: Any) -> Optional[int]:
    """d as an int if it is one, or a SymInt known to be constant (older torch keeps some static dims symbolic)."""
    if isinstance(d, int):
        return int(d)
    maybe = getattr(getattr(d, "node", None), "maybe_as_int", None)
    value = maybe() if callable(maybe) else None
    return int(value) if value is not None else None


def static_shape(node: Any) -> Optional[tuple]:
    """The node's shape with each dim an int when static, None when symbolic; None if unknown."""
    v = val(node)
    shape = getattr(v, "shape", None)
    if shape is None:
        return None
    return tuple(static_int(d) for d in shape)


def rank(node: Any) -> Optional[int]:
    shape = static_shape(node)
    return None if shape is None else len(shape)


def dtype(node: Any) -> Optional[torch.dtype]:
    return getattr(val(node), "dtype", None)


def norm_dim(dim: int, ndim: Optional[int]) -> Optional[int]:
    """A dim made non-negative (None if it cannot be, for lack of a rank)."""
    if dim >= 0:
        return dim
    return None if ndim is None else dim + ndim


def is_last_dim(dim: Any, node: Any) -> bool:
    if not isinstance(dim, int):
        return False
    return dim == -1 or (rank(node) is not None and dim == rank(node) - 1)


def scalar(x: Any) -> Optional[float]:
    """A Python number argument as float (None for nodes and non-numbers)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


def skip(node: Any, ops: Iterable[Any] = CAST_OPS + ALIAS_OPS) -> Any:
    """Walk producers through single-input ops in `ops` (casts, aliases); returns the first other node."""
    ops = tuple(ops)
    while isinstance(node, fx.Node) and is_op(node, ops) and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node


def sole_user(node: fx.Node, through: Iterable[Any] = ()) -> Optional[fx.Node]:
    """The only user of `node`, walking forward through single-user ops in `through`; None if it branches."""
    through = tuple(through)
    while len(node.users) == 1:
        user = next(iter(node.users))
        if through and is_op(user, through):
            node = user
            continue
        return user
    return None


def operands(node: fx.Node) -> tuple[Any, Any]:
    """The two operands of a binary op (add/mul/sub/div)."""
    return (arg(node, 0, "self"), arg(node, 1, "other"))


def split_binary(node: fx.Node, pred) -> Optional[tuple[Any, Any]]:
    """For a commutative op: (a, b) with pred(a) true, trying both orders; None if neither satisfies pred."""
    a, b = operands(node)
    if pred(a):
        return a, b
    if pred(b):
        return b, a
    return None


def is_param(node: Any) -> bool:
    """A get_attr (a weight or buffer), possibly behind casts."""
    node = skip(node, CAST_OPS)
    return isinstance(node, fx.Node) and node.op == "get_attr"


def module_path(node: fx.Node) -> str:
    """The innermost HF module a node came from (export's nn_module_stack), e.g. `model.layers.0.self_attn`."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1]
    path = path[0] if isinstance(path, tuple) else str(path)
    return re.sub(r"^L\['self'\]\.?", "", str(path))


_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)(?:\.|$)")


def layer_index(node_or_path: Any) -> Optional[int]:
    """The decoder-layer index a node (or module path) belongs to, if any."""
    path = module_path(node_or_path) if isinstance(node_or_path, fx.Node) else str(node_or_path)
    m = _LAYER_RE.search(path)
    return int(m.group(1)) if m else None


def chain(node: fx.Node, depth: int = 5) -> str:
    """The producer chain of `node` along first tensor inputs, oldest first: `to -> pow -> mean -> rsqrt`."""
    names = []
    cur: Any = node
    while isinstance(cur, fx.Node) and cur.op == "call_function" and len(names) < depth:
        names.append(op_name(cur).replace("aten.", ""))
        nxt = [a for a in cur.all_input_nodes if a.op != "get_attr"]
        cur = nxt[0] if nxt else None
    return " -> ".join(reversed(names))


def describe(node: fx.Node) -> str:
    """`model.layers.0.input_layernorm` (node rsqrt_1), or just the node name when no module is known."""
    where = module_path(node)
    return f"{where} (node {node.name})" if where else f"node {node.name}"


def record_miss(misses_by_kind: dict[str, list[dict]], kind: str, node: fx.Node, reason: str) -> None:
    """Remember a candidate block that did not match (in `ctx.misses`), for the coverage hint of the build report."""
    misses = misses_by_kind.setdefault(kind, [])
    entry = {"where": module_path(node), "node": node.name, "layer": layer_index(node), "reason": reason,
             "chain": chain(node)}
    if entry not in misses:
        misses.append(entry)


def copy_meta(new: fx.Node, old: fx.Node) -> fx.Node:
    """Give a replacement node the provenance of the node it replaces (module stack, stack trace)."""
    for key in ("nn_module_stack", "stack_trace", "from_node"):
        if key in old.meta:
            new.meta[key] = old.meta[key]
    return new


def replace(old: fx.Node, new: fx.Node) -> None:
    """Redirect every use of `old` to `new` and erase `old` (DCE would keep seeded ops such as SDPA or dropout)."""
    copy_meta(new, old)
    old.replace_all_uses_with(new)
    if not old.users:
        old.graph.erase_node(old)


def erase_if_unused(graph: fx.Graph, nodes: Sequence[fx.Node]) -> int:
    """Erase the given nodes that no longer have users, repeatedly, in reverse order. Unlike DCE this also removes
    in-place ops (index_put_, div_) whose results were only feeding the replaced block. Returns the count."""
    alive = [n for n in nodes if n.graph is graph]
    erased, changed = 0, True
    while changed:
        changed = False
        for n in reversed(alive):
            if n.op == "call_function" and not n.users and not getattr(n, "_erased", False):
                graph.erase_node(n)
                alive.remove(n)
                erased += 1
                changed = True
    return erased


def ancestors(node: fx.Node, stop: Optional[set] = None) -> list[fx.Node]:
    """`node` and every node it depends on (not crossing `stop`), in graph order."""
    seen: set[fx.Node] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if stop and n in stop:
            continue
        todo.extend(n.all_input_nodes)
    return [n for n in node.graph.nodes if n in seen]


def descendants(node: fx.Node) -> list[fx.Node]:
    """Every node that depends on `node` (not `node` itself), in graph order."""
    seen: set[fx.Node] = set()
    todo = list(node.users)
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(n.users)
    return [n for n in node.graph.nodes if n in seen]


def graph_position(graph: fx.Graph) -> dict[fx.Node, int]:
    return {n: i for i, n in enumerate(graph.nodes)}


def drop_unused_attrs(gm: fx.GraphModule, targets: Iterable[str]) -> list[str]:
    """Delete parameters/buffers no get_attr node reads any more (e.g. stacked weights split per expert)."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    dropped = []
    for target in targets:
        if target in used:
            continue
        owner_name, _, leaf = target.rpartition(".")
        owner = gm.get_submodule(owner_name) if owner_name else gm
        if hasattr(owner, leaf):
            delattr(owner, leaf)
            dropped.append(target)
    return dropped


def infer_vals(nodes: Iterable[fx.Node]) -> bool:
    """Fill node.meta["val"] of new or changed nodes by running their targets on the inputs' fake tensors (in
    graph order), so a matcher can keep shapes valid without a whole-graph shape propagation. False if it could
    not (a later transform that needs shapes then propagates them)."""
    from torch._guards import detect_fake_mode

    nodes = list(nodes)
    if not nodes:
        return True
    order = graph_position(nodes[0].graph)
    graph_mode = None  # looked up once: a scan of the placeholders per new weight is quadratic in big graphs
    try:
        for node in sorted(set(nodes), key=lambda n: order[n]):
            leaves = torch.utils._pytree.tree_leaves([val(n) for n in node.all_input_nodes])
            mode = detect_fake_mode([v for v in leaves if isinstance(v, torch.Tensor)])
            if node.op == "get_attr":  # a new weight: a fake copy in the graph's fake mode
                owner = node.graph.owning_module
                graph_mode = graph_mode or _fake_mode_of(owner)
                node.meta["val"] = graph_mode.from_tensor(get_attr_value(owner, node.target), static_shapes=True)
                continue
            if node.op != "call_function" or mode is None:
                return False
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: n.meta["val"])
            with mode:
                node.meta["val"] = node.target(*args, **kwargs)
    except Exception:  # noqa: BLE001 - fall back to the runner's shape propagation
        return False
    return True


def _fake_mode_of(gm: fx.GraphModule) -> Any:
    from torch._guards import detect_fake_mode

    mode = detect_fake_mode([val(n) for n in gm.graph.nodes if n.op == "placeholder"])
    if mode is None:
        raise RuntimeError("no fake mode on the graph inputs")
    return mode
