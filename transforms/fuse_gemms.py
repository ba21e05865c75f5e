"""fuse_gemms: linears that read the same input (Q/K/V, gate/up) become one GEMM over concatenated weights.

Before:
    %q = aten.linear(%x, %q_proj_weight)      %k = aten.linear(%x, %k_proj_weight)      %v = ...
After:
    %qkv = aten.linear(%x, %q_proj_weight_fused)            # weight = cat([Wq, Wk, Wv], 0)
    %q = aten.narrow(%qkv, -1, 0, 4096)   %k = aten.narrow(%qkv, -1, 4096, 1024)   %v = ...

Memory: the fused weight of one group is built, then that group's original weights are dropped before the next
group, so the peak grows by one group's weights, never by the model's (the anchor had to disable this for OOM).

FP8 linears (auto_deploy.torch_quant_fp8_linear / _block_linear) sharing an input fuse the same way, scales too:
per-channel and block scales concatenate; per-tensor weights either keep their bytes and get one scale per output
row (`fp8_scales: channel`, exact) or are requantized to the largest of their scales (`fp8_scales: max`, vLLM's
choice: one per-tensor GEMM, but every part without the largest scale is rounded twice; on the tiny test model that
moved the logits by 6% of their range, so it is marked lossy for `--verify`). Static input scales of one input take
the largest (they are equal when the checkpoint calibrated that input once). Block-scaled weights fuse when every
part's N is a whole number of blocks.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import fx, nn

from autodeploy_cli.graph.core import get_attr_value
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.pipeline.registry import register

LINEAR = torch.ops.aten.linear.default
# ops that can join a group: (op, index of the first scale argument, number of scale arguments) after (x, w, bias)
_FP8_OPS = ("torch_quant_fp8_linear", "torch_quant_fp8_block_linear")


@dataclass
class FuseGemmsOptions(TransformOptions):
    on_cpu: bool = False  # also fuse on CPU (off: CPU builds keep the checkpoint's parameter names, no speed to gain)
    # FP8 per-tensor weights of one group: channel (exact: a scale per output row) | max (requantize to the largest)
    fp8_scales: str = "channel"
    choices: ClassVar[dict] = {"fp8_scales": ("channel", "max")}


def _own_attr(a) -> bool:
    return a is None or (isinstance(a, fx.Node) and a.op == "get_attr" and len(a.users) == 1)


def _weight_node(node: fx.Node):
    """The get_attr weight (and bias, or None) of a plain or FP8 linear that may join a group, else None."""
    if node.op != "call_function" or node.kwargs:
        return None
    if node.target != LINEAR and getattr(node.target, "name", lambda: "")().split("::")[-1] not in _FP8_OPS:
        return None
    w = node.args[1]
    b = node.args[2] if len(node.args) > 2 else None
    if not isinstance(w, fx.Node) or w.op != "get_attr" or len(w.users) != 1:
        return None  # a weight shared with another op (tied) stays as it is
    if not _own_attr(b) or not all(_own_attr(a) for a in node.args[3:] if isinstance(a, fx.Node)):
        return None
    return w, b


def _fp8_kind(gm: fx.GraphModule, node: fx.Node) -> tuple:
    """What FP8 linears must share to fuse: op, static/dynamic input, scale granularity (block sizes)."""
    if node.target == LINEAR:
        return ("linear",)
    if len(node.args) == 6:  # block: (x, w, b, scale, block_n, block_k)
        return ("block", node.args[4], node.args[5])
    ws = get_attr_value(gm, node.args[4].target)
    return ("fp8", node.args[3] is None, "channel" if ws.numel() > 1 else "tensor")


def _fp8_group_ok(gm: fx.GraphModule, kind: tuple, nodes: list[fx.Node]) -> bool:
    if kind[0] != "block":
        return True
    return all(get_attr_value(gm, n.args[1].target).shape[0] % kind[1] == 0 for n in nodes)


def _fused_scales(gm: fx.GraphModule, kind: tuple, nodes: list[fx.Node], mode: str) -> tuple[torch.Tensor, dict]:
    """(fused fp8 weight, {scale arg index: fused scale tensor}) of an FP8 group."""
    from autodeploy_cli.ops.quant import requantize_to_max_scale

    weights = [get_attr_value(gm, n.args[1].target) for n in nodes]
    s_idx = 3 if kind[0] == "block" else 4
    scales = [get_attr_value(gm, n.args[s_idx].target) for n in nodes]
    if kind[0] == "fp8" and kind[2] == "tensor" and mode == "max":
        weight, wscale = requantize_to_max_scale(weights, scales)
    elif kind[0] == "fp8" and kind[2] == "tensor":  # exact: each part's scale repeated over its rows
        weight = torch.cat([w.view(torch.uint8) for w in weights], 0).view(weights[0].dtype)
        wscale = torch.cat([s.float().reshape(1).expand(w.shape[0]) for w, s in zip(weights, scales)])
    else:
        weight = torch.cat([w.view(torch.uint8) for w in weights], 0).view(weights[0].dtype)
        wscale = torch.cat(scales, 0)
    out = {s_idx: wscale}
    if kind[0] == "fp8" and not kind[1]:  # static input scales: the largest
        out[3] = torch.stack([get_attr_value(gm, n.args[3].target).reshape(()) for n in nodes]).max()
    return weight, out


def _pop(gm: fx.GraphModule, target: str) -> torch.Tensor:
    owner_name, _, leaf = target.rpartition(".")
    owner = gm.get_submodule(owner_name) if owner_name else gm
    t = getattr(owner, leaf)
    delattr(owner, leaf)
    return t


def _fuse_group(gm: fx.GraphModule, x: fx.Node, nodes: list[fx.Node], kind: tuple, no_bias: bool, mode: str) -> None:
    """One group of linears reading `x` -> one linear (or FP8 linear) over the concatenated weights + narrows."""
    w_nodes = [n.args[1] for n in nodes]
    sizes = [get_attr_value(gm, w.target).shape[0] for w in w_nodes]
    # build the fused weight, then drop the originals (free as we go: one group at a time)
    if kind[0] == "linear":
        weight, scales = torch.cat([get_attr_value(gm, w.target) for w in w_nodes], 0), {}
    else:
        weight, scales = _fused_scales(gm, kind, nodes, mode)
    bias = None if no_bias else torch.cat([get_attr_value(gm, n.args[2].target) for n in nodes], 0)
    for n in nodes:
        for a in n.args[1:]:
            if isinstance(a, fx.Node) and a.op == "get_attr":
                _pop(gm, a.target)
    first = w_nodes[0].target
    owner_name, _, leaf = first.rpartition(".")
    owner = gm.get_submodule(owner_name) if owner_name else gm
    owner.register_parameter(f"{leaf}_fused", nn.Parameter(weight, requires_grad=False))
    if bias is not None:
        owner.register_parameter(f"{leaf}_fused_bias", nn.Parameter(bias, requires_grad=False))
    scale_names = {i: "input_scale" if i == 3 and kind[0] == "fp8" else "scale" for i in scales}
    for i, t in scales.items():  # FP8: weight_fused_scale, weight_fused_input_scale
        owner.register_buffer(f"{leaf}_fused_{scale_names[i]}", t)
    graph = gm.graph
    first_linear = min(nodes, key=lambda n: list(graph.nodes).index(n))
    with graph.inserting_before(first_linear):
        wf = graph.get_attr(f"{first}_fused")
        bf = None if bias is None else graph.get_attr(f"{first}_fused_bias")
        if kind[0] == "linear":
            out = graph.call_function(LINEAR, (x, wf) if bf is None else (x, wf, bf))
        else:
            args = list(first_linear.args)
            args[1], args[2] = wf, bf
            for i, name in scale_names.items():
                args[i] = graph.get_attr(f"{first}_fused_{name}")
            out = graph.call_function(first_linear.target, tuple(args))
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
            groups[(node.args[0], w.dtype, w.shape[1], wb[1] is None, _fp8_kind(gm, node))].append(node)
        fused, lossy = 0, False
        for (x, _, _, no_bias, kind), nodes in groups.items():
            if len(nodes) < 2 or not _fp8_group_ok(gm, kind, nodes):
                continue
            _fuse_group(gm, x, nodes, kind, no_bias, self.options.fp8_scales)
            lossy |= kind[0] == "fp8" and kind[2] == "tensor" and self.options.fp8_scales == "max"
            fused += 1
        if not fused:
            return TransformInfo.untouched("no linears share an input")
        if lossy and self.name not in ctx.facts.lossy:  # requantized FP8 weights: judged by the quality gate
            ctx.facts.lossy.append(self.name)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return TransformInfo(num_matches=fused, is_clean=False, has_valid_shapes=True)
