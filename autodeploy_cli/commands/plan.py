"""`ad build --plan`: a memory plan from the model's config alone (meta model, no weights loaded, no GPU needed).

weights   = parameters x bytes of the deployment dtype (tied weights once)
weights of an FP8 checkpoint (quantization_config quant_method fp8, e.g. DeepSeek-V3): 1 byte per element of
            every matrix but the embedding, the LM head and the MoE router, plus its fp32 block scales
KV/token  = sum over layers of 2 (K and V) x KV heads x head_dim x bytes of the KV dtype; multi-head latent
            attention (DeepSeek-V2/V3, Kimi-K2): kv_lora_rank + rope dim per layer (the compressed cache)
state/seq = per sequence, for stateful mixers (hybrids): Mamba2 SSM state (heads x head_dim x state size, in
            kv_cache_config.mamba_ssm_cache_dtype) + conv state (conv channels x (kernel - 1), model dtype), Gated
            DeltaNet state (value heads x key dim x value dim) + conv state; fixed size, whatever the context length
per GPU   = tensor parallelism over `world_size` GPUs splits the weights and the KV heads (KV heads are replicated
            when there are fewer of them than GPUs; the MLA latent has no head dimension: every GPU holds all of it)
KV budget = (GPU memory - weights/GPU - activation reserve) x free_gpu_memory_fraction, the reserve being
            max(1 GiB, 5% of GPU memory) as the cache-resize transform keeps
max seqs  = KV budget / (KV bytes per token per GPU x max_seq_len + state bytes per sequence per GPU)

The recommended world size is the smallest power of two (dividing the attention heads) at which `max_batch_size`
sequences of `max_seq_len` tokens fit.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from autodeploy_cli.config.schema import ADConfig
from autodeploy_cli.errors import ADError

H200_BYTES = 141 * 10**9  # the default when no GPU is visible and no --gpu-mem is given
WORLD_SIZES = (1, 2, 4, 8)
DEFAULT_FREE_FRACTION = 0.9
_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8": 1}
_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "fp8": "fp8"}
_UNITS = {"": 10**9, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_mem(text: str) -> int:
    """'141GB' -> 141e9 bytes; GB/MB are decimal, GiB/MiB binary; a bare number means GB."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text or "")
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise ADError(
            f"Cannot read `--gpu-mem {text}`: give a size such as `141GB`, `80GB`, `96GiB` or `24000MiB` "
            "(GB/MB are powers of 10, GiB/MiB powers of 2; a bare number means GB)."
        )
    return int(float(m.group(1)) * _UNITS[unit])


def detect_gpu_mem() -> Optional[tuple[int, str]]:
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return int(props.total_memory), props.name


@dataclass
class WorldSizeRow:
    world_size: int
    weights_per_gpu: int
    kv_per_token_per_gpu: int
    kv_budget: int
    max_seqs: int
    divisible: bool  # attention heads split evenly over the GPUs


@dataclass
class Plan:
    model: str
    architecture: str
    params: int
    dtype: str
    weight_bytes: int
    kv_dtype: str
    kv_bytes_per_token: int
    num_layers: int
    kv_heads: int
    head_dim: int
    num_heads: int
    sliding_layers: int
    sliding_window: Optional[int]
    max_seq_len: int
    max_batch_size: int
    gpu_mem: int
    gpu_source: str
    free_fraction: float
    reserve: int
    rows: list[WorldSizeRow] = field(default_factory=list)
    recommended: Optional[int] = None
    mla: Optional[tuple[int, int]] = None  # (kv_lora_rank, rope dim) of a multi-head latent attention model
    weight_format: str = ""  # e.g. "fp8, 128x128 block scales" for an FP8 checkpoint
    attention_layers: Optional[int] = None  # hybrids: the layers with a KV cache (None: every layer)
    state_bytes_per_seq: int = 0  # hybrids: SSM / conv / delta-rule state slots of one sequence
    state_detail: str = ""
    world_size: int = 1  # the config's
    configured: Optional[WorldSizeRow] = None  # the row of the config's world size (sharded runs)
    invalid_world_size: Optional[str] = None  # why the config's world size does not split the model


def _dtype_name(value: Any) -> Optional[str]:
    name = str(value).replace("torch.", "") if value is not None else None
    return name if name in _BYTES else None


def _attention_shape(hf: Any) -> tuple[int, int, int, int]:
    """(layers, attention heads, KV heads, head_dim) of a HF config."""
    heads = int(getattr(hf, "num_attention_heads", None) or getattr(hf, "num_heads", 1))  # num_heads: Mamba2 (no KV)
    kv = int(getattr(hf, "num_key_value_heads", None) or heads)
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // heads
    return int(hf.num_hidden_layers), heads, kv, int(head_dim)


def _sliding(hf: Any, layers: int) -> tuple[int, Optional[int]]:
    window = getattr(hf, "sliding_window", None)
    types = getattr(hf, "layer_types", None)
    if not window:
        return 0, None
    if types:
        return sum(1 for t in types[:layers] if t == "sliding_attention"), int(window)
    return layers, int(window)


def _fp8_block(hf: Any) -> Optional[tuple[int, int]]:
    """The weight block of an FP8 (block-scaled) checkpoint's quantization_config, else None."""
    q = getattr(hf, "quantization_config", None)
    q = q if isinstance(q, dict) else (q.to_dict() if hasattr(q, "to_dict") else {})
    if str(q.get("quant_method", "")).lower() != "fp8":
        return None
    block = q.get("weight_block_size") or (128, 128)
    return int(block[0]), int(block[1])


def _fp8_weight_bytes(model: Any, block: tuple[int, int], elem: int) -> int:
    """FP8 matrices (1 byte each, one fp32 scale per block) and everything else at `elem` bytes."""
    keep = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
            for p in m.parameters()}
    total = 0
    for name, p in model.named_parameters():
        if p.dim() >= 2 and id(p) not in keep and not re.search(r"\.gate\.weight$", name):
            rows, cols = p.shape[-2], p.shape[-1]
            blocks = p.numel() // (rows * cols) * math.ceil(rows / block[0]) * math.ceil(cols / block[1])
            total += p.numel() + 4 * blocks
        else:
            total += p.numel() * elem
    return total


def _attention_layers(hf: Any, layers: int) -> Optional[int]:
    """Layers with a KV cache when the config names layer kinds with stateful mixers among them, else None."""
    from autodeploy_cli.models.hybrid_layers import STATEFUL_KINDS

    kinds = getattr(hf, "layer_types", None)
    if not isinstance(kinds, (list, tuple)) or not any(k in STATEFUL_KINDS for k in kinds):
        return None
    return sum(1 for k in kinds[:layers] if "attention" in k and k not in STATEFUL_KINDS)


def _state_bytes(model: Any, model_bytes: int, state_bytes: int) -> tuple[int, str]:
    """(state bytes of one sequence, how they add up) from the HF mixer modules of the meta model."""
    from autodeploy_cli.export.hf_mixers import find_mixers

    total, parts = 0, []
    ssm = list(find_mixers(model, "mamba2"))
    if ssm:
        m = ssm[0]
        one = m.num_heads * m.head_dim * m.ssm_state_size * state_bytes + m.conv_dim * (m.conv_kernel_size - 1) * model_bytes
        total += one * len(ssm)
        parts.append(f"{len(ssm)} Mamba2 layers x ({m.num_heads} x {m.head_dim} x {m.ssm_state_size} x {state_bytes} "
                     f"SSM + {m.conv_dim} x {m.conv_kernel_size - 1} x {model_bytes} conv bytes)")
    gdn = list(find_mixers(model, "gated_deltanet"))
    if gdn:
        m = gdn[0]
        one = (m.num_v_heads * m.head_k_dim * m.head_v_dim * state_bytes
               + m.conv_dim * (m.conv_kernel_size - 1) * model_bytes)
        total += one * len(gdn)
        parts.append(f"{len(gdn)} Gated DeltaNet layers x ({m.num_v_heads} x {m.head_k_dim} x {m.head_v_dim} x "
                     f"{state_bytes} delta + {m.conv_dim} x {m.conv_kernel_size - 1} x {model_bytes} conv bytes)")
    return total, " + ".join(parts)


def _kv_values(hf: Any, layers: int, kv_heads: int, head_dim: int) -> tuple[int, Optional[int]]:
    """KV values cached per token (MLA: the compressed latent + RoPE key; else K and V of the attention layers only,
    hybrids included) and the attention-layer count of a hybrid (None: every layer)."""
    from autodeploy_cli.models.hf_arch import kv_values_per_token

    kv_values, per_head = kv_values_per_token(hf)
    attn_layers = _attention_layers(hf, layers)
    if per_head:
        kv_values = (layers if attn_layers is None else attn_layers) * 2 * kv_heads * head_dim
    return kv_values, attn_layers


def _state_per_seq(cfg: ADConfig, hf: Any, model: Any, dtype: str) -> tuple[int, str]:
    """State-slot bytes of one sequence (hybrids), with the SSM state in kv_cache_config.mamba_ssm_cache_dtype."""
    from autodeploy_cli.config.schema import effective_mamba_ssm_cache_dtype

    ssm_dtype = effective_mamba_ssm_cache_dtype(getattr(cfg.kv_cache_config, "mamba_ssm_cache_dtype", "auto"),
                                                getattr(hf, "mamba_ssm_cache_dtype", None))
    return _state_bytes(model, _BYTES[dtype], 4 if ssm_dtype == "float32" else _BYTES[dtype])


def make_plan(cfg: ADConfig, gpu_mem: Optional[str] = None) -> Plan:
    """The memory plan of `cfg.model` (meta model; nothing is loaded or allocated)."""
    from autodeploy_cli.models.factory import ModelFactory
    from autodeploy_cli.models.hf_arch import count_params, meta_model

    factory = ModelFactory(cfg)
    hf = factory.hf_config()
    model = meta_model(hf, cfg.model_factory)
    params = count_params(model)
    dtype = cfg.dtype if cfg.dtype != "auto" else (
        _dtype_name(getattr(hf, "dtype", None)) or _dtype_name(getattr(hf, "torch_dtype", None)) or "bfloat16")
    kv_dtype = dtype if cfg.kv_cache_config.dtype == "auto" else cfg.kv_cache_config.dtype
    layers, heads, kv_heads, head_dim = _attention_shape(hf)
    sliding_layers, window = _sliding(hf, layers)
    from autodeploy_cli.models.hf_arch import mla_dims

    block = _fp8_block(hf)
    weight_bytes = params * _BYTES[dtype] if block is None else _fp8_weight_bytes(model, block, _BYTES[dtype])
    kv_values, attn_layers = _kv_values(hf, layers, kv_heads, head_dim)
    state_seq, state_detail = _state_per_seq(cfg, hf, model, dtype)

    if gpu_mem:
        mem, source = parse_mem(gpu_mem), f"--gpu-mem {gpu_mem}"
    else:
        found = detect_gpu_mem()
        mem, source = (found[0], f"detected {found[1]}") if found else (
            H200_BYTES, "assumed H200 141 GB: no GPU visible, pass --gpu-mem")
    fraction = (cfg.kv_cache_config.free_gpu_memory_fraction
                or (cfg.transforms.get("resize_kv_cache") or {}).get("free_gpu_memory_fraction")
                or DEFAULT_FREE_FRACTION)
    reserve = max(2**30, mem // 20)
    plan = Plan(
        model=cfg.model, architecture=type(model).__name__, params=params, dtype=dtype,
        weight_bytes=weight_bytes, kv_dtype=kv_dtype, kv_bytes_per_token=kv_values * _BYTES[kv_dtype],
        num_layers=layers, kv_heads=kv_heads, head_dim=head_dim, num_heads=heads, sliding_layers=sliding_layers,
        sliding_window=window, max_seq_len=cfg.max_seq_len, max_batch_size=cfg.max_batch_size,
        gpu_mem=mem, gpu_source=source, free_fraction=float(fraction), reserve=reserve, mla=mla_dims(hf),
        weight_format="" if block is None else f"fp8, {block[0]}x{block[1]} block scales",
        attention_layers=attn_layers, state_bytes_per_seq=state_seq, state_detail=state_detail,
    )
    for ws in WORLD_SIZES:
        row = _row(plan, ws)
        plan.rows.append(row)
        if plan.recommended is None and row.divisible and row.max_seqs >= cfg.max_batch_size:
            plan.recommended = ws
    plan.world_size = cfg.world_size
    if cfg.world_size > 1:
        from autodeploy_cli.models.tp_limits import check_world_size

        plan.configured = _row(plan, cfg.world_size)
        try:
            check_world_size(hf, cfg.world_size, f"`{cfg.model}`")
        except ADError as e:
            plan.invalid_world_size = str(e)
    return plan


def _row(plan: Plan, ws: int) -> WorldSizeRow:
    """Per-rank bytes with tensor parallelism over `ws` ranks (KV heads replicated when fewer than ranks)."""
    weights = math.ceil(plan.weight_bytes / ws)
    layers = plan.num_layers if plan.attention_layers is None else plan.attention_layers  # hybrids: attention only
    if plan.mla is not None:  # the compressed latent is not split by head: every rank holds all of it
        kv_tok = plan.kv_bytes_per_token
    else:
        kv_tok = layers * 2 * math.ceil(plan.kv_heads / ws) * plan.head_dim * _BYTES[plan.kv_dtype]
    budget = max(0, int((plan.gpu_mem - weights - plan.reserve) * plan.free_fraction))
    per_seq = kv_tok * plan.max_seq_len + math.ceil(plan.state_bytes_per_seq / ws)  # + state slots (hybrids)
    return WorldSizeRow(ws, weights, kv_tok, budget, budget // max(1, per_seq), plan.num_heads % ws == 0)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 10**9 else f"{n / 1e6:.2f}M"


def _kv_line(plan: Plan, bytes_kv: int) -> str:
    layers = (f"{plan.num_layers} layers" if plan.attention_layers is None
              else f"{plan.attention_layers} attention layers")
    head = f"  KV cache: {plan.kv_bytes_per_token} bytes of {_SHORT[plan.kv_dtype]} KV per token = {layers} x "
    if plan.mla is not None:
        return (head + f"({plan.mla[0]} latent + {plan.mla[1]} RoPE key) x {bytes_kv} bytes (compressed MLA cache: "
                "every GPU holds all of it)")
    return head + f"{plan.kv_heads} KV heads x {plan.head_dim} head_dim x 2 (K and V) x {bytes_kv} bytes"


def render_plan(plan: Plan) -> list[str]:
    bytes_w = _BYTES[plan.dtype]
    bytes_kv = _BYTES[plan.kv_dtype]
    lines = [
        f"Memory plan for {plan.model} ({plan.architecture}; meta model, no weights loaded)",
        f"  {_count(plan.params)} parameters ({plan.params:,})",
        f"  weights: {plan.weight_bytes:,} bytes ({_gb(plan.weight_bytes)}) in {plan.dtype} ({bytes_w} bytes/param)"
        if not plan.weight_format else
        f"  weights: {plan.weight_bytes:,} bytes ({_gb(plan.weight_bytes)}) in {plan.weight_format} (embedding, LM "
        f"head, router and norms in {plan.dtype})",
        _kv_line(plan, bytes_kv),
        f"  one sequence of max_seq_len={plan.max_seq_len} tokens: {_gb(plan.kv_bytes_per_token * plan.max_seq_len)}"
        f" of KV; max_batch_size={plan.max_batch_size}",
    ]
    if plan.state_bytes_per_seq:
        lines.append(f"  state slots: {plan.state_bytes_per_seq:,} bytes ({_gb(plan.state_bytes_per_seq)}) per sequence = "
                     f"{plan.state_detail}; counted once per sequence beside its KV")
    if plan.sliding_layers:
        lines.append(f"  note: {plan.sliding_layers} of {plan.num_layers} layers use a {plan.sliding_window}-token "
                     "sliding window; the numbers assume a full-length cache in every layer (an upper bound)")
    lines.append(f"  GPU memory: {_gb(plan.gpu_mem)} per GPU ({plan.gpu_source}); KV budget = "
                 f"{plan.free_fraction:g} x (memory - weights/GPU - {_gb(plan.reserve)} activation reserve)")
    lines.append(f"  {'world size':>10}  {'weights/GPU':>12}  {'KV/token/GPU':>12}  {'KV budget/GPU':>13}  "
                 f"{'max concurrent seqs @ ' + str(plan.max_seq_len):>28}")
    for r in plan.rows:
        note = "" if r.divisible else f"  ({plan.num_heads} heads do not split over {r.world_size} GPUs)"
        lines.append(f"  {r.world_size:>10}  {_gb(r.weights_per_gpu):>12}  {r.kv_per_token_per_gpu:>12,}  "
                     f"{_gb(r.kv_budget):>13}  {r.max_seqs:>28,}{note}")
    if plan.configured is not None:
        r = plan.configured
        kv_heads = -(-plan.kv_heads // r.world_size)
        rep = f", each shared by {r.world_size // plan.kv_heads} ranks" if plan.kv_heads < r.world_size else ""
        lines.append(f"  configured world_size {r.world_size}, per rank: {r.weights_per_gpu:,} bytes of weights "
                     f"({_gb(r.weights_per_gpu)}), {r.kv_per_token_per_gpu:,} bytes of KV per token ({kv_heads} KV "
                     f"head(s){rep}), {r.max_seqs:,} sequences of {plan.max_seq_len} tokens")
        if plan.invalid_world_size:
            lines.append(f"  {plan.invalid_world_size}")
    if plan.recommended is not None:
        lines.append(f"  recommended world size: {plan.recommended} (smallest that holds max_batch_size="
                     f"{plan.max_batch_size} sequences of {plan.max_seq_len} tokens)")
    else:
        lines.append(f"  recommended world size: none of {', '.join(map(str, WORLD_SIZES))} holds max_batch_size="
                     f"{plan.max_batch_size} sequences of {plan.max_seq_len} tokens; lower max_seq_len or "
                     "max_batch_size, use kv_cache_config.dtype=fp8, or use GPUs with more memory")
    return lines


def print_plan(cfg: ADConfig, gpu_mem: Optional[str] = None) -> Plan:
    import typer

    plan = make_plan(cfg, gpu_mem)
    for line in render_plan(plan):
        typer.echo(line)
    return plan
