"""The one config schema of `ad` (OmegaConf structured dataclasses).

Wrong types and unknown keys fail with the path of the bad key. Transform options are validated separately,
against each transform's own options dataclass (see `autodeploy_cli.pipeline.interface`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

DEFAULT_MODEL = "ad-tiny-llama"

DEFAULT_QUERIES = [
    "How big is the universe? ",
    "In simple words and a single sentence, explain the concept of gravity: ",
    "How to fix slicing in golf? ",
    "Where is the capital of Iceland? ",
]


@dataclass
class KvCacheConfig:
    dtype: str = "auto"  # auto (= model dtype) | float32 | float16 | bfloat16 | fp8
    # shortcut for transforms.resize_kv_cache.free_gpu_memory_fraction (None: keep the transform's value)
    free_gpu_memory_fraction: Optional[float] = None
    # state slots of recurrent mixers (Mamba2 SSM, delta rule): auto (= model dtype) | float32
    mamba_ssm_cache_dtype: str = "auto"


@dataclass
class QuantConfig:
    """FP8 quantization (TensorRT-LLM LLM-API spelling: `quant_config.quant_algo: FP8`)."""

    # FP8: quantize the linear layers of an unquantized checkpoint (or random weights) at load; None: a quantized
    # checkpoint runs with its own config (hf_quant_config.json / quantization_config), anything else unquantized
    quant_algo: Optional[str] = None
    kv_cache_quant_algo: Optional[str] = None  # FP8: an FP8 KV cache (the same as kv_cache_config.dtype=fp8)
    # module-name patterns kept unquantized (fnmatch wildcards, `re:<regex>`); None: the checkpoint's list, else the
    # LM head, the embeddings and MoE router gates
    exclude_modules: Optional[List[str]] = None
    weight_granularity: str = "channel"  # on-the-fly FP8: channel (one scale per output row) | tensor


@dataclass
class SamplingConfig:
    max_tokens: int = 32
    temperature: float = 0.0  # 0 = greedy
    top_k: Optional[int] = None
    top_p: float = 1.0
    seed: Optional[int] = None
    stop: List[str] = field(default_factory=list)
    stop_token_ids: List[int] = field(default_factory=list)
    ignore_eos: bool = False


@dataclass
class PromptConfig:
    batch_size: int = 4
    queries: List[str] = field(default_factory=lambda: list(DEFAULT_QUERIES))
    sp_kwargs: SamplingConfig = field(default_factory=SamplingConfig)
    chat_template: bool = True  # wrap queries in the tokenizer's chat template when it has one


@dataclass
class BenchmarkConfig:
    isl: int = 128  # prompt tokens per synthetic request
    osl: int = 128  # output tokens per request, EOS ignored (dataset lines: default max_tokens)
    num_requests: Optional[int] = None  # None: 8 synthetic requests, or every line of `dataset`
    concurrency: Optional[int] = None  # None: max_batch_size (latency mode: 1)
    isl_stdev: float = 0.0  # > 0: lengths drawn from a normal distribution, clipped to [1, max_seq_len]
    osl_stdev: float = 0.0
    seed: int = 0  # synthetic prompts and lengths
    dataset: Optional[str] = None  # JSONL file of {"prompt": ..., "max_tokens": ...} instead of synthetic prompts
    mode: str = "throughput"  # throughput | latency
    baseline: List[str] = field(default_factory=list)  # hf | hf-compile
    baseline_concurrency: Optional[int] = None  # HF's batch per generate call (None: concurrency); for models
    # whose HF reference path cannot hold `concurrency` sequences on the device
    output: Optional[str] = None  # JSON result file
    warmup: bool = True  # run the workload's shapes once before timing (ours and every baseline)
    temperature: float = 0.0  # > 0: our run samples (seeded by `seed`; top_p below), else greedy
    top_p: float = 1.0
    url: Optional[str] = None  # an OpenAI-compatible server to benchmark over HTTP (streamed) instead of building


@dataclass
class ADConfig:
    # --- model ---
    model: str = DEFAULT_MODEL  # hub id, local HF folder, or model-registry name
    model_factory: str = "AutoModelForCausalLM"
    model_kwargs: Dict[str, Any] = field(default_factory=dict)  # deep override of the HF config
    tokenizer: Optional[str] = None
    tokenizer_kwargs: Dict[str, Any] = field(default_factory=dict)
    skip_loading_weights: bool = False
    trust_remote_code: bool = False
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16 (auto: checkpoint dtype on GPU, float32 on CPU)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 42  # random weights and the verify probe
    # --- deployment ---
    world_size: int = 1
    runtime: str = "demollm"
    attn_backend: Optional[str] = None  # shortcut: transforms.insert_cached_attention.backend
    mla_backend: Optional[str] = None  # shortcut: transforms.insert_cached_mla_attention.backend
    compile_backend: Optional[str] = None  # shortcut: transforms.compile_model.backend
    cuda_graph_batch_sizes: Optional[List[int]] = None  # shortcut: transforms.compile_model.cuda_graph_batch_sizes
    attn_page_size: int = 64
    max_seq_len: int = 512
    max_batch_size: int = 8
    max_num_tokens: Optional[int] = None  # None: max_batch_size * max_seq_len, capped at 8192
    enable_chunked_prefill: bool = False
    kv_cache_config: KvCacheConfig = field(default_factory=KvCacheConfig)
    quant_config: QuantConfig = field(default_factory=QuantConfig)
    transforms: Dict[str, Any] = field(default_factory=dict)
    # --- commands ---
    prompt: PromptConfig = field(default_factory=PromptConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)


# shortcut key -> (transform, option)
SHORTCUTS: dict[str, tuple[str, str]] = {
    "attn_backend": ("insert_cached_attention", "backend"),
    "mla_backend": ("insert_cached_mla_attention", "backend"),
    "compile_backend": ("compile_model", "backend"),
    "cuda_graph_batch_sizes": ("compile_model", "cuda_graph_batch_sizes"),
    "kv_cache_config.free_gpu_memory_fraction": ("resize_kv_cache", "free_gpu_memory_fraction"),
}

# op family -> the backend names a config may choose (`auto` resolves per device: autodeploy_cli.ops.backends)
BACKEND_CHOICES: dict[str, tuple[str, ...]] = {
    "attention": ("auto", "torch", "triton", "flashinfer"),
    "fused": ("auto", "torch", "triton"),
    "mla": ("auto", "torch", "triton", "flashinfer"),
    "moe": ("auto", "torch", "triton"),
    "compile": ("auto", "torch-simple", "torch-compile", "torch-cudagraph", "torch-opt"),
    "quant": ("auto", "torch", "triton"),
    "ssm": ("auto", "torch", "triton"),
    "causal_conv": ("auto", "torch", "triton"),
    "delta_rule": ("auto", "torch", "triton"),
    "sampling": ("auto", "torch", "triton"),  # chosen by device (the engine's token sampler)
}
# (transform, option) -> the op family whose backend the option chooses
TRANSFORM_BACKENDS: dict[tuple[str, str], str] = {
    ("insert_cached_attention", "backend"): "attention",
    ("insert_cached_mla_attention", "backend"): "mla",
    ("compile_model", "backend"): "compile",
    ("insert_cached_ssm_attention", "backend"): "ssm",
    ("insert_cached_causal_conv", "backend"): "causal_conv",
    ("insert_cached_delta_rule", "backend"): "delta_rule",
    ("fuse_moe", "backend"): "moe",
    **{(name, "backend"): "fused" for name in ("fuse_silu_mul", "fuse_add_rmsnorm", "fuse_rmsnorm", "optimize_rope",
                                                 "optimize_linear")},
    ("fuse_fp8_linear", "backend"): "quant",
    ("fuse_gated_rmsnorm", "backend"): "fused",
}

CHOICES: dict[str, tuple[str, ...]] = {
    "dtype": ("auto", "float32", "float16", "bfloat16"),
    "runtime": ("demollm",),
    "kv_cache_config.dtype": ("auto", "float32", "float16", "bfloat16", "fp8"),
    "quant_config.weight_granularity": ("channel", "tensor"),
    "kv_cache_config.mamba_ssm_cache_dtype": ("auto", "float32"),
    "benchmark.mode": ("throughput", "latency"),
}


def effective_mamba_ssm_cache_dtype(option: Optional[str], model_value: Any = None) -> str:
    """`kv_cache_config.mamba_ssm_cache_dtype` resolved: float32 | auto (= the model dtype). `auto` follows the model
    config's own `mamba_ssm_cache_dtype` when it names float32 (Nemotron-H's configs do)."""
    option = option or "auto"
    if option == "auto" and str(model_value).replace("torch.", "") == "float32":
        return "float32"
    return option


def effective_max_num_tokens(max_batch_size: int, max_seq_len: int, max_num_tokens: Optional[int]) -> int:
    """Tokens per step: `max_num_tokens`, or by default max_batch_size * max_seq_len capped at max(8192, max_seq_len)."""
    if max_num_tokens is not None:
        if max_num_tokens < 1:
            from autodeploy_cli.errors import ADError

            raise ADError(f"`max_num_tokens` must be at least 1, got {max_num_tokens}.")
        return int(max_num_tokens)
    return min(max_batch_size * max_seq_len, max(8192, max_seq_len))
