"""What `ad` knows about TensorRT-LLM AutoDeploy's config files (data only; the logic is in `reader.py`).

Each table says what happens to one family of AutoDeploy/TensorRT-LLM keys: renamed onto an `ad` key, or ignored
with a reason that tells the user what `ad` does instead. Values listed as "harmless" are what `ad` does anyway;
they are dropped with an info note instead of a warning.
"""

from __future__ import annotations

# --- renames (AutoDeploy key -> ad key, dotted from the top of the layer) ---------------------------------------
RENAMED_TOP: dict[str, str] = {
    "free_mem_ratio": "kv_cache_config.free_gpu_memory_fraction",  # T2 shortcut of resize_kv_cache
    "kv_cache_dtype": "kv_cache_config.dtype",  # T2 top-level field
    "tensor_parallel_size": "world_size",  # model_registry/configs/world_size_N.yaml (newest AutoDeploy)
}
RENAMED_KV_CACHE: dict[str, str] = {
    "tokens_per_block": "attn_page_size",  # T3 page size
}
RENAMED_CUDA_GRAPH: dict[str, str] = {
    "batch_sizes": "cuda_graph_batch_sizes",  # T3 syncs it into compile_model.cuda_graph_batch_sizes
}
RENAMED_BENCHMARK: dict[str, str] = {
    "num": "num_requests",
    "bs": "concurrency",
}
# AutoDeploy v1 attention backend names
BACKEND_ALIASES: dict[str, str] = {
    "TritonWithFlattenedInputs": "triton",
    "FlashInfer": "flashinfer",
    "MultiHeadLatentAttention": "flashinfer_mla",
    # AutoDeploy's state-space / conv / delta-rule backends -> ad's GPU kernels of the same op family
    "triton_ssm": "triton",
    "cuda_causal_conv": "triton",
    "fla_delta": "triton",
    "fla_gated_delta": "triton",
}
# AutoDeploy's MLA backend names (insert_cached_mla_attention.backend, mla_backend) -> ad's MLA backends
MLA_BACKEND_ALIASES: dict[str, str] = {
    "flashinfer_mla": "flashinfer",
    "torch_mla": "torch",
    "MultiHeadLatentAttention": "flashinfer",
}

# --- ignored keys: key -> (harmless values, what ad does instead) -----------------------------------------------
_PARALLEL = "ad parallelizes only through `world_size` (tensor parallel on one host)"
_SPEC = "ad has no speculative decoding; it decodes one token per step"
_RUNTIME = "it is a TensorRT-LLM runtime option with no equivalent in ad's built-in runtime"

IGNORED_TOP: dict[str, tuple[tuple, str]] = {
    "disable_overlap_scheduler": ((False,), "ad's runtime always overlaps greedy steps with the host (the next step "
                                            "is launched before the previous one's tokens are read); there is no "
                                            "switch to turn it off"),
    "allreduce_strategy": (("NCCL", "AUTO"), "ad's multi-GPU all-reduce is torch.distributed with NCCL"),
    "pipeline_parallel_size": ((1, None), _PARALLEL),
    "context_parallel_size": ((1, None), _PARALLEL),
    "moe_tensor_parallel_size": ((None, 1), _PARALLEL),
    "moe_expert_parallel_size": ((None, 1), _PARALLEL),
    "moe_cluster_parallel_size": ((None, 1), _PARALLEL),
    "enable_attention_dp": ((False,), _PARALLEL),
    "cp_config": ((None, {}), _PARALLEL),
    "gpus_per_node": ((None,), "ad uses `world_size` GPUs of one host"),
    "max_beam_width": ((1,), "ad decodes a single beam per request"),
    "mode": (("graph",), "ad always runs its exported-graph pipeline (AutoDeploy's mode `graph`)"),
    "backend": (("_autodeploy", None), "ad always builds with its own pipeline (AutoDeploy's `_autodeploy`)"),
    "skip_tokenizer_init": ((False,), "ad always loads the tokenizer"),
    "max_input_len": ((), "ad bounds each request's prompt plus output by `max_seq_len`"),
    "yaml_default": (("", None), "ad always starts from its built-in default.yaml; add files with --config"),
    "dry_run": ((False,), "use `ad <command> --print-config` to print the resolved config and exit"),
    "speculative_config": ((None,), _SPEC),
    "speculative_model_kwargs": ((None, {}), _SPEC),
    "draft_checkpoint_loader": ((None,), _SPEC),
}
# TensorRT-LLM LLM-API options that only its own runtime reads
for _key in (
    "tokenizer_mode", "revision", "tokenizer_revision", "load_format", "checkpoint_loader", "checkpoint_format",
    "build_config", "enable_lora", "lora_config", "peft_cache_config", "batched_logits_processor",
    "guided_decoding_backend", "scheduler_config", "cache_transceiver_config", "batching_type", "stream_interval",
    "normalize_log_probs", "gather_generation_logits", "num_postprocess_workers", "postprocess_tokenizer_dir",
    "reasoning_parser", "garbage_collection_gen0_threshold", "iter_stats_max_iterations",
    "request_stats_max_iterations", "enable_iter_perf_stats", "enable_iter_req_stats", "print_iter_log",
    "moe_config", "enable_mixed_sampler", "enable_trtllm_sampler", "sampler_type", "torch_compile_config",
    "enable_autotuner", "enable_layerwise_nvtx_marker", "enable_min_latency", "force_dynamic_quantization",
    "return_perf_metrics", "batch_wait_timeout_ms", "kv_connector_config", "orchestrator_type",
):
    IGNORED_TOP[_key] = ((), _RUNTIME)

_REUSE = "ad's KV page manager gives every sequence its own pages and never reuses blocks across requests"
_KV = "it is an option of TensorRT-LLM's KV cache manager; ad's page manager has no equivalent"
IGNORED_KV_CACHE: dict[str, tuple[tuple, str]] = {
    "enable_block_reuse": ((False,), _REUSE),
    "enable_partial_reuse": ((False,), _REUSE),
    "copy_on_partial_reuse": ((False,), _REUSE),
    "max_tokens": ((None,), "ad sizes the KV cache from `kv_cache_config.free_gpu_memory_fraction` on GPU "
                            "and to max_batch_size x max_seq_len tokens on CPU"),
}
for _key in (
    "max_attention_window", "sink_token_length", "host_cache_size", "onboard_blocks", "cross_kv_cache_fraction",
    "secondary_offload_min_priority", "event_buffer_max_size", "use_uvm", "max_gpu_total_bytes",
    "attention_dp_events_gather_period_ms",
):
    IGNORED_KV_CACHE[_key] = ((None,), _KV)
# kv_cache_config keys ad has too, whose TensorRT-LLM default is null: a null value is dropped (ad's default applies)
NULL_DEFAULT_KV_CACHE: dict[str, str] = {
    "mamba_ssm_cache_dtype": "null is ad's `auto` (the model dtype)",
}

IGNORED_CUDA_GRAPH: dict[str, tuple[tuple, str]] = {
    "max_batch_size": ((None, 0), "ad captures its default ladder of batch sizes up to `max_batch_size`; "
                                  "list them in `cuda_graph_batch_sizes` to choose"),
    "enable_padding": ((True,), "ad pads a decode batch to the next captured batch size"),
}
CUDA_GRAPH_OFF = ("in ad, CUDA graphs come from `compile_backend` (torch-cudagraph or torch-opt); choose "
                  "torch-simple or torch-compile to run without them")

# TensorRT-LLM SamplingParams fields beyond ad's SamplingConfig
SAMPLING_KEYS_IGNORED = frozenset({
    "n", "best_of", "use_beam_search", "beam_width_array", "end_id", "pad_id", "min_tokens", "min_p",
    "repetition_penalty", "presence_penalty", "frequency_penalty", "length_penalty", "early_stopping",
    "no_repeat_ngram_size", "beam_search_diversity_rate", "top_p_min", "top_p_reset_ids", "top_p_decay",
    "include_stop_str_in_output", "skip_special_tokens", "spaces_between_special_tokens", "bad", "bad_token_ids",
    "logprobs", "prompt_logprobs", "return_context_logits", "return_generation_logits",
    "exclude_input_from_output", "return_encoder_output", "return_perf_metrics", "additional_model_outputs",
    "detokenize", "add_special_tokens", "truncate_prompt_tokens", "embedding_bias", "logits_processor",
    "apply_batched_logits_processor", "guided_decoding", "lookahead_config", "prompt_ignore_length",
})
SAMPLING_REASON = ("ad's sampler supports max_tokens, temperature, top_k, top_p, seed, stop, stop_token_ids and "
                   "ignore_eos")

# --- transforms ---------------------------------------------------------------------------------------------------
# Every transform name of AutoDeploy's default pipelines (T1-T3); those not registered in ad are refused when enabled.
ANCHOR_TRANSFORMS = frozenset({
    "build_model", "export_to_gm", "cleanup_noop_slice", "cleanup_noop_add", "cleanup_input_constraints",
    "match_moe_pattern", "match_dense_moe_pattern", "match_bmm_moe_pattern", "split_moe_fused_for_sharding",
    "match_repeat_kv", "match_eager_attention", "match_sdpa_to_torch_attention", "match_grouped_attention",
    "match_grouped_attention_with_repeat_kv", "match_grouped_attention_without_repeat_kv",
    "match_attention_layout", "match_rope_pattern", "match_rope_layout", "match_rmsnorm_pattern",
    "match_l2norm_pattern", "match_moe_routing_pattern", "eliminate_redundant_transposes",
    "fuse_rope_into_trtllm_mla", "optimize_rope", "quantize_int4_linear_from_config",
    "quantize_int4_gptq_linear_from_config", "quantize_fp8_linear_from_config", "quantize_nvfp4_linear_from_config",
    "quantize_finegrained_fp8_linear_from_config", "quantize_finegrained_fp8_moe", "quantize_fp8_bmm_from_config",
    "quantize_fp8_from_graph", "quantize_nvfp4_from_graph", "match_swiglu_pattern", "match_nvfp4_swiglu_pattern",
    "match_finegrained_fp8_swiglu_pattern", "quantize_fp8_moe", "quantize_nvfp4_moe", "quantize_mxfp4_moe",
    "detect_hidden_states_for_capture", "detect_sharding", "sharding_transform_executor", "apply_sharding_hints",
    "strip_sharding_hints", "load_weights", "move_inputs_to_device", "fuse_gemms_mixed_children", "fuse_gemms",
    "fuse_fp4_gemms", "fuse_fp8_gemms", "fuse_silu_mul", "fuse_fp8_linear", "fuse_trtllm_attn_quant_fp8",
    "fuse_nvfp4_linear", "fuse_relu2_quant_nvfp4", "fuse_nvfp4_swiglu", "fuse_finegrained_fp8_swiglu",
    "fuse_finegrained_fp8_linear", "fuse_moe", "fuse_fp8_moe", "fuse_finegrained_fp8_moe", "fuse_nvfp4_moe",
    "fuse_allreduce_residual_rmsnorm", "fuse_collectives", "fuse_rmsnorm", "fuse_gated_rmsnorm", "fuse_gdn_gating",
    "fuse_l2norm", "fuse_swiglu", "fuse_add_rms_norm", "fuse_rmsnorm_quant_fp8", "mlir_elementwise_fusion",
    "gather_logits_before_lm_head", "visualize_namespace", "update_in_out_nodes", "insert_cached_attention",
    "insert_cached_mla_attention", "insert_cached_ssm_attention", "insert_cached_causal_conv",
    "insert_cached_delta_rule", "insert_cached_gated_delta_rule", "insert_cached_residual_add",
    "initialize_mrope_delta_cache", "initialize_cache", "resize_kv_cache", "fuse_causal_conv_activation",
    "multi_stream_moe", "multi_stream_mla_attn", "multi_stream_gemm", "compile_model",
    "transformers_replace_cached_attn", "load_factory_model_weights",
})
SHARDING_TRANSFORMS = frozenset({
    "detect_sharding", "sharding_transform_executor", "apply_sharding_hints", "strip_sharding_hints",
})
TP_PLAN_VALUES = ("colwise", "rowwise", "gather", "mamba", "local_colwise", "local_rowwise", "sequence_parallel")

# Options of AutoDeploy's TransformConfig that ad's runner has no use for
GENERIC_TRANSFORM_OPTIONS = frozenset({"run_per_gm", "expect_mem_change", "debug_visualize_dir"})
# AutoDeploy-specific options per transform (dropped with a warning when ad's transform lacks them)
TRANSFORM_OPTIONS: dict[str, frozenset] = {
    "build_model": frozenset({"device"}),
    "export_to_gm": frozenset({"strict", "clone_state_dict", "patch_list", "num_moe_experts_for_export"}),
    "load_weights": frozenset({"checkpoint_device", "adconfig_checkpoint_device"}),
    "match_attention_layout": frozenset({"attn_layout", "attn_backend"}),
    "match_rope_layout": frozenset({"expected_layout"}),
    "detect_sharding": frozenset({
        "simple_shard_only", "sharding_source", "support_partial_config", "sharding_dims", "manual_config",
        "factory_config", "factory_source", "allreduce_strategy", "dist_backend", "process_grid",
        "shard_all_unprocessed", "enable_attention_dp", "dist_mapping", "use_sharding_from_factory",
        "enable_sharder_ir", "requires_shape_prop",
    }),
    "insert_cached_attention": frozenset({"backend", "cache_config"}),
    "resize_kv_cache": frozenset({"free_mem_ratio"}),
    "compile_model": frozenset({
        "backend", "cuda_graph_batch_sizes", "num_batched_inputs", "piecewise_enabled", "piecewise_num_tokens",
    }),
    "fuse_rmsnorm": frozenset({"backend", "rmsnorm_backend", "gated_rmsnorm_backend"}),
    "mlir_elementwise_fusion": frozenset({"bypass_ops"}),
}
# options AutoDeploy's and ad's same-named transforms both have (kept as they are; a pipeline test checks them)
SHARED_TRANSFORM_OPTIONS: dict[str, frozenset] = {
    "match_attention_layout": frozenset({"attn_layout"}),
    "match_rope_layout": frozenset({"expected_layout"}),
    "insert_cached_attention": frozenset({"backend"}),
    "insert_cached_ssm_attention": frozenset({"backend"}),
    "insert_cached_causal_conv": frozenset({"backend"}),
    "insert_cached_delta_rule": frozenset({"backend"}),
    "compile_model": frozenset({"backend", "cuda_graph_batch_sizes"}),
    "fuse_rmsnorm": frozenset({"backend"}),
    "detect_sharding": frozenset({
        "simple_shard_only", "sharding_source", "support_partial_config", "sharding_dims", "manual_config",
        "shard_all_unprocessed", "allreduce_strategy", "dist_backend", "requires_shape_prop",
    }),
}


def is_anchor_only_option(transform: str, option: str) -> bool:
    """An option of AutoDeploy's `transform` that ad's same-named transform lacks (dropped with a warning)."""
    if option in SHARED_TRANSFORM_OPTIONS.get(transform, ()):
        return False
    return option in GENERIC_TRANSFORM_OPTIONS or option in TRANSFORM_OPTIONS.get(transform, ())


# option renames inside one transform (AutoDeploy name -> ad name)
RENAMED_TRANSFORM_OPTIONS: dict[tuple[str, str], str] = {
    ("resize_kv_cache", "free_mem_ratio"): "free_gpu_memory_fraction",
}
# backend values AutoDeploy documents (for any `*backend` option); an unsupported one falls back with a warning
BACKEND_VALUES = frozenset({
    "torch", "triton", "flashinfer", "trtllm", "cutlass", "fla", "flashinfer_mla", "torch_mla", "trtllm_mla",
    "triton_ssm", "flashinfer_ssm", "cuda_causal_conv", "fla_delta", "fla_gated_delta", "cached_residual_add",
    "torch-simple", "torch-compile", "torch-cudagraph", "torch-opt",
})
# backends that need TensorRT-LLM's C++ library: never available in ad, even without a registered transform
TRTLLM_ONLY_BACKENDS = frozenset({"trtllm", "trtllm_mla", "cutlass"})
