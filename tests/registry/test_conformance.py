"""`ad models --check`: shrinking keeps each architecture's structure; one entry per family passes --verify on CPU."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from autodeploy_cli.cli import app
from autodeploy_cli.conformance import check_entry, shrink_kwargs
from model_registry import hf_architecture, load_registry

runner = CliRunner()


def shrunk(name: str) -> dict:
    return shrink_kwargs(hf_architecture(name))


def test_shrink_keeps_head_dim_and_gqa_ratio():
    kw = shrunk("meta-llama/Llama-3.1-8B-Instruct")  # 32 heads / 8 KV heads x 128
    assert {k: kw[k] for k in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                               "hidden_size", "intermediate_size", "vocab_size")} == dict(
        num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, head_dim=128, hidden_size=1024,
        intermediate_size=256, vocab_size=512)
    kw = shrunk("Qwen/Qwen2.5-7B-Instruct")  # 28 / 4: ratio 7
    assert (kw["num_attention_heads"], kw["num_key_value_heads"], kw["head_dim"]) == (14, 2, 128)
    kw = shrunk("google/gemma-2b-it")  # multi-query: 8 / 1 x 256
    assert (kw["num_attention_heads"], kw["num_key_value_heads"], kw["hidden_size"]) == (8, 1, 2048)
    kw = shrunk("meta-llama/Llama-2-7b-hf")  # multi-head: 32 / 32
    assert (kw["num_attention_heads"], kw["num_key_value_heads"]) == (2, 2)


def test_shrink_keeps_one_layer_of_each_kind():
    assert shrunk("google/gemma-3-1b-it")["layer_types"] == ["sliding_attention", "full_attention"]
    assert shrunk("LGAI-EXAONE/EXAONE-4.0-32B")["layer_types"] == ["sliding_attention", "full_attention"]
    assert shrunk("HuggingFaceTB/SmolLM3-3B")["no_rope_layers"] == [1, 0]  # layer 3 of 4 has no RoPE
    assert shrunk("google/gemma-2-9b-it")["layer_types"] == ["sliding_attention", "full_attention"]
    assert shrunk("Qwen/Qwen2.5-7B-Instruct")["layer_types"] == ["full_attention", "full_attention"]


def test_shrink_keeps_moe_routing():
    kw = shrunk("Qwen/Qwen3-30B-A3B")  # 128 experts, top-8
    assert (kw["num_experts"], kw["moe_intermediate_size"]) == (16, 64)
    assert "num_experts_per_tok" not in kw  # top-k untouched
    assert shrunk("mistralai/Mixtral-8x7B-Instruct-v0.1")["num_local_experts"] == 4  # top-2
    kw = shrunk("Qwen/Qwen1.5-MoE-A2.7B-Chat")  # 60 experts, top-4, shared expert
    assert (kw["num_experts"], kw["shared_expert_intermediate_size"]) == (8, 128)


def test_shrink_keeps_special_token_ids_in_the_small_vocabulary():
    from autodeploy_cli.hf_arch import config_from_values

    kw = shrunk("google/gemma-2b-it")
    assert "pad_token_id" not in kw  # 0 already fits
    kw = shrunk("HuggingFaceTB/SmolLM3-3B")  # Llama-3 tokenizer ids 128000...
    assert kw["bos_token_id"] < 512
    cfg = config_from_values(hf_architecture("HuggingFaceTB/SmolLM3-3B"), kw)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(cfg, key)
        assert value is None or all(v < 512 for v in (value if isinstance(value, list) else [value]))


def test_unsupported_entries_are_counted_not_built(tmp_path):
    report = tmp_path / "c.md"
    result = runner.invoke(app, ["models", "--check", "--family", "exaone", "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "3 entries: 0 pass, 0 fail, 3 unsupported" in result.stdout
    text = report.read_text()
    assert "**3 entries: 0 pass, 0 fail, 3 unsupported (marked in models.yaml with the reason).**" in text
    assert "| LGAI-EXAONE/EXAONE-3.5-32B-Instruct | exaone | unsupported |" in text


def test_a_failing_entry_is_a_result_not_a_crash(monkeypatch):
    import autodeploy_cli.conformance as conf

    def boom(*a, **k):
        raise RuntimeError("kaboom\nsecond line")

    monkeypatch.setattr(conf, "check_config", boom)
    r = check_entry("Qwen/Qwen3-0.6B")
    assert (r.status, r.error) == ("fail", "RuntimeError: kaboom")


def test_one_entry_per_family_passes_verify_on_cpu(tmp_path):
    report = tmp_path / "conformance.md"
    result = runner.invoke(app, ["models", "--check", "--one-per-family", "--report", str(report)])
    families = {e["family"] for e in load_registry().values() if not e.get("unsupported")}
    lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == len(families) == 17
    failed = [line for line in lines if "] PASS " not in line]
    assert not failed, "\n".join(failed)
    assert result.exit_code == 0
    assert f"{len(families)} entries: {len(families)} pass, 0 fail, 0 unsupported" in result.stdout
    assert "| internlm/internlm3-8b-instruct | internlm3 | pass |" in report.read_text()
