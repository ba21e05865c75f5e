"""Percentiles, per-run metrics from hand-built timings, the decode bandwidth floor and speedup directions."""

from __future__ import annotations

import pytest

from autodeploy_cli.bench.metrics import (
    RequestRecord,
    RunTrace,
    StepRecord,
    decode_floor,
    distribution,
    percentile,
    speedups,
    summarize,
)


def test_percentile_interpolates_like_numpy():
    xs = [4.0, 1.0, 3.0, 2.0]
    assert percentile(xs, 50) == pytest.approx(2.5)
    assert percentile(xs, 90) == pytest.approx(3.7)
    assert percentile(xs, 99) == pytest.approx(3.97)
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 4.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_distribution_scales_and_handles_empty():
    assert distribution([0.001, 0.003], 1e3) == pytest.approx({"mean": 2.0, "p50": 2.0, "p90": 2.8, "p99": 2.98})
    assert distribution([]) == {"mean": None, "p50": None, "p90": None, "p99": None}


def _trace() -> RunTrace:
    r0 = RequestRecord(0, prompt_len=4, max_tokens=3, t_submit=0.0, token_times=[0.1, 0.15, 0.2], t_end=0.2)
    r1 = RequestRecord(1, prompt_len=6, max_tokens=3, t_submit=0.05, token_times=[0.2, 0.3, 0.4], t_end=0.4)
    failed = RequestRecord(2, prompt_len=5, max_tokens=3, t_submit=0.0, token_times=[0.3], t_end=0.3, error="boom")
    return RunTrace("ad", requests=[r0, r1, failed], t_start=0.0, t_end=0.5)


def test_summarize_exact_numbers():
    m = summarize(_trace())
    assert m["num_requests_completed"] == 2 and m["num_requests_failed"] == 1
    assert m["errors"] == ["request 2: boom"]
    assert m["input_tokens"] == 10 and m["output_tokens"] == 6
    assert m["duration_s"] == pytest.approx(0.5)
    assert m["request_throughput_req_s"] == pytest.approx(4.0)
    assert m["output_throughput_tok_s"] == pytest.approx(12.0)
    assert m["total_throughput_tok_s"] == pytest.approx(32.0)
    assert m["ttft_ms"]["mean"] == pytest.approx(125.0)  # 100 and 150 ms
    assert m["e2e_latency_ms"]["mean"] == pytest.approx(275.0)  # 200 and 350 ms
    assert m["itl_ms"]["mean"] == pytest.approx(75.0) and m["itl_ms"]["p50"] == pytest.approx(75.0)  # 50,50,100,100
    assert m["tpot_ms"]["mean"] == pytest.approx(75.0)  # 50 and 100 ms
    assert m["per_user_tok_s"]["mean"] == pytest.approx((15.0 + 3 / 0.35) / 2)
    assert [r["output_tokens"] for r in m["requests"]] == [3, 3, 1]


def test_decode_floor_fraction_counts_weights_and_kv_of_decode_steps_only():
    trace = RunTrace("ad", steps=[
        StepRecord(0.5, batch=2, is_decode=False, kv_tokens=0),  # prefill: excluded
        StepRecord(0.01, batch=2, is_decode=True, kv_tokens=10),
        StepRecord(0.01, batch=2, is_decode=True, kv_tokens=20),
    ])
    d = decode_floor(trace, weight_bytes=1_000_000, kv_bytes_per_token=100, bandwidth_bytes_s=1e9)
    assert d["decode_steps"] == 2 and d["mean_batch"] == 2
    assert d["mean_bytes_per_step"] == pytest.approx(1_001_500)
    assert d["floor_ms_per_step"] == pytest.approx(1.0015)
    assert d["bandwidth_floor_fraction"] == pytest.approx(2.003e-3 / 0.02)
    cpu = decode_floor(trace, 1_000_000, 100, None, "CPU run")
    assert cpu["bandwidth_floor_fraction"] is None and cpu["reason"] == "CPU run"


def test_decode_floor_counts_the_state_slots_of_each_sequence():
    """Hybrids: every decode step also reads the state slots of its sequences (fixed size per sequence)."""
    trace = RunTrace("ad", steps=[StepRecord(0.01, batch=2, is_decode=True, kv_tokens=10)])
    d = decode_floor(trace, 1_000_000, 100, 1e9, state_bytes_per_seq=50_000)
    assert d["mean_bytes_per_step"] == 1_000_000 + 100 * 10 + 2 * 50_000


def test_cache_bytes_of_a_hybrid_interface():
    import torch

    from autodeploy_cli.bench.hardware import cache_bytes
    from autodeploy_cli.ops.batch import SequenceInfo
    from autodeploy_cli.ops.cache import CacheConfig, CachedSequenceInterface, CacheSpec, StateSpec

    iface = CachedSequenceInterface(SequenceInfo(2, 32, 32, 4), CacheConfig(torch.bfloat16, 4, 32, 2, 32))
    iface.add_cache("k_cache_0", CacheSpec((4, 2, 16), torch.bfloat16))  # one attention layer
    iface.add_cache("v_cache_0", CacheSpec((4, 2, 16), torch.bfloat16))
    iface.add_state("ssm_state_0", StateSpec((8, 16, 16), torch.float32))
    iface.add_state("conv_state_0", StateSpec((160, 3), torch.bfloat16))
    assert cache_bytes(iface) == {"kv_bytes_per_token": 2 * 2 * 16 * 2, "state_bytes_per_seq": 8 * 16 * 16 * 4 + 960}


def test_speedups_are_greater_than_one_when_ours_is_better():
    ours = {"output_throughput_tok_s": 10.0, "ttft_ms": {"mean": 10.0}, "per_user_tok_s": {"mean": 4.0}}
    theirs = {"output_throughput_tok_s": 5.0, "ttft_ms": {"mean": 30.0}, "per_user_tok_s": {"mean": 8.0}}
    s = speedups(ours, theirs)
    assert s["output_throughput_tok_s"] == pytest.approx(2.0)
    assert s["ttft_ms"] == pytest.approx(3.0)
    assert s["per_user_tok_s"] == pytest.approx(0.5)
    assert s["itl_ms"] is None


def test_expected_experts_touched_formula():
    from autodeploy_cli.bench.metrics import expected_experts_touched

    assert expected_experts_touched(128, 8, 1) == pytest.approx(8.0)  # one token: its top-k
    assert expected_experts_touched(8, 2, 2) == pytest.approx(8 * (1 - 0.75 ** 2))  # 3.5 of Mixtral's 8
    assert expected_experts_touched(128, 8, 64) == pytest.approx(128 * (1 - (120 / 128) ** 64))  # ~125.9
    assert expected_experts_touched(128, 8, 64) == pytest.approx(125.94, abs=0.01)
    assert expected_experts_touched(16, 16, 3) == 16.0 and expected_experts_touched(4, 2, 0) == 0.0
    # the formula is the exact expectation: enumerate all pairs of 2-of-4 choices for 2 tokens
    import itertools

    picks = list(itertools.combinations(range(4), 2))
    mean = sum(len(set(a) | set(b)) for a in picks for b in picks) / len(picks) ** 2
    assert expected_experts_touched(4, 2, 2) == pytest.approx(mean)


def test_moe_decode_floor_counts_only_the_experts_a_step_touches():
    trace = RunTrace("ad", steps=[StepRecord(0.01, batch=1, is_decode=True, kv_tokens=0),
                                  StepRecord(0.01, batch=64, is_decode=True, kv_tokens=0)])
    moe = {"routed_expert_bytes": 128_000_000, "num_experts": 128, "experts_per_token": 8}
    d = decode_floor(trace, weight_bytes=10_000_000, kv_bytes_per_token=0, bandwidth_bytes_s=1e9, moe=moe)
    touched_64 = 128 * (1 - (120 / 128) ** 64)
    expected = [10_000_000 + 8 * 1_000_000, 10_000_000 + touched_64 * 1_000_000]
    assert d["mean_bytes_per_step"] == pytest.approx(sum(expected) / 2)
    assert d["mean_experts_touched_per_layer"] == pytest.approx((8 + touched_64) / 2)
    assert d["floor_ms_per_step"] == pytest.approx(sum(expected) / 2 / 1e9 * 1e3)
    dense = decode_floor(trace, weight_bytes=10_000_000, kv_bytes_per_token=0, bandwidth_bytes_s=1e9)
    assert dense["mean_bytes_per_step"] == 10_000_000 and "mean_experts_touched_per_layer" not in dense


def test_model_bytes_splits_routed_experts_from_dense_weights(tiny_dir):
    from autodeploy_cli.bench.hardware import model_bytes
    from autodeploy_cli.config.loader import resolve
    from autodeploy_cli.models.factory import ModelFactory

    cfg = resolve([], [f"model={tiny_dir('qwen2_moe')}", "dtype=float32", "device=cpu"])
    m = model_bytes(ModelFactory(cfg))
    routed = 2 * 4 * 3 * 32 * 64 * 4  # layers x experts x (gate, up, down) x moe_intermediate x hidden x fp32
    assert m["moe"]["routed_expert_bytes"] == routed and m["moe"]["num_experts"] == 4
    assert m["moe"]["experts_per_token"] == 2
    dense = m["weight_bytes"] - m["embedding_bytes"] - routed  # shared experts (48 wide) stay dense
    assert m["moe"]["dense_weight_bytes_per_decode_step"] == dense
    assert m["weight_bytes_per_decode_step"] == dense + routed * 2 // 4
    llama = model_bytes(ModelFactory(resolve([], [f"model={tiny_dir('llama')}", "dtype=float32", "device=cpu"])))
    assert llama["moe"] is None
    assert llama["weight_bytes_per_decode_step"] == llama["weight_bytes"] - llama["embedding_bytes"]
