"""The registry file itself: every entry resolves, has its layers and facts, and covers the families of issue 7."""

from __future__ import annotations

import re

import pytest

from autodeploy_cli.config.loader import resolve
from model_registry import (CONFIGS_DIR, entry_params, get_entry, hf_architecture, load_architectures,
                            load_registry, registry_layers)

REG = load_registry()
SUPPORTED = [n for n, e in REG.items() if not e.get("unsupported") and not e.get("local_dir")]
UNSUPPORTED = [n for n, e in REG.items() if e.get("unsupported")]
SEQ = {"1k": 1024, "2k": 2048, "4k": 4096, "8k": 8192, "32k": 32768}
HYBRID_FAMILIES = ("nemotron_h", "bamba", "granitemoehybrid", "mamba2", "qwen3_next")
_SHAPES = {"model_type", "hidden_size", "num_hidden_layers", "vocab_size", "tie_word_embeddings"}
_ATTN = _SHAPES | {"intermediate_size", "num_attention_heads", "num_key_value_heads", "max_position_embeddings"}
HYBRID_FACTS = {  # the shape facts each hybrid family's config.json has (per-layer kinds and mixer sizes included)
    "nemotron_h": _ATTN | {"hybrid_override_pattern", "mamba_num_heads", "mamba_head_dim", "ssm_state_size",
                           "n_groups", "conv_kernel", "chunk_size"},
    "bamba": _ATTN | {"rope_theta", "attn_layer_indices", "mamba_n_heads", "mamba_d_head", "mamba_d_state",
                      "mamba_d_conv", "mamba_chunk_size"},
    "granitemoehybrid": _ATTN | {"layer_types", "mamba_n_heads", "mamba_d_head", "mamba_d_state", "mamba_d_conv",
                                 "mamba_chunk_size", "num_local_experts"},
    "mamba2": _SHAPES | {"num_heads", "head_dim", "state_size", "n_groups", "conv_kernel", "chunk_size"},
    "qwen3_next": _ATTN | {"rope_theta", "full_attention_interval", "linear_num_key_heads", "linear_num_value_heads",
                           "linear_key_head_dim", "linear_value_head_dim", "linear_conv_kernel_dim", "num_experts"},
}


def test_at_least_100_real_hf_ids_build_offline():
    """Each entry's stored architecture builds its HF model on the meta device, offline, with the shapes the stored
    values say (one build per distinct architecture; entries sharing one share its model)."""
    from autodeploy_cli.models.hf_arch import config_from_values, meta_model

    assert len(SUPPORTED) >= 100
    built: dict = {}
    for name in SUPPORTED:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", name), name  # a hub id of the form org/name
        values = hf_architecture(name)
        assert values is not None, name
        key = REG[name].get("arch", name)
        if key not in built:
            config = config_from_values(values)
            model = meta_model(config)
            text = config.get_text_config()  # older families store n_embd, d_model, n_layer, ...: read them mapped
            emb = model.get_input_embeddings().weight
            assert tuple(emb.shape) == (text.vocab_size, text.hidden_size), name
            assert emb.device.type == "meta"
            head = model.get_output_embeddings().weight
            assert tuple(head.shape) == (text.vocab_size, text.hidden_size), name
            built[key] = sum(1 for n, _ in model.named_modules() if re.search(r"(?:layers|h|blocks)\.\d+$", n))
            assert built[key] == text.num_hidden_layers, name


def test_every_entry_resolves_with_its_layers():
    for name, entry in REG.items():
        cfg = resolve(model=name)
        assert cfg.model == name
        assert cfg.world_size == entry["world_size"], name
        layers = entry["yaml_extra"]
        assert all((CONFIGS_DIR / f).is_file() for f in layers), name
        assert [src for src, _ in registry_layers(name)] == [f"model_registry/configs/{f}" for f in layers]
        if entry.get("local_dir"):
            continue
        assert f"world_size_{entry['world_size']}.yaml" in layers, name
        (seq,) = [f for f in layers if f.startswith("max_seq_len_")]
        assert cfg.max_seq_len == SEQ[seq[len("max_seq_len_"):-len(".yaml")]], name
        values = hf_architecture(name)
        if values is not None:  # the max_seq_len layer is the model's context capped at 8k (Bloom: 2k trained,
            from autodeploy_cli.models.hf_arch import config_from_values  # Mamba2: no limit)

            unlimited = 8192 if get_entry(name)["family"] == "mamba2" else 2048
            context = getattr(config_from_values(values), "max_position_embeddings", None) or \
                values.get("max_seq_len") or unlimited
            assert cfg.max_seq_len == min(context, 8192), name


def test_user_config_and_overrides_win_over_registry_layers(tmp_path):
    name = "meta-llama/Llama-3.1-70B-Instruct"
    assert resolve(model=name).world_size == 2
    user = tmp_path / "mine.yaml"
    user.write_text("max_seq_len: 1024\n")
    cfg = resolve([user], ["world_size=1"], model=name)
    assert (cfg.world_size, cfg.max_seq_len) == (1, 1024)


def test_entries_cover_the_issue_families():
    families = {e["family"] for n, e in REG.items() if n in SUPPORTED}
    assert {"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "phi3", "gemma", "gemma2",
            "gemma3", "smollm3", "granite", "olmo2", "starcoder2", "internlm3", "exaone4", "deepseek_v2",
            "deepseek_v3"} <= families
    ids = " ".join(SUPPORTED)
    for needle in ("Llama-2", "Llama-3-", "Llama-3.1", "Llama-3.2", "Llama-3.3", "CodeLlama", "TinyLlama",
                   "DeepSeek-R1-Distill-Llama", "Minitron", "Ministral", "Codestral", "Mixtral", "Qwen2-", "Qwen2.5",
                   "Qwen3-", "Coder", "DeepSeek-R1-Distill-Qwen", "Qwen1.5-MoE", "Qwen3-30B-A3B", "Phi-3", "phi-4",
                   "gemma-2b", "gemma-2-", "gemma-3-", "SmolLM2", "SmolLM3", "granite-3", "OLMo-2", "starcoder2",
                   "Falcon3", "internlm3", "EXAONE", "gpt-oss-20b", "gpt-oss-120b", "OLMoE", "Phi-3.5-MoE",
                   "a400m", "a800m", "DeepSeek-V2-Lite", "Moonlight-16B-A3B", "Qwen3-235B-A22B", "Llama-4-Scout",
                   "DeepSeek-V3", "DeepSeek-R1", "DeepSeek-V3.1", "Kimi-K2"):
        assert needle in ids, needle


def test_entry_family_matches_its_architecture():
    model_types = {"llama": {"llama"}, "mistral": {"mistral"}, "mixtral": {"mixtral"}, "qwen2": {"qwen2"},
                   "qwen3": {"qwen3"}, "qwen3_moe": {"qwen3_moe"}, "qwen2_moe": {"qwen2_moe"}, "phi3": {"phi3"},
                   "gemma": {"gemma"}, "gemma2": {"gemma2"}, "gemma3": {"gemma3_text"}, "smollm3": {"smollm3"},
                   "granite": {"granite"}, "olmo2": {"olmo2"}, "starcoder2": {"starcoder2"},
                   "internlm3": {"internlm3"}, "exaone4": {"exaone4"}, "gpt_oss": {"gpt_oss"}, "olmoe": {"olmoe"},
                   "phimoe": {"phimoe"}, "granitemoe": {"granitemoe"}, "deepseek_v2": {"deepseek_v2"},
                   "deepseek_v3": {"deepseek_v3"}, "llama4_text": {"llama4_text"}, **{f: {f} for f in HYBRID_FAMILIES},
                   "gpt2": {"gpt2"}, "bloom": {"bloom"}, "opt": {"opt"},
                   "gpt_neo": {"gpt_neo"}, "gpt_neox": {"gpt_neox"}, "gptj": {"gptj"}, "falcon": {"falcon"},
                   "mpt": {"mpt"}, "gpt_bigcode": {"gpt_bigcode"}, "phi": {"phi"}, "xglm": {"xglm"}}
    for name in SUPPORTED:
        assert hf_architecture(name)["model_type"] in model_types[get_entry(name)["family"]], name


def test_unsupported_entries_say_why_and_store_no_architecture():
    assert len(UNSUPPORTED) >= 1
    for name in UNSUPPORTED:
        reason = REG[name]["unsupported"]
        assert isinstance(reason, str) and len(reason) > 40, name
        assert hf_architecture(name) is None and entry_params(name) is None


def test_architectures_hold_the_shape_facts():
    required = {"model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "max_position_embeddings", "rope_theta", "tie_word_embeddings"}
    used = {REG[n]["arch"] for n in SUPPORTED}
    assert used == {a for a in load_architectures() if not a.startswith("_")}  # no orphan architectures
    from autodeploy_cli.models.hf_arch import attention_dims, config_from_values

    archs = load_architectures()
    for name in SUPPORTED:
        values = hf_architecture(name)
        if archs[REG[name]["arch"]][0] == "classic.yaml":  # own config names: the shape facts through the config
            config = config_from_values(values)
            assert all(int(getattr(config, k)) > 0 for k in ("hidden_size", "num_hidden_layers", "vocab_size")), name
            heads, kv, head_dim = attention_dims(config)
            assert heads % kv == 0 and heads * head_dim == config.hidden_size, name
            continue
        family = get_entry(name)["family"]  # hybrids: their own facts (Nemotron-H has no RoPE, Mamba2 no attention)
        missing = (HYBRID_FACTS[family] if family in HYBRID_FACTS else required) - set(values)
        assert not missing, (name, missing)
        eps = values.get("rms_norm_eps", values.get("norm_epsilon", values.get("layer_norm_epsilon")))
        assert eps in (1e-5, 1e-6), name


@pytest.mark.parametrize("name", ["bad/id", "meta-llama/Llama-3.1-8B-Instruct"])
def test_registry_layers_of_unknown_and_known(name):
    layers = registry_layers(name)
    assert (layers == []) == (get_entry(name) is None)
