"""Tiny random-weight configs of real HF architectures (no downloads), shared by the tests.

Each is 2 layers with small widths but the family's real structure (GQA, sliding window, soft-capping, MoE...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COMMON = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2,
              pad_token_id=0, tie_word_embeddings=False)

TINY: dict[str, dict[str, Any]] = {
    "llama": dict(model_type="llama", **COMMON),
    "mistral": dict(model_type="mistral", sliding_window=None, **COMMON),
    "qwen2": dict(model_type="qwen2", **COMMON),
    "qwen3": dict(model_type="qwen3", **COMMON),
    "phi3": dict(model_type="phi3", **{**COMMON, "head_dim": None}, ),
    "gemma": dict(model_type="gemma", **COMMON),
    "gemma2": dict(model_type="gemma2", attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=4,
                   query_pre_attn_scalar=16, **COMMON),
    "gemma3": dict(model_type="gemma3_text", sliding_window=4, layer_types=["sliding_attention", "full_attention"],
                   query_pre_attn_scalar=16, **COMMON),
    "mixtral": dict(model_type="mixtral", num_local_experts=4, num_experts_per_tok=2, **COMMON),
    "qwen2_moe": dict(model_type="qwen2_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=48, decoder_sparse_step=1, **COMMON),
    "qwen3_moe": dict(model_type="qwen3_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      decoder_sparse_step=1, **COMMON),
    "nemotron": dict(model_type="nemotron", **COMMON),  # relu^2 MLP (up_proj -> down_proj), partial rotary
}
TINY["phi3"].pop("head_dim")

# Multi-head latent attention (DeepSeek-V2/V3): dense MLPs in both layers (first_k_dense_replace = layers) so
# the MoE routing stays out of the way; `MOE_LAYER` turns layer 1 into an MoE layer
MLA = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=4, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0,
           tie_word_embeddings=False, kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
           first_k_dense_replace=2, moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2,
           n_shared_experts=1, n_group=1, topk_group=1)
TINY["deepseek_v2"] = dict(model_type="deepseek_v2", q_lora_rank=None, **MLA)
TINY["deepseek_v3"] = dict(model_type="deepseek_v3", q_lora_rank=24, **MLA)
# yarn with mscale != mscale_all_dim: cos/sin (the RoPE part) carry mscale / mscale_all_dim, the softmax scale
# mscale_all_dim ** 2
YARN = dict(rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=256, mscale=1.0,
                              mscale_all_dim=0.8, beta_fast=32, beta_slow=1))
MOE_LAYER = dict(first_k_dense_replace=1)
# Hybrids with stateful token mixers: SSD chunk size 8 (prompts span several chunks), every layer kind once.
_HYBRID = {k: COMMON[k] for k in ("vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                                  "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
                                  "tie_word_embeddings")}
_MAMBA = dict(mamba_n_heads=8, mamba_d_head=16, mamba_n_groups=2, mamba_d_state=16, mamba_d_conv=4, mamba_chunk_size=8)
TINY.update({
    # Mamba2, MLP, attention and MoE (the Nemotron 3 Nano kind) layers
    "nemotron_h": dict(model_type="nemotron_h", layers_block_type=["linear_attention", "mlp", "full_attention", "moe"],
                       intermediate_size=96, mamba_num_heads=8, mamba_head_dim=16, n_groups=2, ssm_state_size=16,
                       conv_kernel=4, chunk_size=8, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                       moe_shared_expert_intermediate_size=32, **_HYBRID),
    "bamba": dict(model_type="bamba", num_hidden_layers=2, attn_layer_indices=[1], intermediate_size=96, **_MAMBA,
                  **_HYBRID),
    "granitemoehybrid": dict(model_type="granitemoehybrid", num_hidden_layers=2,
                             layer_types=["linear_attention", "full_attention"], intermediate_size=96,
                             shared_intermediate_size=96, num_local_experts=4, num_experts_per_tok=2,
                             position_embedding_type="rope", **_MAMBA, **_HYBRID),
    "mamba2": dict(model_type="mamba2", num_hidden_layers=2, hidden_size=64, num_heads=8, head_dim=16, n_groups=2,
                   state_size=16, conv_kernel=4, chunk_size=8, vocab_size=320, bos_token_id=1, eos_token_id=2,
                   pad_token_id=0),
    "qwen3_next": dict(model_type="qwen3_next", num_hidden_layers=2, layer_types=["linear_attention", "full_attention"],
                       intermediate_size=96, linear_conv_kernel_dim=4, linear_key_head_dim=16, linear_value_head_dim=16,
                       linear_num_key_heads=2, linear_num_value_heads=4, num_experts=4, num_experts_per_tok=2,
                       moe_intermediate_size=32, shared_expert_intermediate_size=48, **_HYBRID),
})
HYBRIDS = ("nemotron_h", "bamba", "granitemoehybrid", "mamba2", "qwen3_next")
# MoE routing forms (tests/e2e/test_run_moe_routing.py); MLA families need kv heads == heads
_MLA = {k: v for k, v in COMMON.items() if k not in ("head_dim", "num_key_value_heads")}
_GROUPED = dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1,
                first_k_dense_replace=1, n_group=4, topk_group=2)
TINY.update({
    # softmax top-k without renormalisation
    "olmoe": dict(model_type="olmoe", num_experts=4, num_experts_per_tok=2, **COMMON),
    # top-k of the logits, then softmax over the k kept
    "granitemoe": dict(model_type="granitemoe", num_local_experts=4, num_experts_per_tok=2, **COMMON),
    # sparsemixer top-2 (two masked softmaxes)
    "phimoe": dict(model_type="phimoe", num_local_experts=4, num_experts_per_tok=2, **COMMON),
    # transposed, interleaved gate|up with biases, clamped SwiGLU; router bias; attention sinks, sliding layers
    "gpt_oss": dict(model_type="gpt_oss", num_local_experts=4, num_experts_per_tok=2, sliding_window=4,
                    layer_types=["sliding_attention", "full_attention"],
                    **{**COMMON, "max_position_embeddings": 131072}),  # YaRN's 32 x 4096
    # sigmoid scores + correction bias, group-limited top-k, renormalised, routed scaling; a shared expert
    "deepseek_v3_moe": dict(model_type="deepseek_v3", kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8,
                        qk_nope_head_dim=16, v_head_dim=16, routed_scaling_factor=2.5, **_GROUPED, **_MLA),
    # softmax + group-limited greedy top-k (no renormalisation), routed scaling; a shared expert
    "deepseek_v2_moe": dict(model_type="deepseek_v2", kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8,
                        qk_nope_head_dim=16, v_head_dim=16, topk_method="group_limited_greedy",
                        routed_scaling_factor=2.0, **_GROUPED, **_MLA),
    # DeepSeek-V3 routing in a GQA model (dots.llm1; GLM-4.5 routes the same way)
    "dots1": dict(model_type="dots1", routed_scaling_factor=2.5, **_GROUPED, **COMMON),
    # Llama-4: sigmoid of the top-1 logit applied to the expert's input; a shared expert
    "llama4_text": dict(model_type="llama4_text", num_local_experts=4, num_experts_per_tok=1,
                        intermediate_size_mlp=96, **COMMON),
    # non-gated relu^2 experts with a shared expert, attention-only layers (no Mamba)
    "nemotron_h_moe": dict(model_type="nemotron_h", layers_block_type=["attention", "moe"], n_routed_experts=4,
                           num_experts_per_tok=2, moe_intermediate_size=32, moe_shared_expert_intermediate_size=48,
                           **{k: v for k, v in COMMON.items() if k != "num_hidden_layers"}),
})

# Older dense forms (issue 21): ALiBi, absolute positions, parallel blocks, LayerNorm with bias, MQA, local layers.
# Each in its own config names, sized like COMMON (hidden 64, 4 heads of 16, 2 layers, vocabulary 320).
SPECIAL = dict(vocab_size=320, bos_token_id=1, eos_token_id=2, pad_token_id=0)
TINY.update({
    # ALiBi
    "bloom": dict(model_type="bloom", hidden_size=64, n_head=4, n_layer=2, **SPECIAL),
    "mpt": dict(model_type="mpt", d_model=64, n_heads=4, n_layers=2, expansion_ratio=2, max_seq_len=256, **SPECIAL),
    "falcon_alibi": dict(model_type="falcon", hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                         alibi=True, multi_query=False, parallel_attn=False, bias=True, **SPECIAL),
    # RoPE, multi-query (one KV head), parallel attention + MLP
    "falcon": dict(model_type="falcon", hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                   multi_query=True, parallel_attn=True, alibi=False, **SPECIAL),
    # learned absolute positions (GPT-2: tied head, Conv1D linears; OPT: offset 2; GPT-Neo: local/global layers)
    "gpt2": dict(model_type="gpt2", n_embd=64, n_head=4, n_layer=2, n_inner=96, n_positions=256, **SPECIAL),
    "opt": dict(model_type="opt", hidden_size=64, num_attention_heads=4, num_hidden_layers=2, ffn_dim=96,
                word_embed_proj_dim=64, max_position_embeddings=256, **SPECIAL),
    "gpt_neo": dict(model_type="gpt_neo", hidden_size=64, num_heads=4, num_layers=2, window_size=4,
                    attention_types=[[["global", "local"], 1]], max_position_embeddings=256, **SPECIAL),
    # sinusoidal absolute positions (XGLM: computed from position_ids; CTRL: a table at init)
    "xglm": dict(model_type="xglm", d_model=64, attention_heads=4, num_layers=2, ffn_dim=96,
                 max_position_embeddings=256, **SPECIAL),
    "ctrl": dict(model_type="ctrl", n_embd=64, n_head=4, n_layer=2, dff=96, n_positions=256, **SPECIAL),
    # parallel blocks with partial rotary (GPT-J: untied head; GPT-NeoX: untied, parallel residual)
    "gptj": dict(model_type="gptj", n_embd=64, n_head=4, n_layer=2, rotary_dim=8, n_positions=256, **SPECIAL),
    "gpt_neox": dict(model_type="gpt_neox", hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                     intermediate_size=96, rotary_pct=0.25, **SPECIAL),
    # multi-query attention with learned positions
    "gpt_bigcode": dict(model_type="gpt_bigcode", n_embd=64, n_head=4, n_layer=2, n_positions=256,
                        multi_query=True, **SPECIAL),
    # 3-D baddbmm attention + RoPE whose output feeds a view
    "gpt_neox_japanese": dict(model_type="gpt_neox_japanese", hidden_size=64, num_attention_heads=4,
                              num_hidden_layers=2, intermediate_multiple_size=1, **SPECIAL),
    # refused: a short causal convolution between attention layers (no cached form yet); GPT-1's masked product
    "lfm2": dict(model_type="lfm2", hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                 num_hidden_layers=2, intermediate_size=96, layer_types=["conv", "full_attention"], **SPECIAL),
    "openai-gpt": dict(model_type="openai-gpt", n_embd=64, n_head=4, n_layer=2, n_positions=256, **SPECIAL),
})


def tiny_hf_config(family: str, **overrides: Any):
    """A transformers config object for `family`."""
    from transformers import AutoConfig

    values = {**TINY[family], **overrides}
    model_type = values.pop("model_type")
    return AutoConfig.for_model(model_type, **values)


def write_tiny_model_dir(path: Path, family: str, **overrides: Any) -> Path:
    """A local HF folder (config.json + the shipped byte tokenizer) usable as `model: <path>`, no weights."""
    import shutil

    from model_registry import local_model_dir

    path.mkdir(parents=True, exist_ok=True)
    tiny_hf_config(family, **overrides).save_pretrained(path)
    tok_dir = local_model_dir("ad-tiny-llama")
    assert tok_dir is not None
    for f in tok_dir.iterdir():
        if f.name != "config.json":
            shutil.copy(f, path / f.name)
    return path


def config_json(family: str) -> str:
    return json.dumps(TINY[family])
