"""`ad bench --url`: the offline bench's workloads, metrics and JSON against a running server (ours here)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from autodeploy_cli.bench.results import RUN_FIELDS
from autodeploy_cli.cli import app
from tests.serve.conftest import free_port


def bench(*args: str):
    return CliRunner().invoke(app, ["bench", *args])


def test_synthetic_workload_against_ad_serve(served, tmp_path):
    server, overrides = served
    out = tmp_path / "online.json"
    res = bench("--url", server.url, "--isl", "8", "--osl", "6", "--num-requests", "12", "--concurrency", "4",
                "--output", str(out), *overrides)
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    run = doc["runs"]["online"]
    assert all(k in run for k in RUN_FIELDS)
    assert (run["num_requests_completed"], run["num_requests_failed"]) == (12, 0)
    assert (run["input_tokens"], run["output_tokens"]) == (96, 72)
    assert all(r["output_tokens"] == 6 and r["ttft_ms"] > 0 for r in run["requests"])
    assert run["itl_ms"]["mean"] > 0 and run["output_throughput_tok_s"] > 0
    assert doc["conditions"]["url"] == server.url and doc["conditions"]["concurrency"] == 4
    assert doc["conditions"]["served_model"] == overrides[0].split("=", 1)[1]


def test_trtllm_bench_dataset_lines(served, tmp_path):
    server, overrides = served
    data = tmp_path / "prepared.jsonl"
    data.write_text("\n".join(json.dumps(x) for x in [
        {"task_id": 0, "input_ids": [5, 6, 7, 8, 9], "output_tokens": 4},
        {"task_id": 1, "prompt": "hello there", "output_tokens": 3},
        {"task_id": 2, "input_ids": [40, 41], "output_tokens": 5},
    ]) + "\n")
    out = tmp_path / "ds.json"
    res = bench("--url", server.url, "--dataset", str(data), "--concurrency", "2", "--output", str(out), *overrides)
    assert res.exit_code == 0, res.output
    run = json.loads(out.read_text())["runs"]["online"]
    assert run["num_requests_completed"] == 3
    assert [r["max_tokens"] for r in run["requests"]] == [4, 3, 5] and run["output_tokens"] == 12
    assert [r["prompt_tokens"] for r in run["requests"]][::2] == [5, 2]


def test_no_server_is_a_clear_error(served):
    url = f"http://127.0.0.1:{free_port()}"
    res = bench("--url", url, "--isl", "4", "--osl", "2", *served[1])
    assert res.exit_code == 2 and "Cannot reach an OpenAI-compatible server" in res.output
