"""Canonical-op coverage: how many of each block the model config implies vs how many the graph holds.

A runner hook (`CoverageHook`) takes a census of the graph after every pattern_matcher transform, so the report
reflects the canonical form even after later stages swap ops for cached/fused kernels. Each row of the
report: {kind, found, expected, hint, detail}; the hint names the layers where a block was expected but not
matched, with the reason the matcher gave and the node chain it saw there ("why didn't it match").
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional

from torch import fx

from autodeploy_cli.graph.core import op_name

KINDS = ("attention", "rope", "rmsnorm", "moe")
CANONICAL = {
    "attention": ("auto_deploy.torch_attention", "auto_deploy.torch_mla"),
    "rope": ("auto_deploy.torch_rope_with_explicit_cos_sin", "auto_deploy.torch_rope_with_qk_interleaving",
             "auto_deploy.torch_rope_with_complex_freqs"),
    "rmsnorm": ("auto_deploy.torch_rmsnorm",),
    "moe": ("auto_deploy.torch_moe", "auto_deploy.torch_moe_stacked"),
}
# source ops that should be gone once every block of a kind is canonical
SOURCES = {
    "attention": ("aten.scaled_dot_product_attention", "aten.softmax.int", "aten._softmax",
                  "auto_deploy.torch_attention_repeat_kv"),
    "rope": ("aten.view_as_complex", "aten.neg"),
    "rmsnorm": ("aten.rsqrt",),
    "moe": (),  # the router (softmax, top-k) stays outside torch_moe; unmatched routers are reported as misses
}
QK_NORM_TYPES = {"qwen3", "qwen3_moe", "gemma3", "gemma3_text", "olmo2", "olmoe", "qwen3_next", "exaone4"}
NOPE_GLOBAL_TYPES = {"exaone4", "cohere2"}  # with a sliding window, only the sliding layers apply RoPE
SANDWICH_NORM_TYPES = {"gemma2", "gemma3", "gemma3_text"}  # pre/post feed-forward norms besides the usual two
L2_QK_NORM_TYPES = {"llama4_text"}  # use_qk_norm is a weightless L2 norm there (RoPE layers only), not an RMSNorm
LAYERNORM_TYPES = {"phimoe"}  # rms_norm_eps in the config, nn.LayerNorm in the model
ONE_BLOCK_TYPES = {"mamba2", "nemotron_h"}  # a layer is one mixer or one MLP behind one RMSNorm (Mamba2's norm eps
# is layer_norm_epsilon); the mixers' gated norms are a separate op


def _live(gm: fx.GraphModule) -> set:
    """Nodes the output depends on (dead leftovers awaiting cleanup are not reported)."""
    from autodeploy_cli.graph.match import ancestors

    out = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    return set(ancestors(out))


def _is_source(kind: str, node: fx.Node) -> bool:
    name = op_name(node)
    if name not in SOURCES[kind]:
        return False
    if name == "aten.neg":  # only the rotate-half negation: neg(x[..., d/2:])
        src = node.args[0]
        return isinstance(src, fx.Node) and op_name(src) == "aten.slice.Tensor"
    if name in ("aten.softmax.int", "aten._softmax"):  # attention probabilities are 4-D; a router's are 2-D
        val = node.meta.get("val")
        return val is not None and val.dim() == 4
    return True


def census(gm: fx.GraphModule) -> dict[str, dict]:
    """Per kind: canonical ops found (total and per layer) and source ops left over (where, chain)."""
    from autodeploy_cli.graph.match import chain, layer_index, module_path

    live = _live(gm)
    result = {k: {"found": 0, "per_layer": Counter(), "leftovers": [], "ops": Counter()} for k in KINDS}
    for node in gm.graph.nodes:
        if node.op != "call_function" or node not in live:
            continue
        name = op_name(node)
        for kind in KINDS:
            if name in CANONICAL[kind]:
                result[kind]["found"] += 1
                result[kind]["per_layer"][layer_index(node)] += 1
                result[kind]["ops"][name] += 1
            elif _is_source(kind, node):
                result[kind]["leftovers"].append(
                    {"where": module_path(node), "node": node.name, "layer": layer_index(node), "chain": chain(node)})
    return result


class CoverageHook:
    """Runner hook: the census of the graph after the last pattern_matcher transform that ran."""

    def __init__(self) -> None:
        self.census: Optional[dict[str, dict]] = None
        self.taken_after: str = ""

    def __call__(self, record: Any, ctx: Any) -> None:
        if record.stage == "pattern_matcher" and isinstance(ctx.model, fx.GraphModule):
            # a matcher that matched nothing left the graph as it was: the last census still holds
            if self.census is None or record.num_matches or record.error:
                self.census = census(ctx.model)
            self.taken_after = record.name


def _text_config(cfg: Any) -> Any:
    getter = getattr(cfg, "get_text_config", None)
    return getter() if callable(getter) else cfg


def _rope_layers(cfg: Any, model_type: str, attn_layers: list[int], layer_types: list, n_layers: int) -> dict:
    has_rope = any(getattr(cfg, a, None) is not None for a in ("rope_theta", "rope_parameters", "rope_scaling"))
    has_rope = has_rope and not getattr(cfg, "alibi", False)  # Falcon with alibi=True keeps rope_theta unused
    if not has_rope or getattr(cfg, "position_embedding_type", None) == "nope":  # Granite-4.0-H: NoPE
        return {}
    # SmolLM3-style `no_rope_layers`: 1 = the layer applies RoPE, 0 = it does not (NoPE)
    uses_rope = list(getattr(cfg, "no_rope_layers", None) or [1] * n_layers)
    if model_type in NOPE_GLOBAL_TYPES and getattr(cfg, "sliding_window", None) and layer_types:
        uses_rope = [int(t == "sliding_attention") for t in layer_types]  # global layers carry no RoPE
    return {i: 1 for i in attn_layers if i >= len(uses_rope) or uses_rope[i]}


def _rmsnorm_layers(cfg: Any, model_type: str, attn_layers: list[int], n_layers: int) -> dict:
    if model_type in ONE_BLOCK_TYPES:
        return {**{i: 1 for i in range(n_layers)}, None: 1}
    if getattr(cfg, "rms_norm_eps", None) is None or model_type in LAYERNORM_TYPES:
        return {}
    qk_norm = model_type in QK_NORM_TYPES or (getattr(cfg, "use_qk_norm", False) and model_type not in L2_QK_NORM_TYPES)
    qk = 2 * bool(qk_norm)  # attention layers only
    per = 2 + 2 * (model_type in SANDWICH_NORM_TYPES)
    if getattr(cfg, "kv_lora_rank", None):  # MLA: the latent's norm, and the query latent's when q is low-rank
        per += 1 + (getattr(cfg, "q_lora_rank", None) is not None)
    return {**{i: per + qk * (i in attn_layers) for i in range(n_layers)}, None: 1}


def _moe_layers(cfg: Any, layer_types: list, n_layers: int) -> dict:
    n_experts = getattr(cfg, "num_local_experts", None) or getattr(cfg, "num_experts", None) or 0
    if any(t in ("mlp", "moe") for t in layer_types):  # hybrid block lists (Nemotron-H: mamba / attention / mlp / moe)
        return {i: 1 for i, t in enumerate(layer_types) if t == "moe"}
    if not n_experts:
        return {}
    moe_layers = getattr(cfg, "moe_layers", None)  # Llama-4 lists its MoE layers
    if isinstance(moe_layers, (list, tuple)):
        return {int(i): 1 for i in moe_layers if int(i) < n_layers}
    step = int(getattr(cfg, "decoder_sparse_step", 1) or 1)
    dense = set(getattr(cfg, "mlp_only_layers", None) or [])
    first = int(getattr(cfg, "first_k_dense_replace", 0) or 0)
    return {i: 1 for i in range(n_layers) if i not in dense and i >= first and (i + 1) % step == 0}


def expected_per_layer(hf_config: Any) -> dict[str, dict[Optional[int], int]]:
    """Per kind: {layer index (None = outside the layers): expected count}, from the HF config alone."""
    cfg = _text_config(hf_config)
    n_layers = int(getattr(cfg, "num_hidden_layers", 0) or 0)
    model_type = str(getattr(cfg, "model_type", ""))
    layer_types = list(getattr(cfg, "layer_types", None) or [])
    attn_layers = [i for i in range(n_layers)
                   if not layer_types or ("attention" in str(layer_types[i]) and "linear" not in str(layer_types[i]))]
    return {"attention": {i: 1 for i in attn_layers},
            "rope": _rope_layers(cfg, model_type, attn_layers, layer_types, n_layers),
            "rmsnorm": _rmsnorm_layers(cfg, model_type, attn_layers, n_layers),
            "moe": _moe_layers(cfg, layer_types, n_layers)}


def _layer_name(layer: Optional[int]) -> str:
    return "outside the layers" if layer is None else f"layer {layer}"


def _hint(kind: str, expected: dict, found: Counter, leftovers: list, misses: list) -> str:
    short = [(layer, n, found.get(layer, 0)) for layer, n in expected.items() if found.get(layer, 0) < n]
    if not short:
        return "; ".join(f"{x['where'] or x['node']}: source pattern left: {x['chain']}" for x in leftovers[:3])
    shown = ", ".join(f"{_layer_name(layer)} ({got}/{n})" for layer, n, got in short[:8])
    parts = [f"not matched in {shown}{' ...' if len(short) > 8 else ''}"]
    short_layers = {layer for layer, _, _ in short}
    why = [m for m in misses if m.get("layer") in short_layers] or misses
    for m in why[:3]:
        parts.append(f"{m['where'] or m['node']}: {m['reason']} (chain seen: {m['chain']})")
    if not why:
        seen = [x for x in leftovers if x["layer"] in short_layers] or leftovers
        parts += [f"{x['where'] or x['node']}: source pattern left: {x['chain']}" for x in seen[:3]]
    return "; ".join(parts)


def coverage_rows(gm: fx.GraphModule | None, hf_config: Any, canonical: Optional[dict], misses: dict,
                  moe_impl: Optional[str] = None) -> list[dict]:
    """Rows {kind, found, expected, hint, detail} for the build report (kinds the model has or the graph holds).

    canonical: the census after the pattern matchers (CoverageHook), else the final graph's; misses: ctx.misses."""
    data = canonical or (census(gm) if gm is not None else None)
    if data is None or hf_config is None:
        return []
    expected = expected_per_layer(hf_config)
    rows = []
    for kind in KINDS:
        exp_total = sum(expected[kind].values())
        got = data[kind]
        if exp_total == 0 and got["found"] == 0:
            continue
        row = {"kind": kind, "found": got["found"], "expected": exp_total,
               "hint": _hint(kind, expected[kind], got["per_layer"], got["leftovers"], misses.get(kind, [])),
               "detail": ""}
        if kind == "attention" and got.get("ops", {}).get("auto_deploy.torch_mla"):
            row["detail"] = (f"multi-head latent attention: torch_mla x{got['ops']['auto_deploy.torch_mla']} "
                             "(compressed KV cache)")
        if kind == "moe":
            used = moe_impl
            asked = getattr(_text_config(hf_config), "_experts_implementation", None)
            if used or asked:
                row["detail"] = f"experts implementation: {used or 'not matched'} (HF config: {asked or 'default'})"
        rows.append(row)
    return rows
