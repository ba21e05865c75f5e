"""export_to_gm: capture the meta-device model with torch.export into a flat GraphModule.

Before: nn.Module (e.g. LlamaForCausalLM on meta). After: GraphModule forward(input_ids, position_ids) -> logits,
parameters kept under their HF names (get_attr model.layers.0.self_attn.q_proj.weight), batch/seq dims symbolic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

from torch import nn

from autodeploy_cli.export.capture import export_to_graph_module
from autodeploy_cli.export.patches import build_patches
from autodeploy_cli.graph.positions import check_position_tables
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.pipeline.registry import register


@dataclass
class ExportOptions(TransformOptions):
    # export patch name -> on/off; registered patches not listed here are on
    patches: Dict[str, bool] = field(default_factory=dict)


@register("export_to_gm")
class ExportToGM(BaseTransform):
    options_cls = ExportOptions

    def apply(self, gm: nn.Module, ctx: PassContext) -> TransformInfo:
        patches = build_patches(dict(self.options.patches), gm)
        ctx.facts.export_patches = [name for name, _ in patches]
        cfg = ctx.config
        ctx.model = export_to_graph_module(gm, cfg.max_batch_size, cfg.max_seq_len, [p for _, p in patches])
        check_position_tables(ctx.model, cfg.max_seq_len)
        return TransformInfo(num_matches=1, is_clean=True, has_valid_shapes=True,
                             note=f"patches: {', '.join(ctx.facts.export_patches) or 'none'}")
