"""The one graph rewrite every cached-mixer insert transform shares: canonical mixer nodes -> the backend's cached
op over per-sequence state slots (the interface is `autodeploy_cli.ops.mixer_interface`)."""

from __future__ import annotations

from typing import Sequence

from torch import fx

from autodeploy_cli.errors import ADError
from autodeploy_cli.graph.inputs import add_cache_inputs, add_metadata_inputs, bound_args
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
        a = bound_args(node)
        with graph.inserting_before(node):
            new = graph.call_function(backend.cached_op(), (*[a[n] for n in backend.tensor_inputs], *meta.values(),
                                                            *prep_outs, *states, *backend.constants(info)))
        if "val" in node.meta:
            new.meta["val"] = node.meta["val"]
        node.replace_all_uses_with(new)
        graph.erase_node(node)
