"""`ad bench` end to end on CPU with the tiny default model and the real engine (the acceptance runs)."""

from __future__ import annotations

from autodeploy_cli.bench.results import BUILD_FIELDS, RUN_FIELDS


def test_ad_bench_isl16_osl8_writes_every_metric(bench):
    result, data = bench("--isl", "16", "--osl", "8", "--num-requests", "4")
    assert result.exit_code == 0, result.output
    assert data["partial"] is False and data["conditions"]["model"] == "ad-tiny-llama"
    run = data["runs"]["ad"]
    assert all(field in run for field in RUN_FIELDS) and run["errors"] == []
    assert run["num_requests_completed"] == 4 and run["input_tokens"] == 4 * 16 and run["output_tokens"] == 4 * 8
    for req in run["requests"]:
        assert (req["prompt_tokens"], req["output_tokens"]) == (16, 8)
        assert 0 < req["ttft_ms"] <= req["e2e_ms"]
    assert run["ttft_ms"]["p50"] <= run["e2e_latency_ms"]["p50"]
    assert run["itl_ms"]["mean"] > 0 and run["tpot_ms"]["mean"] > 0 and run["per_user_tok_s"]["mean"] > 0
    assert run["decode"]["decode_steps"] == 7 and run["decode"]["mean_batch"] == 4  # one prefill step, 7 decodes
    assert run["warmup_s"] > 0 and run["peak_gpu_memory_gib"] is None
    build = data["build"]
    assert all(build[f] >= 0 for f in BUILD_FIELDS) and build["export_s"] > 0
    assert build["total_s"] >= build["export_s"] + build["transforms_s"] + build["weight_load_s"] + build["compile_s"]
    assert {r["name"] for r in build["records"]} >= {"export_to_gm", "load_weights", "compile_model"}
    assert data["kv_cache_capacity_tokens"] > 0 and data["kv_cache_capacity_tokens"] % 64 == 0
    assert data["model"]["weight_bytes_per_decode_step"] > 0
    assert "TTFT p50 (ms)" in result.output and "KV cache capacity" in result.output


def test_ad_bench_baseline_hf_prints_the_ratio(bench):
    result, data = bench("--isl", "16", "--osl", "4", "--num-requests", "2", "--baseline", "hf")
    assert result.exit_code == 0, result.output
    assert list(data["runs"]) == ["ad", "hf"]
    assert data["runs"]["hf"]["output_tokens"] == data["runs"]["ad"]["output_tokens"] == 8
    ratio = data["speedup_vs"]["hf"]["output_throughput_tok_s"]
    assert ratio == data["runs"]["ad"]["output_throughput_tok_s"] / data["runs"]["hf"]["output_throughput_tok_s"]
    row = next(line for line in result.output.splitlines() if "output tok/s" in line)
    assert row.rstrip(" │|").endswith(f"{ratio:.2f}x")
    assert "ad vs hf" in result.output
