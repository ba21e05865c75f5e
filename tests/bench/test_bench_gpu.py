"""`ad bench` on a GPU: copy bandwidth, the decode floor fraction, peak memory and the GPU fields of the result."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.bench.hardware import measure_copy_bandwidth

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_copy_bandwidth_is_measured_on_cuda():
    bw, note = measure_copy_bandwidth(torch.device("cuda"), max_bytes=256 << 20, reps=5)
    assert bw is not None and "read+write" in note
    if "H200" in torch.cuda.get_device_name():  # HBM3e, 4.8 TB/s peak; a device-to-device copy measures ~4.2
        assert 3.6e12 < bw < 4.8e12, bw
    else:  # any other GPU: within its own peak (memory clock x bus width x 2, from the driver)
        props = torch.cuda.get_device_properties(0)
        peak = getattr(props, "memory_clock_rate", 0) * 1e3 * getattr(props, "memory_bus_width", 0) / 8 * 2
        assert peak == 0 or 0.3 * peak < bw < 1.05 * peak, (bw, peak)


def test_ad_bench_on_gpu_reports_memory_floor_and_gpu(bench):
    result, data = bench("--isl", "16", "--osl", "8", "--num-requests", "4", "--baseline", "hf")
    assert result.exit_code == 0, result.output
    env = data["environment"]
    assert env["gpu_name"] == torch.cuda.get_device_name() and env["gpu_driver"] and env["torch_cuda"]
    assert data["hardware"]["copy_bandwidth_gb_s"] > 10
    for name in ("ad", "hf"):
        run = data["runs"][name]
        assert run["output_tokens"] == 32 and run["peak_gpu_memory_gib"] > 0
        assert 0 < run["decode"]["bandwidth_floor_fraction"] < 1
        assert run["decode"]["floor_ms_per_step"] > 0


def test_fp8_kv_cache_doubles_the_capacity_ad_bench_reports(bench):
    # a pool sized by memory (1% of the free memory: ~5M bf16 tokens of the tiny model, so the probe pool it keeps,
    # ~70k tokens, hardly counts), well under the max_batch_size x max_seq_len cap (16.8M tokens)
    common = ("--isl", "16", "--osl", "4", "--num-requests", "2", "dtype=bfloat16", "max_seq_len=8192",
              "max_batch_size=2048", "compile_backend=torch-simple", "kv_cache_config.free_gpu_memory_fraction=0.01")
    capacity = {}
    for kv in ("auto", "fp8"):
        result, data = bench(*common, f"kv_cache_config.dtype={kv}")
        assert result.exit_code == 0, result.output
        capacity[kv] = data["kv_cache_capacity_tokens"]
    assert 1.9 < capacity["fp8"] / capacity["auto"] < 2.1


def test_fp8_quality_numbers_in_the_bench_json(bench):
    result, data = bench("--isl", "16", "--osl", "4", "--num-requests", "2", "--baseline", "hf", "dtype=bfloat16",
                         "quant_config.quant_algo=FP8", "kv_cache_config.dtype=fp8")
    assert result.exit_code == 0, result.output
    assert data["quality"]["ok"] and data["quality"]["cosine"] > 0.99
    assert data["model"]["weight_bytes_per_decode_step"] < 0.6 * (data["model"]["weight_bytes"] +
                                                                  data["model"]["fp8_weight_bytes_saved"])
