"""detect_sharding: decide, on the meta graph, how this rank splits every weight (world_size > 1); record the plan.

The graph does not change here: `sharding_transform_executor` applies the plan. Decisions (see
transforms/_sharding/planner.py for the sources and transforms/_sharding/regions.py for the proof):
  * attention / MLP blocks: column-split openers, row-split closer, one all-reduce per block (bias added once);
    head counts in views and fused-output slice bounds / split sizes rescaled; GQA with fewer KV heads than ranks
    keeps one KV head per rank group;
  * anything not provable: column split + all-gather ("gather"), never a wrong result;
  * MoE (`torch_moe`): experts spread over ranks (EP), or every expert split when there are fewer experts than ranks;
  * embedding vocabulary-parallel (masked lookup + all-reduce), lm_head column split with logits gathered.

Example (Llama block, rank 0 of 2):
    %q = aten.linear(%x, %q_proj_weight)    q_proj.weight [64, 64] -> colwise [32, 64] (rows 0:32)
    %o = aten.linear(%a, %o_proj_weight)    o_proj.weight [64, 64] -> rowwise [64, 32] + all_reduce after
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List

from torch import fx

from autodeploy_cli.errors import ADError, did_you_mean
from autodeploy_cli.models.tp_limits import check_world_size
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.pipeline.registry import register
from transforms._sharding.planner import Planner

TP_PLAN_VALUES = ("colwise", "rowwise", "gather", "mamba", "local_colwise", "local_rowwise", "sequence_parallel")
SOURCES = ("manual", "factory", "heuristic")
DIMS = ("tp", "ep", "bmm", "ssm")
ALLREDUCE_STRATEGIES = ("AUTO", "NCCL", "ONESHOT", "TWOSHOT", "MIN_LATENCY", "LOWPRECISION", "UB", "MNNVL",
                        "NCCL_SYMMETRIC", "SYMM_MEM")


@dataclass
class DetectShardingOptions(TransformOptions):
    requires_shape_prop: bool = True  # reads head counts, feature sizes and view shapes from the meta values
    # every linear column-split + all-gather (no column -> row blocks)
    simple_shard_only: bool = False
    # where splits come from, highest priority first: manual (manual_config.tp_plan), factory (the HF config's
    # base_model_tp_plan), heuristic (graph analysis)
    sharding_source: List[str] = field(default_factory=lambda: list(SOURCES))
    # a manual/factory plan may cover only some linears; the rest go to the heuristic (false: kept whole)
    support_partial_config: bool = True
    # heuristics to run: tp (blocks, vocabulary), ep (MoE experts); bmm / ssm are accepted (nothing to shard yet)
    sharding_dims: List[str] = field(default_factory=lambda: ["tp", "ep", "bmm"])
    # {head_dim: int, tp_plan: {pattern: colwise|rowwise|gather|mamba|local_colwise|local_rowwise|sequence_parallel}}
    manual_config: Dict[str, Any] = field(default_factory=dict)
    # linears no source splits are gathered instead of kept whole
    shard_all_unprocessed: bool = False
    # AutoDeploy's all-reduce algorithm choice; ad always uses torch.distributed (NCCL on GPUs, gloo on CPU)
    allreduce_strategy: str = "AUTO"
    dist_backend: str = "auto"  # AutoDeploy's torch vs trtllm collectives; ad always uses torch.distributed
    choices: ClassVar[dict] = {"allreduce_strategy": ALLREDUCE_STRATEGIES, "dist_backend": ("auto", "torch", "trtllm")}


def validate_options(opts: DetectShardingOptions) -> None:
    where = "transforms.detect_sharding"
    for key, values, allowed in (("sharding_source", opts.sharding_source, SOURCES),
                                 ("sharding_dims", opts.sharding_dims, DIMS)):
        for v in values:
            if v not in allowed:
                raise ADError(f"Invalid value `{v}` in `{where}.{key}`: choose from {', '.join(allowed)}."
                              f"{did_you_mean(str(v), allowed)}")
    manual = opts.manual_config or {}
    unknown = set(manual) - {"head_dim", "tp_plan"}
    if unknown:
        raise ADError(f"Unknown key(s) {', '.join(sorted(unknown))} in `{where}.manual_config`: it takes "
                      "`head_dim` and `tp_plan`.")
    plan = manual.get("tp_plan") or {}
    if not isinstance(plan, dict):
        raise ADError(f"`{where}.manual_config.tp_plan` must map module-name patterns to a sharding style.")
    for pattern, style in plan.items():
        if style not in TP_PLAN_VALUES:
            raise ADError(f"Invalid sharding style `{style}` for `{pattern}` in `{where}.manual_config.tp_plan`: "
                          f"choose one of {', '.join(TP_PLAN_VALUES)}.{did_you_mean(str(style), TP_PLAN_VALUES)}")


@register("detect_sharding")
class DetectSharding(BaseTransform):
    options_cls = DetectShardingOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        validate_options(self.options)
        if ctx.world_size < 2:
            return TransformInfo.untouched("world_size 1: nothing to shard")
        hf_config = ctx.factory.hf_config() if ctx.factory is not None else None
        if hf_config is not None:
            check_world_size(hf_config, ctx.world_size, f"`{ctx.config.model}`")
        plan = Planner(gm, ctx.rank, ctx.world_size, self.options, hf_config).run()
        if self.options.dist_backend == "trtllm":
            plan.notes.append("dist_backend trtllm: ad has torch.distributed collectives only; they are used")
        if self.options.allreduce_strategy not in ("AUTO", "NCCL"):
            plan.notes.append(f"allreduce_strategy {self.options.allreduce_strategy}: ad all-reduces with "
                              "torch.distributed (NCCL on GPUs, gloo on CPU)")
        ctx.sharding_plan = plan
        ctx.facts.sharding = plan.report()
        return TransformInfo(num_matches=plan.num_edits(), is_clean=True, has_valid_shapes=True, note=plan.summary())
