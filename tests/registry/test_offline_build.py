"""Registered hub ids build offline with the exact shapes of their published config.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.errors import ADError
from autodeploy_cli.models.factory import ModelFactory
from autodeploy_cli.models.hf_arch import count_params, meta_model

# Published config.json values (and safetensors parameter totals) of the flagship models
FLAGSHIPS = {
    "meta-llama/Llama-3.1-8B-Instruct": dict(
        model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=131072,
        tie_word_embeddings=False, rms_norm_eps=1e-5,
        rope={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        params=8_030_261_248),
    "Qwen/Qwen2.5-7B-Instruct": dict(
        model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, head_dim=128, vocab_size=152064, max_position_embeddings=32768,
        tie_word_embeddings=False, rms_norm_eps=1e-6, rope={"rope_type": "default", "rope_theta": 1000000.0},
        params=7_615_616_512),
    "mistralai/Mistral-7B-v0.1": dict(
        model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=32000, max_position_embeddings=32768, sliding_window=4096,
        tie_word_embeddings=False, rms_norm_eps=1e-5, rope={"rope_type": "default", "rope_theta": 10000.0},
        params=7_241_732_096),
    "mistralai/Mistral-7B-Instruct-v0.3": dict(
        model_type="mistral", vocab_size=32768, sliding_window=None, rope={"rope_type": "default",
                                                                           "rope_theta": 1000000.0},
        params=7_248_023_552),
    "mistralai/Mixtral-8x7B-Instruct-v0.1": dict(
        model_type="mixtral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=32000, num_local_experts=8, num_experts_per_tok=2,
        max_position_embeddings=32768, sliding_window=None, rope={"rope_type": "default", "rope_theta": 1000000.0},
        params=46_702_792_704),
    "Qwen/Qwen3-30B-A3B": dict(
        model_type="qwen3_moe", hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
        num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
        num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1, vocab_size=151936,
        max_position_embeddings=40960, tie_word_embeddings=False, rms_norm_eps=1e-6,
        rope={"rope_type": "default", "rope_theta": 1000000.0}, params=30_532_122_624),
    "microsoft/Phi-3-mini-4k-instruct": dict(
        model_type="phi3", hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096, original_max_position_embeddings=4096,
        sliding_window=2047, tie_word_embeddings=False, rope={"rope_type": "default", "rope_theta": 10000.0},
        params=3_821_079_552),
    "google/gemma-2-9b-it": dict(
        model_type="gemma2", hidden_size=3584, intermediate_size=14336, num_hidden_layers=42, num_attention_heads=16,
        num_key_value_heads=8, head_dim=256, vocab_size=256000, max_position_embeddings=8192, sliding_window=4096,
        attn_logit_softcapping=50.0, final_logit_softcapping=30.0, query_pre_attn_scalar=256,
        tie_word_embeddings=True, rms_norm_eps=1e-6, rope={"rope_type": "default", "rope_theta": 10000.0},
        params=9_241_705_984),
}


def _factory(name: str, **over) -> ModelFactory:
    return ModelFactory(resolve(overrides={"device": "cpu", **over}, model=name))


@pytest.mark.parametrize("name", list(FLAGSHIPS))
def test_flagship_config_and_param_count(name):
    facts = dict(FLAGSHIPS[name])
    hf = _factory(name).hf_config()  # no network (tests run with HF_HUB_OFFLINE=1), no HF cache: stored values
    assert hf.model_type == facts.pop("model_type")
    params = facts.pop("params")
    rope = facts.pop("rope")
    assert {k: v for k, v in hf.rope_parameters.items() if k in rope} == rope
    head_dim = facts.pop("head_dim", None)
    if head_dim is not None:  # Qwen2/Mixtral configs derive it
        assert (getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads) == head_dim
    for key, value in facts.items():
        assert getattr(hf, key) == value, key
    assert count_params(meta_model(hf)) == params


def test_llama_3_1_8b_layer_shapes_on_the_meta_model():
    model = _factory("meta-llama/Llama-3.1-8B-Instruct").build_meta_model()
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes["model.embed_tokens.weight"] == (128256, 4096)
    assert shapes["lm_head.weight"] == (128256, 4096)
    assert shapes["model.layers.31.self_attn.k_proj.weight"] == (1024, 4096)  # 8 KV heads x 128
    assert shapes["model.layers.31.mlp.gate_proj.weight"] == (14336, 4096)
    assert "model.layers.32.mlp.gate_proj.weight" not in shapes


def test_offline_build_of_a_registry_id_exports_the_exact_shapes():
    from autodeploy_cli.pipeline.build import build

    cfg = resolve(overrides={"device": "cpu", "skip_loading_weights": True, "max_seq_len": 128}, model="google/gemma-3-270m-it")
    result = build(cfg, stop_after="export_to_gm")
    gm = result.model
    shapes = {n: tuple(p.shape) for n, p in gm.named_parameters()}
    assert shapes["model.embed_tokens.weight"] == (262144, 640)
    assert shapes["model.layers.17.self_attn.q_proj.weight"] == (1024, 640)  # 4 heads x 256
    assert shapes["model.layers.17.self_attn.k_proj.weight"] == (256, 640)  # 1 KV head x 256
    assert "model.layers.18.self_attn.q_proj.weight" not in shapes
    assert result.report["graph_nodes"]["after_export"] > 0
    assert sum(p.numel() for p in gm.parameters()) == 268_098_176


def test_model_kwargs_reach_the_stored_architecture():
    hf = _factory("Qwen/Qwen3-8B", model_kwargs={"num_hidden_layers": 2}).hf_config()
    assert (hf.num_hidden_layers, hf.hidden_size, len(hf.layer_types)) == (2, 4096, 2)


def test_real_weights_of_a_registry_id_without_network_ask_for_a_local_folder():
    factory = _factory("HuggingFaceTB/SmolLM2-135M-Instruct", model_kwargs={"num_hidden_layers": 1})
    with pytest.raises(ADError, match=r"Could not load the weights of `HuggingFaceTB/SmolLM2-135M-Instruct` from the "
                                      r"Hugging Face hub \(HF_HUB_OFFLINE=1\).*point `model` at the local folder"):
        factory.materialize(torch.device("cpu"))


def test_a_config_in_the_hf_cache_wins_over_the_stored_values(tmp_path):
    snap = tmp_path / "models--Qwen--Qwen3-0.6B" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (tmp_path / "models--Qwen--Qwen3-0.6B" / "refs").mkdir()
    (tmp_path / "models--Qwen--Qwen3-0.6B" / "refs" / "main").write_text("0123abcd")
    (snap / "config.json").write_text(json.dumps({"model_type": "qwen3", "num_hidden_layers": 3, "hidden_size": 64,
                                                  "num_attention_heads": 4, "num_key_value_heads": 2}))
    code = ("from autodeploy_cli.config.loader import resolve; from autodeploy_cli.models.factory import ModelFactory; "
            "hf = ModelFactory(resolve(model='Qwen/Qwen3-0.6B')).hf_config(); print(hf.num_hidden_layers, hf.hidden_size)")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3", "64"]
    env["HF_HUB_CACHE"] = str(tmp_path / "empty")  # nothing cached: the stored architecture
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split() == ["28", "1024"], out.stderr


def test_fp8_entries_build_offline_with_their_stored_quant_config():
    from autodeploy_cli.commands.conformance import check_entry

    for name, want in (("nvidia/Llama-3.1-405B-Instruct-FP8", ("modelopt", "tensor", "static", "fp8")),
                       ("Qwen/Qwen3-8B-FP8", ("hf-fp8", "block", "dynamic", None))):
        s = ModelFactory(resolve(model=name)).quant_scheme()
        assert (s.source, s.weights, s.activations, s.kv_cache) == want, name
    result = check_entry("nvidia/Llama-3.1-8B-Instruct-FP8")  # shrunk, random weights quantized as stored, --verify
    assert result.status == "pass", result.error
    assert result.canonical_ops["auto_deploy.torch_quant_fp8_linear"] == 14
