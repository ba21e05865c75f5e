"""`ad build --plan`: parameter count, weight bytes, KV bytes per token, max concurrent sequences, world size."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from autodeploy_cli.cli import app
from autodeploy_cli.config.loader import resolve
from autodeploy_cli.errors import ADError
from autodeploy_cli.commands.plan import make_plan, parse_mem

runner = CliRunner()
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"


def test_acceptance_llama_3_1_8b_plan_from_the_cli():
    result = runner.invoke(app, ["build", "--model", LLAMA_8B, "--plan", "--gpu-mem", "141GB"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "  8.03B parameters (8,030,261,248)\n" in out
    assert "  weights: 16,060,522,496 bytes (16.06 GB) in bfloat16 (2 bytes/param)\n" in out
    assert ("  KV cache: 131072 bytes of bf16 KV per token = 32 layers x 8 KV heads x 128 head_dim x 2 (K and V) x 2 "
            "bytes\n") in out
    # (141e9 - 16060522496 - 7.05e9 reserve) x 0.9 // (131072 B x 8192 tokens)
    budget = int((141 * 10**9 - 16_060_522_496 - 7_050_000_000) * 0.9)
    assert budget // (131072 * 8192) == 98
    table = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["1"], ["8"])}
    assert table["1"] == ["1", "16.06", "GB", "131,072", f"{budget / 1e9:.2f}", "GB", "98"]
    assert table["8"][:4] == ["8", "2.01", "GB", "16,384"]
    assert "  recommended world size: 1 (smallest that holds max_batch_size=8 sequences of 8192 tokens)\n" in out
    assert "--gpu-mem 141GB" in out


def test_plan_loads_no_weights_and_honours_overrides():
    plan = make_plan(resolve(overrides=["max_seq_len=4096", "max_batch_size=64", "kv_cache_config.dtype=fp8"], model=LLAMA_8B),
                     "80GB")
    assert (plan.kv_dtype, plan.kv_bytes_per_token, plan.max_seq_len) == ("fp8", 65536, 4096)
    row1 = plan.rows[0]
    reserve = 4 * 10**9  # 5% of 80 GB
    assert row1.kv_budget == int((80 * 10**9 - 16_060_522_496 - reserve) * 0.9)
    assert row1.max_seqs == row1.kv_budget // (65536 * 4096)
    assert plan.recommended == 1


@pytest.mark.parametrize("name,recommended,kv_per_gpu_at_8", [
    ("meta-llama/Llama-3.1-70B-Instruct", 2, 80 * 2 * 1 * 128 * 2),
    ("meta-llama/Llama-3.1-405B-Instruct", 8, 126 * 2 * 1 * 128 * 2),
    ("Qwen/Qwen3-235B-A22B", 4, 94 * 2 * 1 * 128 * 2),  # 4 KV heads: replicated beyond 4 GPUs
])
def test_large_models_need_several_gpus(name, recommended, kv_per_gpu_at_8):
    plan = make_plan(resolve(model=name), "141GB")
    assert plan.recommended == recommended
    assert plan.rows[-1].kv_per_token_per_gpu == kv_per_gpu_at_8


def test_sliding_window_models_say_the_numbers_are_an_upper_bound():
    result = runner.invoke(app, ["build", "--model", "google/gemma-2-9b-it", "--plan", "--gpu-mem", "80GiB"])
    assert "  note: 21 of 42 layers use a 4096-token sliding window" in result.stdout
    assert "GPU memory: 85.90 GB per GPU (--gpu-mem 80GiB)" in result.stdout


def test_no_gpu_and_no_gpu_mem_assumes_an_h200():
    out = runner.invoke(app, ["build", "--model", "Qwen/Qwen3-0.6B", "--plan"]).stdout
    assert "141.00 GB per GPU (assumed H200 141 GB: no GPU visible, pass --gpu-mem)" in out
    assert "596.05M parameters" in out


def test_does_not_fit_anywhere():
    plan = make_plan(resolve(overrides=["max_batch_size=1000000"], model="Qwen/Qwen3-0.6B"), "24GB")
    assert plan.recommended is None


@pytest.mark.parametrize("text,expected", [("141GB", 141 * 10**9), ("80GiB", 80 * 2**30), ("24000MiB", 24000 * 2**20),
                                           ("96", 96 * 10**9), ("1.5 TB", 1_500_000_000_000)])
def test_parse_mem(text, expected):
    assert parse_mem(text) == expected


def test_parse_mem_error():
    with pytest.raises(ADError, match=r"Cannot read `--gpu-mem lots`: give a size such as `141GB`"):
        parse_mem("lots")


def test_deepseek_v3_needs_a_node_of_8_in_fp8_and_each_gpu_holds_the_compressed_kv():
    result = runner.invoke(app, ["build", "--model", "deepseek-ai/DeepSeek-V3", "--plan", "--gpu-mem", "141GB"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "  671.03B parameters (671,026,404,352)\n" in out
    assert "in fp8, 128x128 block scales (embedding, LM head, router and norms in bfloat16)" in out
    # 61 layers x (512 latent + 64 RoPE key) x 2 bytes, not 61 x 2 x 128 heads x (192 | 128) x 2
    assert ("  KV cache: 70272 bytes of bf16 KV per token = 61 layers x (512 latent + 64 RoPE key) x 2 bytes "
            "(compressed MLA cache: every GPU holds all of it)\n") in out
    plan = make_plan(resolve(model="deepseek-ai/DeepSeek-V3"), "141GB")
    assert 671e9 < plan.weight_bytes < 680e9  # ~1 byte per parameter plus the 128x128 block scales
    assert [r.kv_per_token_per_gpu for r in plan.rows] == [70272] * 4  # the latent has no head dim to split
    assert [r.max_seqs > 0 for r in plan.rows] == [False, False, False, True]
    assert plan.recommended == 8
    assert "  recommended world size: 8 (smallest that holds max_batch_size=8 sequences of 8192 tokens)\n" in out


def test_mla_kv_is_about_71x_smaller_than_expanded_heads():
    plan = make_plan(resolve(model="deepseek-ai/DeepSeek-V3"), "141GB")
    expanded = 61 * 128 * (192 + 128) * 2  # what caching per-head K and V would cost
    assert round(expanded / plan.kv_bytes_per_token) == 71
