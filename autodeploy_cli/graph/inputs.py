"""Helpers for transforms that add graph inputs (sequence-info fields, caches) and read op arguments by name."""

from __future__ import annotations

import operator
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import fx

from autodeploy_cli.graph.core import placeholder_values, shape_prop
from autodeploy_cli.ops.batch import BATCH_INFO
from autodeploy_cli.ops.attention_interface import PrepareMetadata
from autodeploy_cli.ops.cache import CachedSequenceInterface, CacheSpec, StateSpec


def bound_args(node: fx.Node) -> dict[str, Any]:
    """The node's arguments by schema name, defaults filled in."""
    schema = node.target._schema  # type: ignore[union-attr]
    out = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        else:
            out[arg.name] = arg.default_value if arg.has_default_value() else None
    return out


def _fake_value(gm: fx.GraphModule, example: torch.Tensor, dynamic: bool, name: str) -> Any:
    """A fake tensor for a new graph input (symbolic sizes where the batch decides them); None without a fake mode."""
    from torch._guards import detect_fake_mode

    vals = [v for v in placeholder_values(gm) if v is not None]
    mode = detect_fake_mode(vals) if vals else None
    if mode is None:
        return None
    device = vals[0].device
    try:
        if dynamic and mode.shape_env is not None:
            from torch._dynamo.source import LocalSource
            from torch.fx.experimental.symbolic_shapes import DimDynamic, StatelessSymbolicContext

            ctx = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC] * example.dim())
            return mode.from_tensor(example.to(device), symbolic_context=ctx, source=LocalSource(name))
        return mode.from_tensor(example.to(device), static_shapes=True)
    except Exception:  # noqa: BLE001 - the value is only informational (dumps, shape_prop)
        return None


def add_graph_input(gm: fx.GraphModule, iface: CachedSequenceInterface, name: str,
                    example: Optional[torch.Tensor] = None, dynamic: bool = True) -> fx.Node:
    """The placeholder `name`, created after the last one (and registered with the interface) if missing."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for n in placeholders:
        if n.name == name or n.target == name:
            return n
    with gm.graph.inserting_after(placeholders[-1]):
        node = gm.graph.placeholder(name)
    if node.name != name:
        raise RuntimeError(f"graph input name {name!r} is taken (got {node.name!r})")
    if example is None:
        example = iface.info.example(name)
        dynamic = dynamic and name != BATCH_INFO  # a fixed-size host vector
    val = _fake_value(gm, example, dynamic, name)
    if val is not None:
        node.meta["val"] = val
    if name in iface.cache_specs or name in iface.state_specs:
        return node
    iface.add_input(name)
    return node


def ensure_shapes(gm: fx.GraphModule, nodes: list[fx.Node]) -> None:
    """Give `nodes` a meta["val"] by fake propagation when one lacks it."""
    if any(n.meta.get("val") is None for n in nodes):
        shape_prop(gm)


def refresh_vals(nodes: list[fx.Node]) -> None:
    """Best effort: recompute meta["val"] of `nodes` (in order) from their inputs' fake values, so graph dumps show
    the shapes of nodes a transform created. Nodes whose inputs have no fake value are left alone."""
    from torch._guards import detect_fake_mode

    for node in nodes:
        if node.op != "call_function":
            continue
        inputs = node.all_input_nodes
        vals = [n.meta.get("val") for n in inputs]
        if any(v is None for v in vals):
            continue
        mode = detect_fake_mode([v for v in vals if isinstance(v, torch.Tensor)])
        env = dict(zip(inputs, vals))
        args = fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
        try:
            if mode is None:
                node.meta["val"] = node.target(*args, **kwargs)
            else:
                with mode:
                    node.meta["val"] = node.target(*args, **kwargs)
        except Exception:  # noqa: BLE001 - informational only
            node.meta.pop("val", None)


def add_metadata_inputs(gm: fx.GraphModule, iface: CachedSequenceInterface, fields: Sequence[str],
                        prepare: Optional[PrepareMetadata]) -> tuple[dict[str, fx.Node], list[fx.Node]]:
    """The sequence-info inputs a cached op reads, and the outputs of its once-per-forward metadata op (inserted
    right after the graph inputs), shared by every layer."""
    meta = {f: add_graph_input(gm, iface, f) for f in fields}
    if prepare is None:
        return meta, []
    graph = gm.graph
    inputs = [meta[f] if f in meta else add_graph_input(gm, iface, f) for f in prepare.fields]
    args = (*inputs, *prepare.constants)
    for node in graph.nodes:  # a second cache transform of the same backend shares the first one's node
        if node.op == "call_function" and node.target == prepare.op and node.args == args:
            outs = {u.args[1]: u for u in node.users if u.target is operator.getitem}
            if len(outs) == prepare.num_outputs:
                return meta, [outs[i] for i in range(prepare.num_outputs)]
    last_input = [n for n in graph.nodes if n.op == "placeholder"][-1]
    with graph.inserting_after(last_input):
        prep_node = graph.call_function(prepare.op, args)
    with graph.inserting_after(prep_node):
        outs = [graph.call_function(operator.getitem, (prep_node, i)) for i in range(prepare.num_outputs)]
    refresh_vals([prep_node, *outs])
    return meta, outs


def add_buffer_inputs(gm: fx.GraphModule, iface: CachedSequenceInterface,
                      buffers: dict[str, Callable[[torch.device], torch.Tensor]]) -> list[fx.Node]:
    """Global buffers shared by all layers (e.g. a planner workspace), registered with the interface."""
    nodes = []
    for name, init in buffers.items():
        iface.add_buffer(name, init)
        nodes.append(add_graph_input(gm, iface, name, init(torch.device("meta")), dynamic=False))
    return nodes


def add_cache_inputs(gm: fx.GraphModule, iface: CachedSequenceInterface, specs: dict[str, Union[CacheSpec, StateSpec]],
                     layer_idx: int) -> list[fx.Node]:
    """One layer's caches (`<base>_<layer_idx>`): paged KV caches ([pages, *page_shape]) or per-sequence state
    slots ([slots, *slot_shape]), registered with the interface and added as graph inputs."""
    nodes = []
    for base, spec in specs.items():
        name = f"{base}_{layer_idx}"
        if isinstance(spec, StateSpec):
            iface.add_state(name, spec)
            shape = spec.slot_shape
        else:
            iface.add_cache(name, spec)
            shape = spec.page_shape
        example = torch.empty((1, *shape), dtype=spec.dtype, device="meta")
        nodes.append(add_graph_input(gm, iface, name, example, dynamic=False))
    return nodes
