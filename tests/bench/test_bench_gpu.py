"""`ad bench` on a GPU: copy bandwidth, the decode floor fraction, peak memory and the GPU fields of the result."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.bench.hardware import measure_copy_bandwidth

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_copy_bandwidth_is_measured_on_cuda():
    bw, note = measure_copy_bandwidth(torch.device("cuda"), max_bytes=256 << 20, reps=5)
    assert bw is not None and 1e10 < bw < 1e13 and "read+write" in note  # 10 GB/s .. 10 TB/s


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
