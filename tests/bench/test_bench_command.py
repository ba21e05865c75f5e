"""`ad bench` through the real CLI with a fake engine (no build): JSON fields, exact token counts, concurrency,
latency mode, dataset prompts, errors before the build, option precedence, and Ctrl-C partial results."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from autodeploy_cli.bench import baselines, ours
from autodeploy_cli.bench.results import BUILD_FIELDS, RUN_FIELDS
from autodeploy_cli.cli import app
from autodeploy_cli.config.loader import resolve
from autodeploy_cli.models.factory import ModelFactory
from tests.bench.conftest import SMALL


def test_json_has_every_metric_and_exact_token_counts(bench, fake):
    engine = fake()
    result, data = bench(*SMALL, "--concurrency", "2")
    assert result.exit_code == 0, result.output
    assert data["schema"] == "ad-bench/1" and data["partial"] is False
    run = data["runs"]["ad"]
    assert all(field in run for field in RUN_FIELDS)
    assert run["num_requests_completed"] == 4 and run["num_requests_failed"] == 0
    assert run["input_tokens"] == 64 and run["output_tokens"] == 32
    for req in run["requests"]:
        assert req["output_tokens"] == 8 and req["prompt_tokens"] == 16
        assert 0 < req["ttft_ms"] <= req["e2e_ms"]
    for key in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_latency_ms", "per_user_tok_s"):
        assert set(run[key]) == {"mean", "p50", "p90", "p99"} and run[key]["p50"] > 0
    assert run["ttft_ms"]["p99"] <= run["e2e_latency_ms"]["p99"]
    assert run["output_throughput_tok_s"] == pytest.approx(32 / run["duration_s"])
    assert run["peak_gpu_memory_gib"] is None and "CPU run" in run["peak_gpu_memory_note"]
    assert run["decode"]["bandwidth_floor_fraction"] is None and "CUDA devices only" in run["decode"]["reason"]
    assert run["decode"]["decode_steps"] == 14 and run["decode"]["mean_batch"] == 2  # 2 pairs x 7 decode steps
    # build split from the build records' stages (factory+export, post_export+cache_init, weight_load, compile)
    assert all(field in data["build"] for field in BUILD_FIELDS)
    assert (data["build"]["export_s"], data["build"]["transforms_s"]) == (1.5, 0.5)
    assert (data["build"]["weight_load_s"], data["build"]["compile_s"]) == (0.125, 0.0625)
    assert data["kv_cache_capacity_tokens"] == 4096
    assert data["model"]["kv_bytes_per_token"] == 2 * 2 * 2 * 32 * 4  # K+V x layers x kv heads x head_dim x fp32
    assert data["conditions"]["isl"] == 16 and data["conditions"]["concurrency"] == 2
    assert data["conditions"]["dtype"] == "float32" and data["conditions"]["device"] == "cpu"
    assert data["config"]["benchmark"]["isl"] == 16 and data["config"]["model"] == "ad-tiny-llama"
    env = data["environment"]
    assert env["packages"]["torch"] and env["packages"]["transformers"] and len(env["git_commit"]) == 40
    assert env["gpu_name"] is None and env["gpu_driver"] is None
    assert engine.max_live == 2 and [len(p) for p in engine.prompts] == [16] * 6  # 2 warm-up + 4 timed
    assert "ad bench" in result.output and "ISL 16 / OSL 8" in result.output and "TTFT p99 (ms)" in result.output


def test_latency_mode_runs_one_request_at_a_time(bench, fake):
    engine = fake()
    result, data = bench(*SMALL, "--mode", "latency", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert engine.max_live == 1
    assert data["conditions"]["concurrency"] == 1 and data["conditions"]["seed"] == 3
    assert data["runs"]["ad"]["decode"]["mean_batch"] == 1


def test_short_outputs_are_reported_as_failures(bench, fake):
    fake(short_by=1)
    result, data = bench(*SMALL)
    run = data["runs"]["ad"]
    assert run["num_requests_completed"] == 0 and run["num_requests_failed"] == 4
    assert "produced 7 tokens but 8 were requested" in run["errors"][0]


def test_dataset_run(tmp_path, bench, fake):
    engine = fake()
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "Hello", "max_tokens": 3}\n{"prompt": "How big is the universe?"}\n')
    result, data = bench("--dataset", str(path), "--osl", "5")
    assert result.exit_code == 0, result.output
    assert [r["max_tokens"] for r in data["runs"]["ad"]["requests"]] == [3, 5]
    assert [r["output_tokens"] for r in data["runs"]["ad"]["requests"]] == [3, 5]
    assert data["workload"]["num_requests"] == 2 and "dataset d.jsonl" in result.output
    tok = ModelFactory(resolve([], [])).tokenizer()
    assert engine.prompts[-1] == tok.encode("How big is the universe?")  # as given: no chat template


def test_ctrl_c_during_our_run_writes_partial_results(bench, fake):
    # warm-up: 2 requests x 8 steps (steps 1-8); timed: pairs at steps 9-16 and 17-24; Ctrl-C at step 20
    fake(interrupt_at_step=20)
    result, data = bench(*SMALL, "--concurrency", "2", "--baseline", "hf")
    assert result.exit_code == 130
    assert "ad: interrupted" in result.output and "PARTIAL (interrupted during ad)" in result.output
    assert data["partial"] is True and data["interrupted_during"] == "ad"
    run = data["runs"]["ad"]
    assert run["partial"] is True and run["num_requests_completed"] == 2 and run["num_requests_submitted"] == 4
    assert run["output_tokens"] == 16 and "hf" not in data["runs"]


def test_ctrl_c_during_a_baseline_keeps_ours(bench, fake, monkeypatch):
    fake()
    calls = {"n": 0}
    real = baselines.generate_batch

    def interrupt_on_timed_call(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # call 1 is the warm-up
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(baselines, "generate_batch", interrupt_on_timed_call)
    result, data = bench(*SMALL, "--baseline", "hf")
    assert result.exit_code == 130
    assert data["partial"] is True and data["interrupted_during"] == "hf"
    assert data["runs"]["ad"]["partial"] is False and data["runs"]["ad"]["num_requests_completed"] == 4
    assert data["runs"]["hf"]["partial"] is True and data["runs"]["hf"]["num_requests_completed"] == 0


def test_ctrl_c_during_the_build_still_writes_a_partial_file(bench, monkeypatch):
    def interrupted_build(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(ours, "make_engine", interrupted_build)
    result, data = bench(*SMALL)
    assert result.exit_code == 130 and "no run completed before the interrupt" in result.output
    assert data["partial"] is True and data["interrupted_during"] == "build" and data["runs"] == {}
    assert data["workload"]["num_requests"] == 4 and data["config"]["benchmark"]["osl"] == 8


def test_bad_input_fails_before_the_build(tmp_path, bench, fake):
    engine = fake()
    result, data = bench("--isl", "500", "--osl", "100")
    assert result.exit_code == 2 and data is None
    assert "exceeds `max_seq_len` (512)" in result.output and "`max_seq_len=600`" in result.output
    result, _ = bench("--num-requests", "-2")
    assert result.exit_code == 2 and "must be a positive number of requests, got -2" in result.output
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a"}\n{"max_tokens": 4}\n')
    result, _ = bench("--dataset", str(path))
    assert result.exit_code == 2 and f"Dataset `{path}` line 2: no \"prompt\" field" in result.output
    assert engine.steps == 0 and engine.prompts == []


def test_cli_options_win_over_config_files_and_overrides(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("benchmark: {isl: 32, osl: 5, baseline: [hf]}\n")
    result = CliRunner().invoke(app, ["bench", "--config", str(cfg), "--isl", "16", "--print-config", "benchmark.isl=99"])
    assert result.exit_code == 0, result.output
    text = result.output.split("benchmark:")[1]
    assert "isl: 16" in text and "osl: 5" in text and "- hf" in text
    result = CliRunner().invoke(app, ["bench", "--print-config", "benchmark.osl=7", "--baseline", "hf-compile"])
    assert "osl: 7" in result.output and "- hf-compile" in result.output
