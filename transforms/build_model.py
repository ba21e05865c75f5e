"""build_model: build the HF model on the meta device from its config (no weights, no memory)."""

from __future__ import annotations

from torch import nn

from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo
from autodeploy_cli.pipeline.registry import register


@register("build_model")
class BuildModel(BaseTransform):
    def apply(self, gm: nn.Module | None, ctx: PassContext) -> TransformInfo:
        ctx.model = ctx.factory.build_meta_model()
        # a quantized checkpoint's FP8 weights load dequantized unless a transform takes them as FP8
        ctx.weight_hooks.update(ctx.factory.dequantize_hooks())
        n_params = sum(p.numel() for p in ctx.model.parameters())
        ctx.facts.num_params = n_params
        return TransformInfo(num_matches=1, is_clean=True, has_valid_shapes=True,
                             note=f"{type(ctx.model).__name__}, {n_params / 1e6:.2f}M params")
