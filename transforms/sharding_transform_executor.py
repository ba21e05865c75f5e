"""sharding_transform_executor: apply detect_sharding's plan to the meta graph (this rank's part of the model).

Weights become meta tensors of this rank's shape and get a slicer (`ctx.weight_slicers`) that load_weights uses
to keep only this rank's part of each checkpoint tensor; literal sizes are rescaled; collectives are inserted:

Before (rank 0 of 2):
    %o = aten.linear(%attn, %o_proj_weight, %o_proj_bias)                      o_proj.weight [64, 64]
After:
    %o = aten.linear(%attn, %o_proj_weight)                                     o_proj.weight [64, 32]
    %r = auto_deploy.torch_dist_all_reduce(%o)
    %out = aten.add.Tensor(%r, %o_proj_bias)                                    (the bias once, after the sum)
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx

from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.pipeline.registry import register
from transforms._sharding.apply import apply_plan


@dataclass
class ShardingTransformExecutorOptions(TransformOptions):
    run_shape_prop: bool = True  # the new per-rank shapes reach every node (cache insertion reads head counts)


@register("sharding_transform_executor")
class ShardingTransformExecutor(BaseTransform):
    options_cls = ShardingTransformExecutorOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        plan = ctx.sharding_plan
        if plan is None:
            return TransformInfo.untouched("no sharding plan (world_size 1, or detect_sharding disabled)")
        if plan.rank != ctx.rank or plan.world_size != ctx.world_size:
            raise RuntimeError(f"the plan is for rank {plan.rank} of {plan.world_size}, this is rank {ctx.rank}")
        count = apply_plan(gm, plan, ctx.weight_slicers)
        ctx.sharding_plan = None  # applied once: a second run finds nothing to do
        coll = plan.collectives()
        return TransformInfo(num_matches=count, is_clean=False, has_valid_shapes=False,
                             note=f"{len(plan.splits)} weights split; {coll['all_reduce']} all-reduce, "
                                  f"{coll['all_gather']} all-gather inserted")
