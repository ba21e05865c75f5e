"""require_cached_forms: refuse, at build time, a graph whose decode would be wrong.

After the cache_init transforms, every op that mixes tokens must be a cached form (it reads the batch metadata and a
KV cache or state slot). Anything else (`autodeploy_cli.graph.token_mixers`) would mix the sequences of a batch and
forget a sequence's history between steps: `ad run` would exit 0 with tokens that leave HF's after the first one.
This transform checks the graph and changes nothing; it raises one paragraph per kind of construct found: what it
is, in which layers (module path and node), and which option or transform would be needed.

Before / after: the same graph, e.g. (LFM2, a short convolution between attention layers)
    %conv = aten.convolution(%x, %w, None, [1], [2], [1], False, [0], 64)        # [b, 64, s + 2]: not cached
-> ADError: "ad cannot deploy this model correctly: a convolution sliding over the tokens ... in layer 0
   (model.layers.0.conv.conv, node convolution) ... It needs a canonical causal-conv op with a cached form ..."
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx

from autodeploy_cli.errors import ADError
from autodeploy_cli.graph.token_mixers import Mixer, find_uncached_mixers
from autodeploy_cli.pipeline.interface import BaseTransform, PassContext, TransformInfo, TransformOptions
from autodeploy_cli.pipeline.registry import register


@dataclass
class RequireCachedFormsOptions(TransformOptions):
    requires_shape_prop: bool = True  # reads which dims are the token dim (symbolic sizes)


def _why_not_matched(ctx: PassContext, layers: list) -> str:
    misses = [m for m in ctx.misses.get("attention", []) if m.get("layer") in layers] or \
        ctx.misses.get("attention", [])
    return f" Not matched because: {misses[0]['reason']} (at {misses[0]['where'] or misses[0]['node']})." \
        if misses else ""


def refusal(mixers: list[Mixer], ctx: PassContext) -> str:
    """One paragraph per kind of construct (the first three places of each named)."""
    parts = []
    for kind in dict.fromkeys(m.kind for m in mixers):
        group = [m for m in mixers if m.kind == kind]
        layers = sorted({m.layer for m in group if m.layer is not None})
        shown = ", ".join(f"{m.where} (node {m.node.name})" for m in group[:3]) + (" ..." if len(group) > 3 else "")
        where = f"layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers))}" if layers else "the model"
        text = (f"ad cannot deploy this model correctly: {group[0].detail}, in {where}: {shown}. With a KV cache "
                "the runtime feeds each step only the new tokens of all running sequences, so this would mix the "
                "sequences of a batch and lose each one's history: the generated tokens would differ from the "
                f"model's after the first. It needs {group[0].needs}.")
        if kind == "scores":
            text += _why_not_matched(ctx, layers)
        parts.append(text)
    return " ".join(parts) + (" (`transforms.require_cached_forms.enabled=false` skips this check, for inspecting "
                              "the graph only.)")


@register("require_cached_forms")
class RequireCachedForms(BaseTransform):
    options_cls = RequireCachedFormsOptions

    def apply(self, gm: fx.GraphModule, ctx: PassContext) -> TransformInfo:
        caches = set()
        if ctx.cache is not None:
            caches = set(ctx.cache.cache_specs) | set(ctx.cache.state_specs)
        mixers = find_uncached_mixers(gm, caches)
        if mixers:
            raise ADError(refusal(mixers, ctx))
        return TransformInfo.untouched("every token mixer has a cached form")
