"""DeepSeek-V2 / V3 (multi-head latent attention): `ad build --verify` passes with torch_mla and its cached op in the
report, `ad run` and the Engine (chunked prefill) reproduce HF generate token for token, and the KV pool is the
compressed one (float32, CPU). Configs: yarn RoPE with mscale != mscale_all_dim, q_lora_rank set and unset, dense
MLPs (first_k_dense_replace = layers), plus one MoE layer as the current pipeline handles it."""

from __future__ import annotations

import json
import os

import pytest
import torch
from typer.testing import CliRunner

if not torch.cuda.is_available():  # before kernels.triton is imported anywhere in this process
    os.environ.setdefault("TRITON_INTERPRET", "1")

from autodeploy_cli.cli import app  # noqa: E402
from tests.e2e.hf_match import check_ad_run, check_engine_chunked, overrides  # noqa: E402
from tests.tiny_models import MLA, MOE_LAYER, YARN  # noqa: E402

CASES = {
    "v2-yarn-q_lora_unset": ("deepseek_v2", YARN),
    "v3-yarn-q_lora": ("deepseek_v3", YARN),
    "v3-q_lora_unset": ("deepseek_v3", {"q_lora_rank": None}),
}
LAYERS, R, ROPE = MLA["num_hidden_layers"], MLA["kv_lora_rank"], MLA["qk_rope_head_dim"]


@pytest.mark.parametrize("case", list(CASES))
def test_build_verify_reports_torch_mla_and_the_compressed_cache(tiny_dir, tmp_path, case):
    family, kw = CASES[case]
    report = tmp_path / "build.json"
    args = ["build", "--verify", "--report", str(report), *overrides(tiny_dir(family, **kw), family,
                                                                     "attn_page_size=4")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    assert doc["verify"]["ok"] and doc["verify"]["first_failure"] is None
    ops = doc["canonical_ops"]
    assert ops["auto_deploy.torch_mla_with_paged_cache"] == LAYERS
    assert "auto_deploy.torch_attention_with_paged_cache" not in ops  # nothing took the expanded path
    (attn,) = [r for r in doc["coverage"] if r["kind"] == "attention"]
    assert (attn["found"], attn["expected"], attn["hint"]) == (LAYERS, LAYERS, "")
    assert attn["detail"] == f"multi-head latent attention: torch_mla x{LAYERS} (compressed KV cache)"
    rec = {r["name"]: r for r in doc["transforms"]}
    assert rec["insert_cached_mla_attention"]["num_matches"] == LAYERS
    per_token = LAYERS * (R + ROPE) * 4  # float32 latent + RoPE key per layer, no head dimension
    assert f"{per_token} bytes per token (float32)" in rec["insert_cached_mla_attention"]["note"]
    # the pool: max_batch_size 4 x 64 tokens, at the compressed size
    assert rec["initialize_cache"]["note"] == (f"Initialized {2 * LAYERS} caches: 64 pages x 4 tokens, "
                                               f"{64 * 4 * per_token / 2**30:.3f} GiB")
    assert any("MTP head (num_nextn_predict_layers=1" in n for n in doc.get("notes", [])) == (family == "deepseek_v3")
    assert "torch_mla_with_paged_cache x2" in result.stdout and "torch_mla x2" in result.stdout


@pytest.mark.parametrize("case", list(CASES))
def test_ad_run_matches_hf_generate(tiny_dir, case):
    family, kw = CASES[case]
    check_ad_run(tiny_dir(family, **kw), family, "attn_page_size=4")


@pytest.mark.parametrize("case", list(CASES))
def test_engine_chunked_prefill_matches_hf_generate(tiny_dir, case):
    family, kw = CASES[case]
    check_engine_chunked(tiny_dir(family, **kw), family, "attn_page_size=8")


def test_moe_layer_matches_hf_generate(tiny_dir):
    check_ad_run(tiny_dir("deepseek_v3", **YARN, **MOE_LAYER), "deepseek_v3", "attn_page_size=4")


@pytest.mark.skipif(torch.cuda.is_available(), reason="Triton's CPU interpreter is off on a GPU machine; "
                    "tests/e2e/test_mla_gpu.py covers triton there")
def test_triton_backend_matches_hf_generate_on_cpu(tiny_dir):
    check_ad_run(tiny_dir("deepseek_v3", **YARN), "deepseek_v3", "attn_page_size=4", "mla_backend=triton")
    check_engine_chunked(tiny_dir("deepseek_v2", **YARN), "deepseek_v2", "attn_page_size=8", "mla_backend=triton")


def test_kv_capacity_is_the_compressed_one(tiny_dir):
    from autodeploy_cli.config.loader import resolve
    from autodeploy_cli.llm import build_engine

    d = tiny_dir("deepseek_v3", **YARN)
    mla = build_engine(resolve([], overrides(d, "deepseek_v3", "attn_page_size=4")))
    expanded = build_engine(resolve([], overrides(d, "deepseek_v3", "attn_page_size=4",
                                                  "transforms.export_to_gm.patches.hf_mla_to_torch_mla=false")))
    n, qk, v = MLA["num_attention_heads"], MLA["qk_nope_head_dim"] + ROPE, MLA["v_head_dim"]
    assert mla.iface.bytes_per_page() == 4 * LAYERS * (R + ROPE) * 4
    assert expanded.iface.bytes_per_page() == 4 * LAYERS * n * (qk + v) * 4  # per-head K and V
    assert sorted(mla.iface.cache_specs) == ["ckv_cache_0", "ckv_cache_1", "kpe_cache_0", "kpe_cache_1"]
    assert mla.kv_capacity_tokens == expanded.kv_capacity_tokens == 4 * 64  # CPU: max_batch_size x max_seq_len
