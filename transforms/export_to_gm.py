"""export_to_gm: capture the meta-device model with torch.export into a flat GraphModule.

Before: nn.Module (e.g. LlamaForCausalLM on meta). After: GraphModule forward(input_ids, position_ids) -> logits,
parameters kept under their HF names (get_attr model.layers.0.self_attn.q_proj.weight), batch/seq dims symbolic.

The graph is cached on disk (`autodeploy_cli.export.cache`), keyed by everything that determines it: a second
build of the same model and settings loads it instead of exporting (the build report's `export_cache` says which).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, Optional

from torch import fx, nn

from autodeploy_cli.export.capture import export_to_graph_module
from autodeploy_cli.export.patches import build_patches, check_toggles
from autodeploy_cli.graph.positions import check_position_tables
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.pipeline.registry import register


@dataclass
class ExportOptions(TransformOptions):
    # export patch name -> on/off; registered patches not listed here are on
    patches: Dict[str, bool] = field(default_factory=dict)
    # reuse the exported graph from the on-disk cache when model, config, patches and versions are the same
    cache: bool = True
    # cache folder; None: $AD_CACHE_DIR, else ~/.cache/autodeploy
    cache_dir: Optional[str] = None


def _export(gm: nn.Module, toggles: dict, ctx: PassContext) -> tuple[fx.GraphModule, list[str]]:
    patches = build_patches(toggles, gm)
    cfg = ctx.config
    out = export_to_graph_module(gm, cfg.max_batch_size, cfg.max_seq_len, [p for _, p in patches])
    return out, [name for name, _ in patches]


@register("export_to_gm")
class ExportToGM(BaseTransform):
    options_cls = ExportOptions

    def apply(self, gm: nn.Module, ctx: PassContext) -> TransformInfo:
        from autodeploy_cli.export.cache import ExportCache, cache_root, export_key

        toggles = dict(self.options.patches)
        check_toggles(toggles)
        cfg = ctx.config
        t0 = time.perf_counter()
        status: dict = {"status": "off"}
        hit = None
        if self.options.cache:
            store = ExportCache(cache_root(self.options.cache_dir))
            key = export_key(gm, cfg.max_batch_size, cfg.max_seq_len, toggles)
            live = {**dict(gm.named_parameters(remove_duplicate=False)),
                    **dict(gm.named_buffers(remove_duplicate=False))}
            hit = store.load(key, live)
            status = {"status": "hit" if hit else "miss", "path": str(store.path(key))}
        if hit is not None:
            ctx.model, facts = hit[0], hit[1]
            ctx.facts.export_patches = list(facts.get("patches", []))
        else:
            ctx.model, ctx.facts.export_patches = _export(gm, toggles, ctx)
            if self.options.cache:
                t1 = time.perf_counter()
                why_not = store.save(key, ctx.model, {"patches": ctx.facts.export_patches})
                status.update(save_s=round(time.perf_counter() - t1, 3), **({"note": why_not} if why_not else {}))
        status["time_s"] = round(time.perf_counter() - t0, 3)
        ctx.facts.export_cache = status
        check_position_tables(ctx.model, cfg.max_seq_len)
        note = f"patches: {', '.join(ctx.facts.export_patches) or 'none'}; cache {status['status']}"
        return TransformInfo(num_matches=1, is_clean=True, has_valid_shapes=True, note=note)
