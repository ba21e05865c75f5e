"""Graph helpers shared by the runner and transforms: cleanup, shape propagation, node queries."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import fx


def is_graph_module(mod: Any) -> bool:
    return isinstance(mod, fx.GraphModule)


def canonicalize(gm: fx.GraphModule) -> None:
    """Dead-code elimination, lint and recompile."""
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()


def placeholder_values(gm: fx.GraphModule) -> list[Any]:
    return [n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"]


def shape_prop(gm: fx.GraphModule) -> None:
    """Refresh node.meta["val"] with fake tensors, starting from the placeholders' fake values (symbolic dims kept)."""
    from torch._guards import detect_fake_mode
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    vals = placeholder_values(gm)
    if any(v is None for v in vals):
        raise RuntimeError("shape propagation needs placeholder meta['val'] on every graph input")
    mode = detect_fake_mode(vals) or FakeTensorMode(allow_non_fake_inputs=True)
    prev = mode.allow_non_fake_inputs
    mode.allow_non_fake_inputs = True
    try:
        with mode:
            vals = _inputs_on_weight_device(gm, vals)
            FakeTensorProp(gm, mode=mode).propagate_dont_convert_inputs(*vals)
    finally:
        mode.allow_non_fake_inputs = prev


def _inputs_on_weight_device(gm: fx.GraphModule, vals: list[Any]) -> list[Any]:
    """Export records inputs on the capture device (meta); once weights are real, move the fake inputs to their
    device (symbolic shapes kept) so propagation does not mix devices."""
    device = next((t.device for t in [*gm.parameters(), *gm.buffers()] if t.device.type != "meta"), None)
    if device is None:
        return vals
    moved = [v.to(device) if isinstance(v, torch.Tensor) and v.device != device else v for v in vals]
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, val in zip(placeholders, moved):
        node.meta["val"] = val
    return moved


def is_op(node: fx.Node, ops: Any | Iterable[Any]) -> bool:
    """True if `node` calls one of `ops` (an OpOverloadPacket matches each of its overloads). Anything that is not a
    call node (a Python number, None, a placeholder) is not a call of any op."""
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return False
    targets = ops if isinstance(ops, (list, tuple, set)) else [ops]
    for op in targets:
        if node.target is op:
            return True
        if isinstance(op, torch._ops.OpOverloadPacket) and getattr(node.target, "overloadpacket", None) is op:
            return True
    return False


def count_ops(gm: fx.GraphModule, ops: Any | Iterable[Any]) -> int:
    return sum(1 for n in gm.graph.nodes if is_op(n, ops))


def op_name(node: fx.Node) -> str:
    """A readable name for a node's target, e.g. `aten.add.Tensor` or `auto_deploy.torch_attention`."""
    target = node.target
    if node.op in ("placeholder", "output", "get_attr"):
        return node.op
    if isinstance(target, torch._ops.OpOverload):
        ns, name = target.namespace, target._schema.name.split("::")[-1]
        overload = target._overloadname
        return f"{ns}.{name}" + ("" if overload == "default" else f".{overload}")
    if isinstance(target, str):
        return target
    return getattr(target, "__name__", str(target))


def num_call_nodes(gm: fx.GraphModule) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function")


def get_attr_value(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


META = torch.device("meta")


def retarget_device_kwargs(gm: fx.GraphModule, device: torch.device) -> int:
    """Nodes created on the capture device (meta) get `device` instead; returns how many changed."""
    count = 0
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        args = tuple(device if isinstance(a, torch.device) and a != device else a for a in node.args)
        kwargs = dict(node.kwargs)
        if kwargs.get("device") is not None and torch.device(kwargs["device"]) != device:
            kwargs["device"] = device
        if args != node.args or kwargs != node.kwargs:
            node.args, node.kwargs = args, kwargs
            count += 1
    params = {id(t) for t in [*gm.parameters(), *gm.buffers()]}
    for node in gm.graph.nodes:  # lifted constants (e.g. _tensor_constant0), on the root or a submodule
        if node.op != "get_attr":
            continue
        owner_name, _, leaf = str(node.target).rpartition(".")
        owner = gm.get_submodule(owner_name) if owner_name else gm
        value = getattr(owner, leaf, None)
        # a constant captured on meta holds no data: matchers drop the ones they replace
        if isinstance(value, torch.Tensor) and id(value) not in params and value.device not in (device, META):
            setattr(owner, leaf, value.to(device))
            count += 1
    if count:
        gm.recompile()
    return count
