"""load_weights: materialise real weights into the graph (checkpoint, or seeded random init).

Before: get_attr model.layers.0.mlp.up_proj.weight on meta. After: the same attribute holds the real tensor on the
target device, and tensors the graph creates (arange(..., device=meta), .to(meta)) are created on that device
too. Tensors are shared with the loaded HF model, never copied, so peak memory stays one model.
"""

from __future__ import annotations

from torch import fx

from autodeploy_cli.pipeline.interface import BaseTransform, TransformContext, TransformInfo
from autodeploy_cli.pipeline.registry import register
from autodeploy_cli.weights import assign_weights, retarget_device_kwargs, source_tensors


@register("load_weights")
class LoadWeights(BaseTransform):
    def apply(self, gm: fx.GraphModule, ctx: TransformContext) -> TransformInfo:
        source = ctx.state.pop("materialized_model", None) or ctx.factory.materialize(ctx.device)
        tensors = source_tensors(source)
        count = assign_weights(gm, tensors, ctx.state.get("weight_hooks"))
        retarget_device_kwargs(gm, ctx.device)
        kind = "random init (seeded)" if ctx.config.skip_loading_weights else "checkpoint"
        return TransformInfo(num_matches=count, is_clean=True, has_valid_shapes=True,
                             note=f"{count} tensors from {kind} on {ctx.device}")
