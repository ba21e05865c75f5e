"""The Hugging Face baselines in the same run (real transformers `generate` on the tiny model; a fake engine for
ours so no build is needed): same workload, exact token counts, warm-up, and speedups in JSON and the table."""

from __future__ import annotations

import pytest

from autodeploy_cli.bench import baselines
from autodeploy_cli.bench.results import RUN_FIELDS
from autodeploy_cli.bench.workload import BenchRequest
from tests.bench.conftest import SMALL


def test_batches_and_shapes_left_pad_to_the_longest_prompt():
    reqs = [BenchRequest([5] * n, m) for n, m in ((3, 4), (6, 2), (2, 2))]
    groups = baselines.batches(reqs, 2)
    assert [[i for i, _ in g] for g in groups] == [[0, 1], [2]]
    assert [baselines.batch_shape(g) for g in groups] == [(2, 6, 4), (1, 2, 2)]


def test_run_hf_mixed_lengths_times_each_request_to_its_own_last_token():
    from autodeploy_cli.bench.metrics import RunTrace
    from autodeploy_cli.config.loader import resolve
    from autodeploy_cli.models.factory import ModelFactory

    model = ModelFactory(resolve([], [])).materialize()
    reqs = [BenchRequest([5, 6, 7], 4), BenchRequest(list(range(10, 16)), 2), BenchRequest([9, 9], 3)]
    trace = baselines.run_hf(model, "hf", reqs, concurrency=2, trace=RunTrace("hf"), do_warmup=False)
    assert [r.output_len for r in trace.requests] == [4, 2, 3] and all(r.done for r in trace.requests)
    first, second, third = trace.requests
    assert first.t_submit == second.t_submit < third.t_submit  # one generate call per group of 2
    assert second.t_end == first.token_times[1] < first.t_end  # the short request ends at its 2nd token
    assert [s.batch for s in trace.steps] == [2] * 4 + [1] * 3
    assert [s.kv_tokens for s in trace.steps if s.is_decode] == [2 * 7, 2 * 8, 2 * 9, 3, 4]  # padded to 6, then 2


def test_baselines_hf_and_hf_compile_run_the_same_workload(bench, fake, monkeypatch):
    monkeypatch.setattr(baselines, "HF_COMPILE_BACKEND", "eager")  # dynamo capture without inductor's compile time
    fake()
    result, data = bench(*SMALL, "--baseline", "hf", "--baseline", "hf-compile")
    assert result.exit_code == 0, result.output
    assert list(data["runs"]) == ["ad", "hf", "hf-compile"]
    for name in ("hf", "hf-compile"):
        run = data["runs"][name]
        assert all(field in run for field in RUN_FIELDS)
        assert run["num_requests_completed"] == 4 and run["output_tokens"] == 32 and run["input_tokens"] == 64
        assert all(0 < r["ttft_ms"] <= r["e2e_ms"] for r in run["requests"])
        assert run["warmup_s"] > 0
        assert run["decode"]["decode_steps"] == 7 and run["decode"]["mean_batch"] == 4  # one batch of 4, 8 tokens
        assert data["speedup_vs"][name]["output_throughput_tok_s"] == pytest.approx(
            data["runs"]["ad"]["output_throughput_tok_s"] / run["output_throughput_tok_s"])
    assert "dynamic cache" in data["runs"]["hf"]["description"]
    assert "static cache + torch.compile (eager)" in data["runs"]["hf-compile"]["description"]
    assert "ad vs hf" in result.output and "ad vs hf-compile" in result.output
    assert "x" in result.output.split("output tok/s")[1].splitlines()[0]  # the ratio cell, e.g. "1.86x"


    for name in ("hf", "hf-compile"):  # every output token of every request is timed: 8 per request
        assert [r["output_tokens"] for r in data["runs"][name]["requests"]] == [8] * 4


def test_a_failing_baseline_keeps_our_results_and_says_why(bench, fake, monkeypatch):
    def out_of_memory(*args, **kwargs):  # what HF's reference Mamba2 kernels did at 64 x 1024 tokens on the H200
        raise RuntimeError("CUDA out of memory. Tried to allocate 512.00 GiB.\nmore detail")

    monkeypatch.setattr(baselines, "run_hf", out_of_memory)
    fake()
    result, data = bench(*SMALL, "--baseline", "hf")
    assert result.exit_code == 0, result.output
    assert data["runs"]["ad"]["num_requests_completed"] == 4 and data["runs"]["ad"]["output_throughput_tok_s"] > 0
    hf = data["runs"]["hf"]
    assert hf["partial"] and hf["notes"] == [
        "the hf baseline failed (RuntimeError: CUDA out of memory. Tried to allocate 512.00 GiB.); no ratio against it"]
    assert data["speedup_vs"]["hf"]["output_throughput_tok_s"] is None
    assert "warning: the `hf` baseline failed (RuntimeError: CUDA out of memory." in " ".join(result.output.split())


def test_a_run_where_every_request_failed_is_an_error(bench, fake):
    fake(fail_with="prompt too long")
    result, data = bench(*SMALL)
    assert result.exit_code == 2  # the CLI's exit code for a reported error
    out = " ".join(result.output.split())
    assert "No request of the `ad` run completed: 4 of 4 failed (results written to" in out
    assert "the first: request 0: prompt too long. Fix that cause and run `ad bench` again." in out
    assert data["runs"]["ad"]["num_requests_failed"] == 4 and "Traceback" not in result.output


def test_baseline_concurrency_sets_hf_batch_per_generate_call(bench, fake):
    fake()
    result, data = bench(*SMALL, "--baseline", "hf", "--baseline-concurrency", "2")
    assert result.exit_code == 0, result.output
    hf = data["runs"]["hf"]
    assert hf["num_requests_completed"] == 4 and hf["decode"]["mean_batch"] == 2  # two generate calls of 2
    assert data["conditions"]["baseline_concurrency"] == 2 and data["conditions"]["concurrency"] == 8


def test_baseline_concurrency_must_be_positive(bench, fake):
    fake()
    result, _ = bench(*SMALL, "--baseline", "hf", "--baseline-concurrency", "0")
    assert result.exit_code == 2
    assert "`--baseline-concurrency` (`benchmark.baseline_concurrency`) must be a positive number of sequences " \
           "per HF call, got 0" in " ".join(result.output.split())
