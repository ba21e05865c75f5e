"""Helpers for the pattern-matcher tests: tiny HF exports (meta weights), running transforms through the real
runner, and comparing the transformed graph's logits with the HF model holding the same weights."""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import fx, nn

from autodeploy_cli.export.capture import _flatten_codegen, export_to_graph_module
from autodeploy_cli.export.patches import build_patches
from autodeploy_cli.graph.core import count_ops, is_op
from autodeploy_cli.pipeline.interface import PassContext
from autodeploy_cli.pipeline.registry import build_options
from autodeploy_cli.pipeline.runner import PipelineRunner, TransformRecord
from autodeploy_cli.graph.core import retarget_device_kwargs
from autodeploy_cli.models.hf_experts import pick_runnable_experts
from autodeploy_cli.models.weights import assign_weights, source_tensors
from tests.tiny_models import tiny_hf_config

CLEANUPS = ("cleanup_noop_slice", "cleanup_noop_add", "cleanup_input_constraints")
PATTERN_STAGE = ("match_moe_pattern", "match_repeat_kv", "match_eager_attention", "match_grouped_attention",
                 "match_sdpa_to_torch_attention", "match_attention_layout", "match_rope_pattern", "match_rope_layout",
                 "eliminate_redundant_transposes", "match_rmsnorm_pattern")
PINNED = ["device=cpu", "dtype=float32"]  # config overrides: the matrix is defined on CPU in float32 (GPU hosts too)
SHAPES = ((2, 7), (3, 5), (2, 1))  # two prefill shapes and a batch of one-token sequences


@dataclass
class Tiny:
    """An exported tiny HF model: the graph (meta weights) and the HF reference (real weights, eager attention)."""

    gm: fx.GraphModule
    ref: nn.Module
    config: Any


@functools.lru_cache(maxsize=None)
def _export(family: str, attn: str, patch: bool, experts: str | None, moe_patch: bool = False,
            overrides: tuple = ()) -> Tiny:
    from transformers import AutoModelForCausalLM

    cfg = tiny_hf_config(family, **dict(overrides))
    if experts:
        cfg._experts_implementation = experts
    torch.manual_seed(0)
    ref_cfg = copy.deepcopy(cfg)
    ref_cfg._attn_implementation = "eager"  # the oracle is HF eager
    ref = AutoModelForCausalLM.from_config(ref_cfg, dtype=torch.float32).eval()
    pick_runnable_experts(ref, experts)  # grouped_mm cannot run dims that are not multiples of 4 (float32)
    cfg._attn_implementation = attn
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    patches = build_patches({"hf_attention_to_torch_attention": patch, "hf_experts_to_torch_moe": moe_patch}, model)
    gm = export_to_graph_module(model, 8, 64, [p for _, p in patches])
    run_transforms(gm, CLEANUPS)
    return Tiny(gm, ref, cfg)


def export_tiny(family: str, attn: str = "eager", patch: bool = False, experts: str | None = None,
                moe_patch: bool = False, **overrides: Any) -> Tiny:
    """A fresh copy of the cleaned-up export of a tiny family (cached per process; tests may mutate the copy).
    patch / moe_patch: the attention / experts export patches (off: the matchers see HF's own graph);
    overrides: HF config values over the tiny family's."""
    t = _export(family, attn, patch, experts, moe_patch, tuple(sorted(overrides.items())))
    return Tiny(copy.deepcopy(t.gm), t.ref, t.config)


def run_transforms(gm: fx.GraphModule, names: Iterable[str], ctx: PassContext | None = None,
                   options: dict | None = None) -> tuple[list[TransformRecord], PassContext]:
    """Run registered transforms on `gm` (in place) through the pipeline runner (cleanup + shape propagation);
    `ctx`: continue with an earlier run's context (its weight hooks and misses)."""
    options = options or {}
    entries = [(n, build_options(n, {"stage": "pattern_matcher", **options.get(n, {})})) for n in names]
    if ctx is None:
        ctx = PassContext(config=None, factory=None, device=torch.device("cpu"))
    ctx.model = gm
    records = PipelineRunner(entries).run(ctx)
    return records, ctx


def matches(records: list[TransformRecord]) -> dict[str, int]:
    return {r.name: r.num_matches for r in records}


def with_weights(gm: fx.GraphModule, ref: nn.Module, ctx: PassContext) -> fx.GraphModule:
    """A runnable copy of a meta-weight graph holding the reference model's tensors (ctx's weight hooks applied)."""
    gm = copy.deepcopy(gm)
    retarget_device_kwargs(gm, torch.device("cpu"))
    assign_weights(gm, source_tensors(ref), ctx.weight_hooks)
    return gm


def max_rel_err(gm: fx.GraphModule, ref: nn.Module, ctx: PassContext, shapes=SHAPES, seed: int = 0) -> float:
    """Largest max|out - ref| / max|ref| of the graph's logits vs the HF model's over `shapes`."""
    runnable = with_weights(gm, ref, ctx)
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b, s in shapes:
        ids = torch.randint(0, ref.config.vocab_size, (b, s), generator=gen)
        pos = torch.arange(s).unsqueeze(0).expand(b, s).contiguous()
        with torch.no_grad():
            expected = ref(input_ids=ids, position_ids=pos, use_cache=False).logits
            out = runnable(ids, pos)
        worst = max(worst, ((out - expected).abs().max() / expected.abs().max()).item())
    return worst


def export_toy(module: nn.Module, *args: torch.Tensor, dynamic: dict | None = None,
               cleanup: bool = True) -> fx.GraphModule:
    """torch.export a small module (real weights) into a flat GraphModule; `dynamic` = {arg index: {dim: name}};
    `cleanup` runs the post-export cleanups first (as the pipeline does before pattern matching)."""
    from torch.export import Dim

    dims: dict[str, Any] = {}
    shapes = []
    for i, _ in enumerate(args):
        spec = (dynamic or {}).get(i, {})
        shapes.append({d: dims.setdefault(name, Dim(name, min=1, max=64)) for d, name in spec.items()} or None)
    with torch.no_grad():
        ep = torch.export.export(module, args, dynamic_shapes=tuple(shapes), strict=False)
    gm = _flatten_codegen(ep.module())
    if cleanup:
        run_transforms(gm, CLEANUPS)
    return gm


def ops_in(gm: fx.GraphModule) -> list[str]:
    from autodeploy_cli.graph.core import op_name

    return [op_name(n) for n in gm.graph.nodes if n.op == "call_function"]


def count(gm: fx.GraphModule, op: Any) -> int:
    return count_ops(gm, op)


def nodes_of(gm: fx.GraphModule, op: Any) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if is_op(n, op)]


def repeat_kv_chains(gm: fx.GraphModule) -> int:
    """unsqueeze -> expand (5-D) chains HF's repeat_kv leaves in the graph."""
    aten = torch.ops.aten
    return sum(1 for n in gm.graph.nodes if is_op(n, aten.expand.default) and len(n.args[1]) == 5
               and is_op(n.args[0], aten.unsqueeze.default))
