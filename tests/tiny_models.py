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
