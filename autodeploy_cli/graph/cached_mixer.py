"""The one graph rewrite every cached-mixer insert transform shares: canonical mixer nodes -> the backend's cached
op over per-sequence state slots (the interface is `autodeploy_cli.ops.mixer_interface`)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import fx

from autodeploy_cli.errors import ADError
from autodeploy_cli.graph.core import get_attr_value
from autodeploy_cli.graph.inputs import add_cache_inputs, add_metadata_inputs, bound_args
from autodeploy_cli.graph.match import ancestors
from autodeploy_cli.ops.cache import CachedSequenceInterface
from autodeploy_cli.ops.mixer_interface import MixerDescriptor, MixerNodeInfo


def insert_cached_mixers(gm: fx.GraphModule, iface: CachedSequenceInterface, backend: type[MixerDescriptor],
                         nodes: Sequence[fx.Node], infos: Sequence[MixerNodeInfo]) -> None:
    """Replace each node by `backend`'s cached op: (*tensor inputs, *metadata fields, *prepared metadata, *states,
    *constants). Adds the sequence-info inputs, one shared metadata node, and the layer's state-slot inputs."""
    for info in infos:
        reason = backend.unsupported_reason(info)
        if reason:
            raise ADError(f"The `{backend.name}` {backend.family} backend cannot run layer {info.layer_idx}: "
                          f"{reason}. Choose another with `transforms.<insert transform>.backend`.")
    cc = iface.cache_config
    graph = gm.graph
    meta, prep_outs = add_metadata_inputs(gm, iface, backend.metadata_fields, backend.prepare_metadata(cc))
    for node, info in zip(nodes, infos):
        states = add_cache_inputs(gm, iface, backend.state_initializers(info, cc), info.layer_idx)
        a = {k: fold_weight_only(gm, v) for k, v in bound_args(node).items()}
        with graph.inserting_before(node):
            new = graph.call_function(backend.cached_op(), (*[a[n] for n in backend.tensor_inputs], *meta.values(),
                                                            *prep_outs, *states, *backend.constants(info)))
        if "val" in node.meta:
            new.meta["val"] = node.meta["val"]
        node.replace_all_uses_with(new)
        graph.erase_node(node)


def fold_weight_only(gm: fx.GraphModule, value: Any) -> Any:
    """A node computed from weights alone (e.g. A = -exp(A_log.float())) becomes a buffer holding its value, so a
    decode step does not recompute it; anything else (inputs, python values, meta weights) is returned as it is."""
    if not isinstance(value, fx.Node) or value.op != "call_function":
        return value
    nodes = ancestors(value)
    if any(n.op not in ("get_attr", "call_function") for n in nodes):
        return value
    env: dict[fx.Node, Any] = {}
    for n in nodes:  # graph order
        if n.op == "get_attr":
            env[n] = get_attr_value(gm, n.target)
            if isinstance(env[n], torch.Tensor) and env[n].device.type == "meta":
                return value
        else:
            args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda x: env[x])
            env[n] = n.target(*args, **kwargs)
    name = f"_folded_{value.name}"
    gm.register_buffer(name, env[value].detach())
    with gm.graph.inserting_before(value):
        folded = gm.graph.get_attr(name)
    if "val" in value.meta:
        folded.meta["val"] = value.meta["val"]
    return folded
