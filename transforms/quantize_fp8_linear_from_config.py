"""quantize_fp8_linear_from_config: the linear layers a quant config covers become canonical FP8 linear ops.

The scheme comes from the model factory (ModelOpt hf_quant_config.json, HF quantization_config, or the user's
`quant_config.quant_algo: FP8`). Each linear whose module is not excluded gets an FP8 weight and its scale buffers
(still on meta); load hooks fill them at load: a checkpoint's FP8 tensors are checked and taken as stored, a real
weight (bf16 checkpoint, random init) is quantized there. With a quantized checkpoint the tensors decide as well:
a linear the checkpoint stores unquantized stays a plain linear, an excluded one stored in FP8 is dequantized.

Before:
    %w = get_attr model.layers.0.self_attn.q_proj.weight : 64 x 64 (float32, meta)
    %q = aten.linear(%x, %w)
After (ModelOpt FP8: static per-tensor input scale):
    %w = get_attr model.layers.0.self_attn.q_proj.weight : 64 x 64 (float8_e4m3fn, meta)
    %ws = get_attr model.layers.0.self_attn.q_proj.weight_scale : []
    %is = get_attr model.layers.0.self_attn.q_proj.input_scale : []
    %q = auto_deploy.torch_quant_fp8_linear(%x, %w, None, %is, %ws)
Block-scaled (HF fp8, weight_block_size [128, 128]):
    %q = auto_deploy.torch_quant_fp8_block_linear(%x, %w, None, %ws, 128, 128)    # %ws: ceil(N/128) x ceil(K/128)
MoE experts are left as they are (their FP8 path belongs to the fused MoE op).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import fx, nn

from autodeploy_cli.errors import ADError
from autodeploy_cli.graph.core import get_attr_value
from autodeploy_cli.log import get_logger
from autodeploy_cli.models.quant_config import QuantScheme
from autodeploy_cli.models.quant_weights import fp8_linear_tensors, real_weight
from autodeploy_cli.ops import load_ops
from autodeploy_cli.ops.quant import FP8
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo
from autodeploy_cli.pipeline.registry import register
from transforms.gather_logits_before_lm_head import find_lm_head

LINEAR = torch.ops.aten.linear.default


class _Parts:
    """The (weight, weight_scale, input_scale) of each linear, computed once per source mapping and handed to the
    three load hooks that ask for them (a weight is quantized once, not three times)."""

    def __init__(self, scheme: QuantScheme):
        self.scheme = scheme
        self._memo: dict[str, tuple[int, tuple, set]] = {}

    def take(self, tensors: Mapping, prefix: str, part: int, parts: int) -> torch.Tensor:
        key = id(tensors)
        entry = self._memo.get(prefix)
        if entry is None or entry[0] != key:
            entry = (key, fp8_linear_tensors(tensors, prefix, self.scheme), set())
            self._memo[prefix] = entry
        entry[2].add(part)
        if len(entry[2]) == parts:
            del self._memo[prefix]
        return entry[1][part]


def _linears(gm: fx.GraphModule) -> list[tuple[fx.Node, str]]:
    """(linear node, module name) of every plain linear whose weight is a parameter used by it alone."""
    reads: dict[str, int] = {}  # weight name -> its readers over every get_attr of it (tied weights: several)
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            reads[str(node.target)] = reads.get(str(node.target), 0) + len(node.users)
    out = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target != LINEAR:
            continue
        w = node.args[1]
        if not (isinstance(w, fx.Node) and w.op == "get_attr" and str(w.target).endswith(".weight")):
            continue
        if reads[str(w.target)] != 1:  # tied / shared (embedding + LM head): left as it is
            continue
        out.append((node, str(w.target)[: -len(".weight")]))
    return out


def _refuse_fp8_experts(ckpt: Any, scheme: QuantScheme) -> None:
    """FP8 MoE experts need the fused MoE op's FP8 path: refuse them by name rather than fail at load."""
    experts = [n for n in ckpt if ".experts." in n and ckpt.is_fp8(n)]
    if experts:
        raise ADError(f"The checkpoint stores MoE experts in FP8 (e.g. `{experts[0]}` in `{ckpt.where(experts[0])}`; "
                      f"quantization config `{scheme.file}`). ad quantizes dense linear layers only so far; run the "
                      "unquantized checkpoint (optionally with `quant_config.quant_algo=FP8` for its dense layers).")


def _register(owner: nn.Module, leaf: str, tensor: torch.Tensor, param: bool) -> None:
    if param:
        setattr(owner, leaf, nn.Parameter(tensor, requires_grad=False))
    else:
        owner.register_buffer(leaf, tensor)


@register("quantize_fp8_linear_from_config")
class QuantizeFp8LinearFromConfig(BaseTransform):
    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        load_ops()
        scheme = ctx.factory.quant_scheme()
        if scheme is None:
            return TransformInfo.untouched("not quantized (no quant config; quant_config.quant_algo unset)")
        ckpt = ctx.factory.checkpoint(torch.device("cpu")) if ctx.factory.checkpoint_quantized else None
        if ckpt is not None:
            _refuse_fp8_experts(ckpt, scheme)
        head = find_lm_head(gm)
        parts = _Parts(scheme)
        touched: list[fx.Node] = []
        kept: list[str] = []
        for node, prefix in _linears(gm):
            wname = f"{prefix}.weight"
            excluded = scheme.excludes(prefix) or (node is head and scheme.excludes("lm_head"))
            stored_fp8 = ckpt is not None and ckpt.is_fp8(wname)
            if excluded or (ckpt is not None and not stored_fp8):
                if stored_fp8:  # excluded by the config, FP8 in the checkpoint: run it dequantized
                    ctx.weight_hooks[wname] = lambda t, n=wname: real_weight(t, n, scheme, ctx.factory.model_dtype())
                elif not excluded:
                    kept.append(prefix)
                continue
            touched.append(self._quantize(gm, node, prefix, scheme, parts, ctx))
        if kept:
            get_logger().warning(f"{len(kept)} linear layer(s) the quant config covers are stored unquantized in the "
                                 f"checkpoint and run unquantized: {', '.join(kept[:6])}"
                                 f"{' ...' if len(kept) > 6 else ''}")
        ctx.facts.quantization = scheme.describe()
        ctx.facts.quantized_linears = len(touched)
        if not touched:
            return TransformInfo.untouched(f"{scheme.describe()}: no linear layer to quantize")
        if self.name not in ctx.facts.lossy:
            ctx.facts.lossy.append(self.name)
        return TransformInfo.matched(len(touched), touched, note=f"{scheme.describe()}; {len(touched)} linears")

    def _quantize(self, gm: fx.GraphModule, node: fx.Node, prefix: str, scheme: QuantScheme, parts: _Parts,
                  ctx: PassContext) -> fx.Node:
        holder = gm.get_submodule(prefix)  # the linear's own module: its weight and scales sit side by side
        w = get_attr_value(gm, f"{prefix}.weight")
        n, k = w.shape
        static = scheme.activations == "static"
        if w.device.type == "meta":
            sshape: tuple = {"tensor": (), "channel": (n,)}.get(scheme.weights, ())
            if scheme.weights == "block":
                sshape = (-(-n // scheme.block[0]), -(-k // scheme.block[1]))
            q = torch.empty(n, k, dtype=FP8, device="meta")
            scale = torch.empty(sshape, dtype=torch.float32, device="meta")
            in_scale = torch.empty((), dtype=torch.float32, device="meta") if static else None
            names = [f"{prefix}.weight", f"{prefix}.weight_scale"] + ([f"{prefix}.input_scale"] if static else [])
            for i, name in enumerate(names):
                ctx.weight_hooks[name] = lambda t, p=prefix, i=i, c=len(names): parts.take(t, p, i, c)
        else:  # already real (a graph quantized after load): quantize now
            q, scale, in_scale = fp8_linear_tensors({f"{prefix}.weight": w}, prefix, scheme)
        _register(holder, "weight", q, param=True)
        _register(holder, "weight_scale", scale, param=False)
        if in_scale is not None:
            _register(holder, "input_scale", in_scale, param=False)
        graph = gm.graph
        x, bias = node.args[0], node.args[2] if len(node.args) > 2 else None
        with graph.inserting_before(node):
            w_node = node.args[1]
            s_node = graph.get_attr(f"{prefix}.weight_scale")
            if scheme.weights == "block":
                args: tuple[Any, ...] = (x, w_node, bias, s_node, *scheme.block)
                op = torch.ops.auto_deploy.torch_quant_fp8_block_linear.default
            else:
                i_node = graph.get_attr(f"{prefix}.input_scale") if in_scale is not None else None
                args, op = (x, w_node, bias, i_node, s_node), torch.ops.auto_deploy.torch_quant_fp8_linear.default
            new = graph.call_function(op, args)
        if "val" in node.meta:
            new.meta["val"] = node.meta["val"]
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        return new
