"""Hybrid registry entries (issue 17): published sizes, shrinking that keeps every layer kind, and `--plan` counting
KV for attention layers only plus the state slots of each sequence."""

from __future__ import annotations

import pytest

from autodeploy_cli.commands.plan import make_plan
from autodeploy_cli.config.loader import resolve
from autodeploy_cli.models.factory import ModelFactory
from model_registry import entry_params, get_entry

# id -> (parameters in billions, rounded to 0.1; world size)
ENTRIES = {
    "nvidia/Nemotron-H-8B-Base-8K": (8.1, 1), "nvidia/Nemotron-H-47B-Base-8K": (46.8, 1),
    "nvidia/NVIDIA-Nemotron-Nano-9B-v2": (8.9, 1), "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16": (31.6, 1),
    "ibm-ai-platform/Bamba-9B": (9.8, 1), "ibm-granite/granite-4.0-h-tiny": (6.9, 1),
    "ibm-granite/granite-4.0-h-small": (32.2, 1), "AntonV/mamba2-2.7b-hf": (2.7, 1),
    "Qwen/Qwen3-Next-80B-A3B-Instruct": (79.7, 2),
}


def test_entries_and_their_sizes():
    for name, (billions, ws) in ENTRIES.items():
        entry = get_entry(name)
        assert entry is not None and entry["world_size"] == ws, name
        assert round(entry_params(name) / 1e9, 1) == billions, name


def _hf(name: str, *extra: str):
    return ModelFactory(resolve([], [f"model={name}", *extra])).hf_config()


@pytest.mark.parametrize("name, requested, kept", [
    ("nvidia/Nemotron-H-8B-Base-8K", 2, 8),  # its first attention layer is the 8th
    ("Qwen/Qwen3-Next-80B-A3B-Instruct", 2, 4),  # 3 DeltaNet layers, then attention
    ("ibm-ai-platform/Bamba-9B", 3, 10),
    ("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", 12, 12),  # already holds M, E and *
])
def test_num_hidden_layers_keeps_every_layer_kind(name, requested, kept):
    hf = _hf(name, f"model_kwargs.num_hidden_layers={requested}")
    assert hf.num_hidden_layers == kept and len(hf.layer_types) == kept
    full = _hf(name)
    assert list(hf.layer_types) == list(full.layer_types)[:kept]  # a prefix: real checkpoints load into it
    assert set(hf.layer_types) == set(full.layer_types)
    if name.startswith("ibm-ai-platform"):
        assert hf.attn_layer_indices == [9]


def test_explicit_layer_list_and_plain_models_are_left_as_asked():
    hf = _hf("Qwen/Qwen3-Next-80B-A3B-Instruct", "model_kwargs.num_hidden_layers=2",
             "model_kwargs.layer_types=[linear_attention,linear_attention]")
    assert hf.num_hidden_layers == 2 and hf.layer_types == ["linear_attention", "linear_attention"]
    assert _hf("AntonV/mamba2-2.7b-hf", "model_kwargs.num_hidden_layers=3").num_hidden_layers == 3  # one kind
    assert _hf("meta-llama/Llama-3.1-8B", "model_kwargs.num_hidden_layers=2").num_hidden_layers == 2


def test_plan_counts_attention_kv_and_state_slots():
    plan = make_plan(resolve(model="nvidia/Nemotron-H-8B-Base-8K"), "141GB")
    assert plan.attention_layers == 4
    assert plan.kv_bytes_per_token == 4 * 2 * 8 * 128 * 2
    # auto follows Nemotron-H's own mamba_ssm_cache_dtype (float32); conv states keep bf16
    ssm, conv = 128 * 64 * 128 * 4, (128 * 64 + 2 * 8 * 128) * 3 * 2
    assert plan.state_bytes_per_seq == 24 * (ssm + conv)
    budget = plan.rows[0].kv_budget
    assert plan.rows[0].max_seqs == budget // (plan.kv_bytes_per_token * 8192 + plan.state_bytes_per_seq)
    bamba = make_plan(resolve(model="ibm-ai-platform/Bamba-9B"), "141GB")  # no such field: the model dtype
    assert bamba.attention_layers == 3 and bamba.state_bytes_per_seq == 29 * (128 * 64 * 128 * 2 + 8448 * 3 * 2)
    fp32 = make_plan(resolve(model="ibm-ai-platform/Bamba-9B",
                             overrides=["kv_cache_config.mamba_ssm_cache_dtype=float32"]), "141GB")
    assert fp32.state_bytes_per_seq == 29 * (128 * 64 * 128 * 4 + 8448 * 3 * 2)
    mamba = make_plan(resolve(model="AntonV/mamba2-2.7b-hf"), "141GB")
    assert mamba.kv_bytes_per_token == 0 and mamba.state_bytes_per_seq == 64 * (80 * 64 * 128 * 2 + 5376 * 3 * 2)
