"""optimize_rope: each layer's RoPE on q and k runs as one Triton launch reading the cos/sin rows that the graph
computes once per forward (shared by all layers).

Before:  %r = auto_deploy.torch_rope_with_explicit_cos_sin(%q, %k, %cos, %sin, 2)     # q/k [b, s, n, d]
After:   %r = auto_deploy.triton_rope_with_explicit_cos_sin(%q, %k, %cos, %sin, 2)
The same for DeepSeek's interleaved RoPE (the MLA models' q_pe / k_pe): torch_rope_with_qk_interleaving ->
triton_rope_with_qk_interleaving. Only the bsnd layout (unsqueeze_dim 2) is rewritten; with backend torch (CPU
default) nothing changes.
"""

from __future__ import annotations

from torch import fx

from autodeploy_cli.pipeline.interface import PassContext, TransformInfo
from autodeploy_cli.pipeline.op_swap import OpSwapTransform
from autodeploy_cli.pipeline.registry import register


def _bsnd(node: fx.Node) -> bool:
    unsqueeze_dim = node.args[4] if len(node.args) > 4 else node.kwargs.get("unsqueeze_dim", 1)
    return unsqueeze_dim == 2


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
        second = _InterleavedRope(self.options).apply(gm, ctx)
        if not second.num_matches:
            return first
        if not first.num_matches:
            return second
        return TransformInfo(num_matches=first.num_matches + second.num_matches, is_clean=False,
                             has_valid_shapes=True, note=first.note)
