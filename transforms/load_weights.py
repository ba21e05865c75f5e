"""load_weights: materialise real weights into the graph (checkpoint, or seeded random init).

Before: get_attr model.layers.0.mlp.up_proj.weight on meta. After: the same attribute holds the real tensor on the
target device, and tensors the graph creates (arange(..., device=meta), .to(meta)) are created on that device
too. Tensors are shared with the loaded HF model, never copied, so peak memory stays one model.
"""

from __future__ import annotations

from torch import fx

from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo
from autodeploy_cli.pipeline.registry import register
from autodeploy_cli.graph.core import retarget_device_kwargs
from autodeploy_cli.models.weights import assign_weights


@register("load_weights")
class LoadWeights(BaseTransform):
    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        # a quantized checkpoint is read tensor by tensor (FP8 + scales); else the HF model's tensors are shared
        tensors = ctx.factory.weight_tensors(ctx.device, ctx.reference_model)
        ctx.reference_model = None
        count = assign_weights(gm, tensors, ctx.weight_hooks)
        del tensors
        retarget_device_kwargs(gm, ctx.device)
        kind = "random init (seeded)" if ctx.config.skip_loading_weights else (
            "quantized checkpoint" if ctx.factory.checkpoint_quantized else "checkpoint")
        return TransformInfo(num_matches=count, is_clean=True, has_valid_shapes=True,
                             note=f"{count} tensors from {kind} on {ctx.device}")
