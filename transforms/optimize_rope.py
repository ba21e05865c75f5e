"""optimize_rope: each layer's RoPE on q and k runs as one Triton launch reading the cos/sin rows that the graph
computes once per forward (shared by all layers).

Before:  %cos16 = aten.to.dtype(%cos, torch.bfloat16); %sin16 = aten.to.dtype(%sin, torch.bfloat16)
         %r = auto_deploy.torch_rope_with_explicit_cos_sin(%q, %k, %cos16, %sin16, 2)     # q/k [b, s, n, d]
After:   %r = auto_deploy.triton_rope_with_explicit_cos_sin(%q, %k, %cos, %sin, 2)       # cos/sin fp32 [b, s, d]
The fused kernel rotates in fp32 and rounds each output once, so it reads cos/sin from before HF's cast to the
activation dtype: in bf16 that is more accurate than the eager RoPE (which rounds cos/sin and every product), where
the rounded tables made it worse (issue 22).
The same for DeepSeek's interleaved RoPE (the MLA models' q_pe / k_pe): torch_rope_with_qk_interleaving ->
triton_rope_with_qk_interleaving (its tables are left as they are). Only the bsnd layout (unsqueeze_dim 2) is
rewritten; with backend torch (CPU default) nothing changes: the reference op is HF's RoPE, rounding included.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import fx

from autodeploy_cli.graph.match import dtype, skip
from autodeploy_cli.ops.backends import fused_op, resolve
from autodeploy_cli.pipeline.interface import PassContext, TransformInfo
from autodeploy_cli.pipeline.op_swap import OpSwapTransform
from autodeploy_cli.pipeline.registry import register

_NARROW = (torch.bfloat16, torch.float16)


def _bsnd(node: fx.Node) -> bool:
    unsqueeze_dim = node.args[4] if len(node.args) > 4 else node.kwargs.get("unsqueeze_dim", 1)
    return unsqueeze_dim == 2


def fp32_table(node: Any) -> Any:
    """The fp32 value a bf16/fp16 cos or sin table was cast from (HF's `cos.to(x.dtype)`), else the table itself."""
    src = skip(node)
    if isinstance(src, fx.Node) and dtype(src) == torch.float32 and dtype(node) in _NARROW:
        return src
    return node


def widen_tables(gm: fx.GraphModule, op: Any) -> int:
    """Point every `op` node's cos/sin (args 2, 3) at their fp32 sources; returns how many nodes changed."""
    changed = 0
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target != op:
            continue
        tables = tuple(fp32_table(a) for a in n.args[2:4])
        if tables != tuple(n.args[2:4]):
            n.args = (*n.args[:2], *tables, *n.args[4:])  # the casts left without users go with dead-code removal
            changed += 1
    return changed


class _InterleavedRope(OpSwapTransform):
    """The interleaved (DeepSeek) form; run by optimize_rope, not registered on its own."""

    source_op = "torch_rope_with_qk_interleaving"
    fused_key = "rope_with_qk_interleaving"

    def accepts(self, node: fx.Node) -> bool:
        return _bsnd(node)


@register("optimize_rope")
class OptimizeRope(OpSwapTransform):
    source_op = "torch_rope_with_explicit_cos_sin"
    fused_key = "rope_with_explicit_cos_sin"

    def accepts(self, node: fx.Node) -> bool:
        return _bsnd(node)

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        first = super().apply(gm, ctx)
        if first.num_matches:
            op = fused_op(resolve("fused", self.options.backend, ctx.device.type), self.fused_key)
            if widen_tables(gm, op):
                first = dataclasses.replace(first, note=f"{first.note}, fp32 cos/sin")
        second = _InterleavedRope(self.options).apply(gm, ctx)
        if not second.num_matches:
            return first
        if not first.num_matches:
            return second
        return TransformInfo(num_matches=first.num_matches + second.num_matches, is_clean=False,
                             has_valid_shapes=True, note=first.note)
