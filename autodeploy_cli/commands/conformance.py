"""`ad models --check`: build registry entries shrunk, through the whole default pipeline with `--verify`, on CPU.

Shrinking keeps what the transforms care about and cuts what only costs time:
kept    architecture (model_type), head_dim, the GQA ratio, RoPE type/theta/scaling, partial rotary, sliding window,
        soft-capping, multipliers, tied embeddings, MoE top-k and routing options, the kinds of layers (e.g. one
        sliding and one full-attention layer for Gemma 3, one RoPE and one NoPE layer for SmolLM3)
shrunk  2 decoder layers, KV heads -> min(KV heads, 2) (attention heads follow the ratio; multi-query: at most 8
        heads), hidden = heads x head_dim,
        MLP width 256, MoE expert width 64 and experts -> min(experts, max(2 x top-k, 4)), vocabulary 512
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from autodeploy_cli.errors import first_line

SHRUNK_VOCAB = 512
SHRUNK_MLP = 256
SHRUNK_EXPERT_MLP = 64
SHRUNK_SHARED_EXPERT_MLP = 128
MAX_MQA_HEADS = 8  # query heads kept with one KV head (multi-query Falcon-7B: 71 -> 8; GQA keeps its ratio)
# per-layer list attributes whose values tell layer kinds apart
PER_LAYER_LISTS = ("layer_types", "no_rope_layers", "attention_layers")  # attention_layers: GPT-Neo global/local


@dataclass
class CheckResult:
    name: str
    family: str
    status: str  # pass | fail | unsupported
    seconds: float = 0.0
    max_rel_err: Optional[float] = None
    error: str = ""
    canonical_ops: dict[str, int] = field(default_factory=dict)
    shrunk: str = ""


def _pick_layers(full: Any, n: int = 2) -> list[int]:
    """Indices of `n` layers (more for a hybrid with more kinds) covering as many distinct layer kinds as possible
    (first of each kind)."""
    lists = [getattr(full, a) for a in PER_LAYER_LISTS if isinstance(getattr(full, a, None), (list, tuple))]
    num = full.num_hidden_layers
    kinds = [tuple(lst[i] for lst in lists) for i in range(num)]
    n = max(n, len(set(kinds))) if any("linear_attention" in k for k in kinds) else n
    chosen: list[int] = []
    for i, kind in enumerate(kinds):
        if kind not in {kinds[j] for j in chosen}:
            chosen.append(i)
        if len(chosen) == n:
            break
    for i in range(num):
        if len(chosen) == n:
            break
        if i not in chosen:
            chosen.append(i)
    return sorted(chosen)


def shrink_kwargs(values: dict[str, Any]) -> dict[str, Any]:
    """`model_kwargs` that shrink a stored architecture for a CPU conformance build (see the module docstring)."""
    from autodeploy_cli.models.hf_arch import attention_dims, config_from_values

    full = config_from_values(values)
    if getattr(full, "num_attention_heads", None) is None:  # attention-free (Mamba2): width and depth only
        kw = {"num_hidden_layers": 2, "hidden_size": 256, "vocab_size": SHRUNK_VOCAB}
        _shrink_mixers(values, kw)
        return kw
    heads, kv, head_dim = attention_dims(full)
    new_kv = min(kv, 2)
    new_heads = new_kv * (min(heads, MAX_MQA_HEADS) if kv == 1 else heads // kv)
    kw: dict[str, Any] = {
        "num_hidden_layers": 2,
        "num_attention_heads": new_heads,
        "num_key_value_heads": new_kv,
        "head_dim": head_dim,
        "hidden_size": new_heads * head_dim,
        "intermediate_size": min(int(getattr(full, "intermediate_size", None) or SHRUNK_MLP), SHRUNK_MLP),
        "vocab_size": SHRUNK_VOCAB,
    }
    # older families' configs derive some of these (Falcon's head_dim is a read-only property; GPT-2 ignores the
    # names it does not use: its MLP is 4 x hidden); Falcon's new architecture names its KV heads num_kv_heads
    kw = {k: v for k, v in kw.items() if not isinstance(getattr(type(full), k, None), property)}
    if getattr(full, "model_type", "") == "falcon" and getattr(full, "new_decoder_architecture", False):
        kw["num_kv_heads"] = new_kv
    for key in ("num_local_experts", "num_experts", "n_routed_experts"):
        experts = values.get(key)
        if experts:
            groups = int(values.get("n_group") or 1)  # group-limited routing needs whole groups
            shrunk = min(int(experts), max(2 * int(values.get("num_experts_per_tok", 1)), 4))
            kw[key] = -(-shrunk // groups) * groups
    if values.get("moe_intermediate_size"):
        kw["moe_intermediate_size"] = SHRUNK_EXPERT_MLP
    if values.get("intermediate_size_mlp"):  # Llama-4's dense / shared-expert MLP width
        kw["intermediate_size_mlp"] = SHRUNK_MLP
    if values.get("shared_expert_intermediate_size"):
        kw["shared_expert_intermediate_size"] = SHRUNK_SHARED_EXPERT_MLP
    if values.get("mlp_only_layers"):
        kw["mlp_only_layers"] = [i for i in values["mlp_only_layers"] if i < 2]
    picked = _pick_layers(full)
    for attr in PER_LAYER_LISTS:
        lst = getattr(full, attr, None)
        if isinstance(lst, (list, tuple)):
            kw[attr] = [lst[i] for i in picked]
    kw["num_hidden_layers"] = len(picked)
    if "num_layers" in values:  # GPT-Neo stores its depth as num_layers (num_hidden_layers is an alias of it)
        kw["num_layers"] = len(picked)
    _shrink_mixers(values, kw)
    if "attention_layers" in kw:  # GPT-Neo derives it from attention_types ([[kinds], repeats]) and checks the count
        kw["attention_types"] = [[kw.pop("attention_layers"), 1]]
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # keep special ids inside the small vocabulary
        value = getattr(full, key, None)
        remap = (lambda v: v if v < SHRUNK_VOCAB else SHRUNK_VOCAB - 1 - (v % 8))  # noqa: E731
        if isinstance(value, int) and value >= SHRUNK_VOCAB:
            kw[key] = remap(value)
        elif isinstance(value, list) and any(v >= SHRUNK_VOCAB for v in value):
            kw[key] = [remap(v) for v in value]
    return kw


def _shrink_mixers(values: dict[str, Any], kw: dict[str, Any]) -> None:
    """Hybrids: Mamba2 / DeltaNet widths that follow the shrunk hidden size, or shrink on their own."""
    model_type, hidden = values["model_type"], kw["hidden_size"]
    if model_type in ("bamba", "granitemoehybrid"):  # mamba heads x head dim == expand x hidden
        kw["mamba_n_heads"] = int(values.get("mamba_expand", 2)) * hidden // int(values.get("mamba_d_head", 64))
    if model_type == "bamba" and "layer_types" in kw:  # bamba names its attention layers by index
        kw["attn_layer_indices"] = [i for i, t in enumerate(kw.pop("layer_types")) if "full" in t]
    if model_type == "mamba2":
        kw["num_heads"] = int(values.get("expand", 2)) * hidden // int(values["head_dim"])
        kw["n_groups"] = math.gcd(int(values.get("n_groups", 1)), kw["num_heads"])
        kw.pop("layer_types", None)
    if model_type == "nemotron_h":
        kw["layers_block_type"] = kw.pop("layer_types", None) or values.get("layers_block_type")
        kw["mamba_num_heads"] = int(values.get("n_groups", 8))  # one head per group
    if model_type == "qwen3_next":
        ratio = int(values["linear_num_value_heads"]) // int(values["linear_num_key_heads"])
        kw["linear_num_key_heads"], kw["linear_num_value_heads"] = 2, 2 * ratio


def describe_shrink(kw: dict[str, Any]) -> str:
    if "num_attention_heads" not in kw:
        return f"hidden {kw['hidden_size']}, {kw.get('num_heads')} SSM heads"
    heads = kw["num_attention_heads"]
    kv = kw.get("num_key_value_heads", kw.get("num_kv_heads", heads))
    parts = [f"{heads}/{kv} heads x {kw.get('head_dim', kw['hidden_size'] // heads)}", f"hidden {kw['hidden_size']}"]
    for key in ("num_local_experts", "num_experts", "n_routed_experts"):
        if key in kw:
            parts.append(f"{kw[key]} experts")
    if "attention_types" in kw and len(set(kw["attention_types"][0][0])) > 1:
        parts.append("+".join(kw["attention_types"][0][0]))
    if "layer_types" in kw and len(set(kw["layer_types"])) > 1:
        parts.append("+".join(t.split("_")[0] for t in kw["layer_types"]))
    if "no_rope_layers" in kw and len(set(kw["no_rope_layers"])) > 1:
        parts.append("rope+nope")
    return ", ".join(parts)


def check_config(name: str, kw: dict[str, Any]):
    """The resolved config of one shrunk CPU check: registry layers + num_hidden_layers_2.yaml + CPU overrides."""
    from autodeploy_cli.config.loader import resolve
    from model_registry import CONFIGS_DIR

    overrides = {"model": name, "model_kwargs": kw, "skip_loading_weights": True, "device": "cpu",
                 "dtype": "float32", "world_size": 1, "max_seq_len": 256, "max_batch_size": 2}
    return resolve([CONFIGS_DIR / "num_hidden_layers_2.yaml"], overrides)


def coverage_shortfall(rows: list[dict]) -> str:
    """'rmsnorm 4/5 (hint)' for every coverage row whose found count differs from the expected one ('' if none)."""
    return "; ".join(f"{r['kind']} {r['found']}/{r['expected']}" + (f" ({r['hint']})" if r.get("hint") else "")
                     for r in rows if r["found"] != r["expected"])


def check_entry(name: str) -> CheckResult:
    """Build one registry entry shrunk with --verify on CPU; never raises."""
    from model_registry import get_entry, hf_architecture

    entry = get_entry(name) or {}
    result = CheckResult(name, entry.get("family", "?"), "fail")
    if entry.get("unsupported"):
        result.status, result.error = "unsupported", str(entry["unsupported"])
        return result
    values = hf_architecture(name)
    if values is None and not entry.get("local_dir"):
        result.error = "no stored architecture (arch:) for this entry"
        return result
    start = time.perf_counter()
    try:
        from autodeploy_cli.pipeline.build import build

        kw = shrink_kwargs(values) if values is not None else {}  # a shipped folder is built as it is
        result.shrunk = describe_shrink(kw) if kw else "as shipped"
        built = build(check_config(name, kw), verify=True)
        rows = [r for r in built.report.get("verify", {}).get("rows", []) if r["check"] != "n/a"]
        result.max_rel_err = max((r["max_rel_err"] for r in rows), default=None)
        result.canonical_ops = dict(built.report.get("canonical_ops", {}))
        short = coverage_shortfall(built.report.get("coverage", []))
        if built.verify_failure:
            result.error = f"logits or generated tokens differ from HF after `{built.verify_failure}`"
        elif not any(r["check"] == "generation" for r in rows):
            result.error = "the generation check did not run (no cached graph)"
        elif short:
            result.error = f"canonical-op coverage short of what the HF config implies: {short}"
        else:
            result.status = "pass"
    except Exception as e:  # a failing entry is a result, not a crash of the sweep
        first = first_line(e, default="")
        result.error = f"{type(e).__name__}: {first}"[:300]
    result.seconds = time.perf_counter() - start
    return result


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _results(names: list[str], jobs: int):
    """check_entry over names, in order; with jobs > 1 in that many spawned processes (one CPU share each)."""
    if jobs <= 1 or len(names) <= 1:
        yield from map(check_entry, names)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or jobs) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                             initargs=(threads,)) as pool:
        yield from pool.map(check_entry, names)


def run_check(names: list[str], echo: Callable[[str], None] = print, jobs: int = 1) -> list[CheckResult]:
    """Check entries in order (`jobs` processes at a time), printing one line per entry in order."""
    quiet = "AUTO_DEPLOY_LOG_LEVEL" not in os.environ
    if quiet:  # one line per entry; set AUTO_DEPLOY_LOG_LEVEL to see the pipeline logs
        os.environ["AUTO_DEPLOY_LOG_LEVEL"] = "WARNING"
    results = []
    try:
        for i, r in enumerate(_results(names, jobs), 1):
            results.append(r)
            echo(f"[{i}/{len(names)}] {format_line(r)}")
    finally:
        if quiet:
            os.environ.pop("AUTO_DEPLOY_LOG_LEVEL", None)
    return results


def _ops(ops: dict[str, int]) -> str:
    return ", ".join(f"{k.split('.', 1)[-1]} x{v}" for k, v in ops.items())


def format_line(r: CheckResult) -> str:
    head = f"{r.status.upper():11s} {r.name}  ({r.family})"
    if r.status == "pass":
        return f"{head}  max rel err {r.max_rel_err:.1e}  {r.seconds:.1f}s  {_ops(r.canonical_ops)}"
    return f"{head}  {r.error}"


def summary(results: list[CheckResult]) -> dict[str, int]:
    return {s: sum(r.status == s for r in results) for s in ("pass", "fail", "unsupported")}


def write_markdown(results: list[CheckResult], path: str | Path, command: str) -> None:
    import platform

    import torch
    import transformers

    from autodeploy_cli.config.layers import default_pipeline

    enabled = [n for n, e in (default_pipeline().get("transforms") or {}).items()
               if (e or {}).get("enabled", True) is not False]
    total = summary(results)
    lines = [
        "# Model registry conformance",
        "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d')} (CPU, float32; torch {torch.__version__}, "
        f"transformers {transformers.__version__}, Python {platform.python_version()}).",
        "",
        "Each entry is built from its stored architecture, shrunk (2 decoder layers, KV heads -> min(KV heads, 2) "
        "with the same GQA ratio and head_dim, hidden = heads x head_dim, MLP 256, experts -> min(experts, "
        "max(2 x top-k, 4)), vocabulary 512; RoPE, sliding window, soft-capping, multipliers and layer kinds kept), "
        "with random weights, through the default pipeline with `--verify`: after every transform that changed the "
        "graph, its logits are compared with the HF eager model (relative error <= 1e-4), and once the KV cache is "
        "in, a generation check (prompts across pages, prefills mixed with decodes, greedy tokens and every step's "
        "logits vs HF's forward over the whole context). An entry passes only if that holds and the canonical-op counts equal what "
        "the HF config implies (attention, RoPE, RMSNorm, MoE per layer).",
        "",
        f"Pipeline: {', '.join(enabled)}.",
        "",
        f"**{len(results)} entries: {total['pass']} pass, {total['fail']} fail, {total['unsupported']} unsupported "
        "(marked in models.yaml with the reason).**",
        "",
        "| family | entries | pass | fail | unsupported |",
        "|---|---:|---:|---:|---:|",
    ]
    for fam in dict.fromkeys(r.family for r in results):
        s = summary([r for r in results if r.family == fam])
        lines.append(f"| {fam} | {sum(s.values())} | {s['pass']} | {s['fail']} | {s['unsupported']} |")
    lines += ["", "| model | family | result | max rel err | shrunk to | canonical ops | time (s) | note |",
              "|---|---|---|---:|---|---|---:|---|"]
    for r in results:
        err = f"{r.max_rel_err:.1e}" if r.max_rel_err is not None else ""
        secs = f"{r.seconds:.1f}" if r.status != "unsupported" else ""
        note = r.error.replace("|", "\\|")
        lines.append(f"| {r.name} | {r.family} | {r.status} | {err} | {r.shrunk} | {_ops(r.canonical_ops)} | "
                     f"{secs} | {note} |")
    Path(path).write_text("\n".join(lines) + "\n")
