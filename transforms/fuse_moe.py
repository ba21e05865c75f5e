"""fuse_moe: the canonical MoE ops become the fused MoE op over two stacked weight tensors.

Before (export patch path: views of transformers' stacked parameters):
    %g = aten.slice(%experts_gate_up_proj, 1, 0, I)   %u = aten.slice(%experts_gate_up_proj, 1, I, 2I)
    %y = auto_deploy.torch_moe_stacked(%x, %ids, %w, %g, %experts_down_proj, %u)
or (matcher path, or a model calling the op): per-expert weight lists
    %y = auto_deploy.torch_moe(%x, %ids, %w, [%experts_0_gate_proj_weight, ...], [%experts_0_down_proj_weight, ...],
                               [%experts_0_up_proj_weight, ...])
After:
    %y = auto_deploy.triton_moe_fused(%x, %ids, %w, %experts_w13_weight, %experts_w2_weight, None, None,
                                      act=silu, gated=True, ...)          # torch_moe_fused with backend torch
    experts_w13_weight [E, 2I, h]: expert e's gate rows, then its up rows; experts_w2_weight [E, h, I]
    (non-gated experts: w13 [E, I, h]; biases stack the same way into [E, 2I] / [E, h]).

Memory: when the experts' weights are already laid out like the stacked ones (transformers' gate_up_proj
[E, 2I, h] with the gate half first, down_proj [E, h, I]: Mixtral, Qwen-MoE, DeepSeek, ...; per-expert lists that
are equally spaced views of such a tensor), the fused weight is a view of that storage: no copy at all. Otherwise
(gpt-oss's transposed and interleaved layout, Llama-4's transposed one, sliced experts) one layer is stacked at a
time and its source weights are dropped right after, so the peak grows by one layer's experts, never by the
model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import fx, nn

from autodeploy_cli.config.schema import BACKEND_CHOICES
from autodeploy_cli.graph.core import get_attr_value
from autodeploy_cli.graph.inputs import bound_args
from autodeploy_cli.graph.match import drop_unused_attrs
from autodeploy_cli.graph.views import replay, view_chain
from autodeploy_cli.ops import load_ops
from autodeploy_cli.ops.backends import moe_op, resolve
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.pipeline.registry import register

LISTS = ("w1_weight", "w3_weight", "w2_weight", "w1_bias", "w3_bias", "w2_bias")


@dataclass
class FuseMoeOptions(TransformOptions):
    backend: str = "auto"  # auto (triton on CUDA, torch elsewhere) | torch | triton
    choices: ClassVar[dict] = {"backend": BACKEND_CHOICES["moe"]}


def _shared_view(parts: list[list[torch.Tensor]]) -> Optional[torch.Tensor]:
    """parts[e] = the row blocks of expert e (e.g. [gate_e, up_e]). If every block is a row-contiguous view of one
    storage at base + e * S + (rows before it) * cols, return the [E, rows, cols] view of that storage, else None."""
    first = parts[0][0]
    cols = first.shape[-1]
    rows = sum(p.shape[0] for p in parts[0])
    storage = first.untyped_storage().data_ptr()
    base = first.storage_offset()
    step = parts[1][0].storage_offset() - base if len(parts) > 1 else rows * cols
    if step < rows * cols:
        return None
    for e, blocks in enumerate(parts):
        offset = base + e * step
        for p in blocks:
            if (p.dim() != 2 or p.shape[1] != cols or p.stride() != (cols, 1) or p.storage_offset() != offset
                    or p.untyped_storage().data_ptr() != storage or p.dtype != first.dtype):
                return None
            offset += p.shape[0] * cols
    return torch.as_strided(first, (len(parts), rows, cols), (step, cols, 1), base)


def _stacked(parts: list[list[torch.Tensor]]) -> torch.Tensor:
    """[E, rows, (cols)] of the experts' row blocks concatenated: a view when the layout allows, else a copy."""
    if parts[0][0].dim() == 2:
        view = _shared_view(parts)
        if view is not None:
            return view
    return torch.stack([torch.cat(blocks, 0) if len(blocks) > 1 else blocks[0] for blocks in parts])


def _owner_prefix(name: str) -> str:
    """The module holding the experts: model.layers.0.mlp.experts for model.layers.0.mlp.experts.3.gate_proj.weight
    (the path before the last integer segment, the expert index); the root module if there is none."""
    parts = name.split(".")
    idx = [i for i, p in enumerate(parts) if p.isdigit()]
    return ".".join(parts[:idx[-1]]) if idx else ""


def _register(gm: fx.GraphModule, prefix: str, leaf: str, tensor: torch.Tensor) -> str:
    owner = gm.get_submodule(prefix) if prefix else gm
    name = leaf
    while hasattr(owner, name):
        name += "_"
    owner.register_parameter(name, nn.Parameter(tensor, requires_grad=False))
    return f"{prefix}.{name}" if prefix else name


def _lists(gm: fx.GraphModule, node: fx.Node) -> Optional[dict[str, Optional[list[torch.Tensor]]]]:
    """torch_moe: its per-expert tensors, if every entry is a get_attr this node alone uses, else None."""
    args = bound_args(node)
    out = {}
    for key in LISTS:
        entries = args.get(key)
        if entries is None or (key == "w3_weight" and not entries):
            out[key] = None
            continue
        if not all(isinstance(n, fx.Node) and n.op == "get_attr" and len(n.users) == 1 for n in entries):
            return None
        out[key] = [get_attr_value(gm, n.target) for n in entries]
    return out


def _stacked_args(gm: fx.GraphModule, node: fx.Node) -> Optional[dict[str, Optional[list[torch.Tensor]]]]:
    """torch_moe_stacked: its tensors split per expert (views), if each is a view chain of a parameter."""
    args = bound_args(node)
    out = {}
    for key in LISTS:
        if args.get(key) is None:
            out[key] = None
            continue
        chain = view_chain(args[key])
        if chain is None:
            return None
        t = replay(get_attr_value(gm, chain[0].target), chain[1])
        out[key] = [t[e] for e in range(t.shape[0])]
    return out


def _source_nodes(node: fx.Node) -> list[fx.Node]:
    """The get_attr and view nodes feeding the weights (erased with the node when nothing else uses them)."""
    args = bound_args(node)
    out = []
    for key in LISTS:
        for n in (args.get(key) if isinstance(args.get(key), (list, tuple)) else [args.get(key)]):
            while isinstance(n, fx.Node) and n.op in ("call_function", "get_attr"):
                out.append(n)
                n = n.args[0] if n.op == "call_function" and n.args else None
    return out


def _fuse_one(gm: fx.GraphModule, node: fx.Node, op, tensors: dict) -> bool:
    args = bound_args(node)
    if any(t.device.type == "meta" for v in tensors.values() if v for t in v):
        return False
    gated = tensors["w3_weight"] is not None
    first = _source_nodes(node)
    sources = [n.target for n in first if n.op == "get_attr"]
    lists_form = node.target == torch.ops.auto_deploy.torch_moe.default
    prefix = _owner_prefix(sources[0]) if lists_form else sources[0].rpartition(".")[0]
    rows = (lambda a, b: [[x, y] for x, y in zip(a, b)]) if gated else (lambda a, b: [[x] for x in a])
    names = {"w13_weight": _register(gm, prefix, "w13_weight", _stacked(rows(tensors["w1_weight"],
                                                                              tensors["w3_weight"]))),
             "w2_weight": _register(gm, prefix, "w2_weight", _stacked([[w] for w in tensors["w2_weight"]]))}
    if tensors["w1_bias"] is not None:
        names["w13_bias"] = _register(gm, prefix, "w13_bias", _stacked(rows(tensors["w1_bias"], tensors["w3_bias"])))
    if tensors["w2_bias"] is not None:
        names["w2_bias"] = _register(gm, prefix, "w2_bias", _stacked([[b] for b in tensors["w2_bias"]]))
    tensors.clear()  # no reference to the sources left here: they can be freed once dropped below
    graph = gm.graph
    with graph.inserting_before(node):
        attrs = {k: graph.get_attr(v) for k, v in names.items()}
        new = graph.call_function(op, (args["x"], args["selected_experts"], args["routing_weights"],
                                       attrs["w13_weight"], attrs["w2_weight"]),
                                  {"b13": attrs.get("w13_bias"), "b2": attrs.get("w2_bias"), "act": args["act"],
                                   "gated": gated, "routing_on_input": args["routing_on_input"],
                                   "alpha": args["alpha"], "limit": args["limit"]})
    new.meta.update({k: v for k, v in node.meta.items() if k in ("val", "nn_module_stack", "stack_trace")})
    node.replace_all_uses_with(new)
    graph.erase_node(node)
    for n in first:  # producers first in the list: erase consumers before them
        if not n.users and not getattr(n, "_erased", False):
            graph.erase_node(n)
    drop_unused_attrs(gm, sources)  # free the per-expert or stacked source weights of this layer now
    return True


@register("fuse_moe")
class FuseMoe(BaseTransform):
    options_cls = FuseMoeOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        load_ops()
        backend = resolve("moe", self.options.backend, ctx.device.type)
        forms = {torch.ops.auto_deploy.torch_moe.default: _lists,
                 torch.ops.auto_deploy.torch_moe_stacked.default: _stacked_args}
        nodes = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in forms]
        if not nodes:
            return TransformInfo.untouched("no torch_moe to fuse")
        op = moe_op(backend)
        fused, kept = 0, 0
        for node in nodes:
            tensors = forms[node.target](gm, node)
            if tensors is not None and _fuse_one(gm, node, op, tensors):
                fused += 1
            else:
                kept += 1
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        note = f"backend {backend}" + (f"; {kept} kept (weights not per-expert parameters, or not loaded)"
                                       if kept else "")
        if not fused:
            return TransformInfo.untouched(note)
        return TransformInfo(num_matches=fused, is_clean=False, has_valid_shapes=True, note=note)
