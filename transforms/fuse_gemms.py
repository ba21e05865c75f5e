"""fuse_gemms: linears that read the same input (Q/K/V, gate/up) become one GEMM over concatenated weights.

Before:
    %q = aten.linear(%x, %q_proj_weight)      %k = aten.linear(%x, %k_proj_weight)      %v = ...
After:
    %qkv = aten.linear(%x, %q_proj_weight_fused)            # weight = cat([Wq, Wk, Wv], 0)
    %q = aten.narrow(%qkv, -1, 0, 4096)   %k = aten.narrow(%qkv, -1, 4096, 1024)   %v = ...

Memory: the fused weight of one group is built, then that group's original weights are dropped before the next
group, so the peak grows by one group's weights, never by the model's (the anchor had to disable this for OOM).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import fx, nn

from autodeploy_cli.graph.core import get_attr_value
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.pipeline.registry import register

LINEAR = torch.ops.aten.linear.default


@dataclass
class FuseGemmsOptions(TransformOptions):
    on_cpu: bool = False  # also fuse on CPU (off: CPU builds keep the checkpoint's parameter names, no speed to gain)


def _weight_node(node: fx.Node):
    """The get_attr weight (and bias, or None) of a plain linear that may join a group, else None."""
    if node.op != "call_function" or node.target != LINEAR or node.kwargs:
        return None
    w = node.args[1]
    b = node.args[2] if len(node.args) > 2 else None
    if not isinstance(w, fx.Node) or w.op != "get_attr" or len(w.users) != 1:
        return None  # a weight shared with another op (tied) stays as it is
    if b is not None and (not isinstance(b, fx.Node) or b.op != "get_attr" or len(b.users) != 1):
        return None
    return w, b


def _pop(gm: fx.GraphModule, target: str) -> torch.Tensor:
    owner_name, _, leaf = target.rpartition(".")
    owner = gm.get_submodule(owner_name) if owner_name else gm
    t = getattr(owner, leaf)
    delattr(owner, leaf)
    return t


@register("fuse_gemms")
class FuseGemms(BaseTransform):
    options_cls = FuseGemmsOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        if ctx.device.type == "cpu" and not self.options.on_cpu:
            return TransformInfo.untouched("CPU build (on_cpu: false)")
        groups: dict[tuple, list[fx.Node]] = defaultdict(list)
        for node in gm.graph.nodes:
            wb = _weight_node(node)
            if wb is None:
                continue
            w = get_attr_value(gm, wb[0].target)
            if w.device.type == "meta":
                continue
            groups[(node.args[0], w.dtype, w.shape[1], wb[1] is None)].append(node)
        fused = 0
        for (x, _, _, no_bias), nodes in groups.items():
            if len(nodes) < 2:
                continue
            w_nodes = [n.args[1] for n in nodes]
            sizes = [get_attr_value(gm, w.target).shape[0] for w in w_nodes]
            # build the fused weight, then drop the originals (free as we go: one group at a time)
            weight = torch.cat([get_attr_value(gm, w.target) for w in w_nodes], 0)
            bias = None if no_bias else torch.cat([get_attr_value(gm, n.args[2].target) for n in nodes], 0)
            for n in nodes:
                _pop(gm, n.args[1].target)
                if not no_bias:
                    _pop(gm, n.args[2].target)
            first = w_nodes[0].target
            owner_name, _, leaf = first.rpartition(".")
            owner = gm.get_submodule(owner_name) if owner_name else gm
            owner.register_parameter(f"{leaf}_fused", nn.Parameter(weight, requires_grad=False))
            if bias is not None:
                owner.register_parameter(f"{leaf}_fused_bias", nn.Parameter(bias, requires_grad=False))
            graph = gm.graph
            first_linear = min(nodes, key=lambda n: list(graph.nodes).index(n))
            with graph.inserting_before(first_linear):
                wf = graph.get_attr(f"{first}_fused")
                args = (x, wf) if bias is None else (x, wf, graph.get_attr(f"{first}_fused_bias"))
                out = graph.call_function(LINEAR, args)
                start = 0
                for n, size in zip(nodes, sizes):
                    part = graph.call_function(torch.ops.aten.narrow.default, (out, -1, start, size))
                    if "val" in n.meta:  # same shape as before: keep the metadata valid (no re-propagation)
                        part.meta["val"] = n.meta["val"]
                    start += size
                    n.replace_all_uses_with(part)
            for n in nodes:
                old = n.args[1:]
                graph.erase_node(n)
                for a in old:
                    if isinstance(a, fx.Node) and not a.users:
                        graph.erase_node(a)
            fused += 1
        if not fused:
            return TransformInfo.untouched("no linears share an input")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return TransformInfo(num_matches=fused, is_clean=False, has_valid_shapes=True)
