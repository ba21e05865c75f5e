"""fuse_fp8_linear: after load, the canonical FP8 linears become the backend's kernels (the torch backend keeps the
reference ops).

Triton backend: one-token steps run the FP8 weight-streaming GEMV (its activation in bf16 unless `gemv_act_quant`),
more tokens the Triton activation quantizer + torch._scaled_mm (block-scaled weights: a Triton FP8 GEMM). The RMSNorm (with its residual add) or the SiLU-and-mul
in front of a linear is taken into the op, so its input is normalised and quantized in one pass (the LM head keeps
its norm apart, like optimize_linear). Weights whose K or N is not a multiple of 16 are zero-padded here
(scaled_mm's rule; per-channel scales padded with ones); the op cuts the output back to N.

Before (after fuse_gemms, fuse_add_rmsnorm, fuse_silu_mul):
    %f = auto_deploy.triton_fused_add_rmsnorm(%x, %res, %ln_w, 1e-05, 0.0)
    %n = getitem(%f, 0)   %h = getitem(%f, 1)
    %qkv = auto_deploy.torch_quant_fp8_linear(%n, %w, None, %in_scale, %w_scale)
    %a = auto_deploy.triton_silu_and_mul(%gu)   %d = auto_deploy.torch_quant_fp8_linear(%a, %w2, None, ...)
After:
    %g = auto_deploy.triton_quant_fp8_add_rmsnorm_linear(%x, %res, %ln_w, 1e-05, 0.0, %w, None, %in_scale,
                                                         %w_scale, 6144, False, False)
    %qkv = getitem(%g, 0)   %h = getitem(%g, 1)
    %d = auto_deploy.triton_quant_fp8_silu_mul_linear(%gu, %w2, None, %in_scale2, %w_scale2, 4096, False, False)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import fx, nn

from autodeploy_cli.config.schema import BACKEND_CHOICES
from autodeploy_cli.graph.core import get_attr_value
from autodeploy_cli.ops import load_ops
from autodeploy_cli.ops.backends import quant_op, resolve
from autodeploy_cli.ops.quant import FP8
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.pipeline.registry import register
from transforms.gather_logits_before_lm_head import find_lm_head
from transforms.optimize_linear import _NORMS, _SILU_MULS, _name, _norm_args, _only_user, _replace, fuse_add_norm

PAD = 16  # torch._scaled_mm wants K and N in multiples of 16


@dataclass
class FuseFp8LinearOptions(TransformOptions):
    backend: str = "auto"  # auto (triton on CUDA, torch elsewhere) | torch (reference ops stay) | triton
    fuse_norm: bool = True  # RMSNorm (and residual add) into the FP8 linear that reads it
    fuse_silu_mul: bool = True  # SiLU-and-mul into the FP8 down projection
    fast_accum: bool = False  # scaled_mm's fast (reduced-precision) FP8 accumulation; benchmarks/fp8_bench.py
    # the one-token GEMV quantizes its activation exactly like the reference op (and scaled_mm) do; off: it reads the
    # activation in its own dtype, one pass (faster, and closer to the unquantized layer)
    gemv_act_quant: bool = False
    choices: ClassVar[dict] = {"backend": BACKEND_CHOICES["quant"]}


def _pad_weight(gm: fx.GraphModule, w: fx.Node, scale: fx.Node) -> None:
    """Zero-pad the FP8 weight [N, K] to multiples of 16 (per-channel scale padded with ones), in place."""
    weight = get_attr_value(gm, w.target)
    n, k = weight.shape
    n_pad, k_pad = -(-n // PAD) * PAD, -(-k // PAD) * PAD
    if (n_pad, k_pad) == (n, k):
        return
    padded = torch.zeros(n_pad, k_pad, dtype=torch.uint8, device=weight.device)
    padded[:n, :k] = weight.view(torch.uint8)
    owner, _, leaf = str(w.target).rpartition(".")
    setattr(gm.get_submodule(owner) if owner else gm, leaf, nn.Parameter(padded.view(FP8), requires_grad=False))
    s = get_attr_value(gm, scale.target)
    if s.numel() > 1:
        owner, _, leaf = str(scale.target).rpartition(".")
        grown = torch.ones(n_pad, dtype=s.dtype, device=s.device)
        grown[:n] = s
        (gm.get_submodule(owner) if owner else gm).register_buffer(leaf, grown)


@register("fuse_fp8_linear")
class FuseFp8Linear(BaseTransform):
    options_cls = FuseFp8LinearOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        load_ops()
        backend = resolve("quant", self.options.backend, ctx.device.type)
        canon = torch.ops.auto_deploy.torch_quant_fp8_linear.default
        block = torch.ops.auto_deploy.torch_quant_fp8_block_linear.default
        nodes = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in (canon, block)]
        if not nodes:
            return TransformInfo.untouched("no FP8 linear layers")
        if backend == "torch":
            return TransformInfo.untouched("backend torch: the reference ops stay")
        head, counts = find_lm_head(gm), {"silu_mul": 0, "norm": 0, "add_norm": 0, "plain": 0, "block": 0}
        for node in nodes:
            if node.target == block:
                node.target = quant_op(backend, "fp8_block_linear")
                counts["block"] += 1
                continue
            counts[self._swap(gm, node, node is head, backend)] += 1
        note = f"backend {backend}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
        return TransformInfo(num_matches=len(nodes), is_clean=False, has_valid_shapes=True, note=note)

    def _swap(self, gm: fx.GraphModule, lin: fx.Node, is_head: bool, backend: str) -> str:
        graph, opts = gm.graph, self.options
        x, w, bias, in_scale, w_scale = lin.args
        n_out = int(get_attr_value(gm, w.target).shape[0])
        _pad_weight(gm, w, w_scale)
        rest, extra = (w, bias, in_scale, w_scale), (n_out, opts.fast_accum, opts.gemv_act_quant)
        if opts.fuse_silu_mul and isinstance(x, fx.Node) and _name(x) in _SILU_MULS and _only_user(x) is lin:
            _replace(graph, lin, quant_op(backend, "fp8_silu_mul_linear"), (x.args[0], *rest, *extra))
            graph.erase_node(x)
            return "silu_mul"
        if opts.fuse_norm and not is_head and isinstance(x, fx.Node):
            if _name(x) in _NORMS and _only_user(x) is lin:
                eps, off = _norm_args(x)
                _replace(graph, lin, quant_op(backend, "fp8_rmsnorm_linear"),
                         (x.args[0], x.args[1], eps, off, *rest, *extra))
                graph.erase_node(x)
                return "norm"
            if fuse_add_norm(graph, lin, x, quant_op(backend, "fp8_add_rmsnorm_linear"), extra):
                return "add_norm"
        _replace(graph, lin, quant_op(backend, "fp8_linear"), (x, *rest, *extra))
        return "plain"
