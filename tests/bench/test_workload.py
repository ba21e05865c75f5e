"""Workloads (synthetic lengths, JSONL datasets) and the plan checks that run before any build."""

from __future__ import annotations

import json

import pytest

from autodeploy_cli.bench.plan import make_plan
from autodeploy_cli.bench.workload import dataset_workload, synthetic_workload
from autodeploy_cli.config.loader import resolve
from autodeploy_cli.errors import ADError
from autodeploy_cli.models.factory import ModelFactory


def plan_for(*overrides: str):
    cfg = resolve([], list(overrides))
    return cfg, make_plan(cfg)


def test_synthetic_lengths_are_exact_and_reproducible():
    _, plan = plan_for("benchmark.isl=16", "benchmark.osl=8", "benchmark.num_requests=5")
    w = synthetic_workload(plan, vocab_size=50, avoid_ids={0, 1, 2})
    assert [r.prompt_len for r in w.requests] == [16] * 5
    assert [r.max_tokens for r in w.requests] == [8] * 5
    ids = {t for r in w.requests for t in r.prompt_token_ids}
    assert ids <= set(range(3, 50)) and len(ids) > 20
    again = synthetic_workload(plan, vocab_size=50, avoid_ids={0, 1, 2})
    assert [r.prompt_token_ids for r in again.requests] == [r.prompt_token_ids for r in w.requests]
    _, other = plan_for("benchmark.isl=16", "benchmark.osl=8", "benchmark.num_requests=5", "benchmark.seed=1")
    assert synthetic_workload(other, 50).requests[0].prompt_token_ids != w.requests[0].prompt_token_ids
    assert w.summary() == {"num_requests": 5, "input_tokens": 80, "output_tokens": 40,
                           "isl": {"mean": 16, "min": 16, "max": 16}, "osl": {"mean": 8, "min": 8, "max": 8},
                           "clipped_lengths": 0}


def test_synthetic_stdev_draws_lengths_clipped_to_fit():
    _, plan = plan_for("max_seq_len=64", "benchmark.isl=30", "benchmark.osl=30", "benchmark.isl_stdev=20",
                       "benchmark.osl_stdev=20", "benchmark.num_requests=200")
    w = synthetic_workload(plan, vocab_size=100)
    isl = [r.prompt_len for r in w.requests]
    assert len(set(isl)) > 10 and min(isl) >= 1
    assert min(r.max_tokens for r in w.requests) >= 1
    assert max(r.prompt_len + r.max_tokens for r in w.requests) <= 64
    assert 0 < w.clipped < 200
    assert 20 < sum(isl) / len(isl) < 40


def test_default_num_requests_is_8_and_latency_mode_runs_one_at_a_time():
    _, plan = plan_for()
    assert plan.num_requests == 8 and plan.concurrency == 8  # max_batch_size
    _, lat = plan_for("benchmark.mode=latency")
    assert lat.concurrency == 1


@pytest.mark.parametrize(
    "override, message",
    [
        ("benchmark.isl=0", "`--isl` (`benchmark.isl`) must be a positive number of prompt tokens, got 0."),
        ("benchmark.osl=-4", "`--osl` (`benchmark.osl`) must be a positive number of output tokens, got -4."),
        ("benchmark.num_requests=0", "`--num-requests` (`benchmark.num_requests`) must be a positive number of requests, got 0."),
        ("benchmark.concurrency=-1", "`--concurrency` (`benchmark.concurrency`) must be a positive number of requests in flight, got -1."),
        ("benchmark.isl_stdev=-1", "`--isl-stdev` (`benchmark.isl_stdev`) must be 0 (exact lengths) or positive, got -1.0."),
        ("benchmark.baseline=[hf,vllm]", "Unknown baseline `vllm` in `--baseline` (`benchmark.baseline`)."),
    ],
)
def test_bad_counts_and_choices(override, message):
    with pytest.raises(ADError) as e:
        plan_for(override)
    assert message in str(e.value)


def test_isl_plus_osl_above_max_seq_len_names_the_limit_to_raise():
    with pytest.raises(ADError) as e:
        plan_for("benchmark.isl=500", "benchmark.osl=100")
    assert str(e.value) == (
        "--isl 500 --osl 100: prompt 500 + output 100 = 600 tokens exceeds `max_seq_len` (512), the longest sequence "
        "the KV cache holds. Raise the limit with `max_seq_len=600` (or more), or lower --isl/--osl."
    )
    _, plan = plan_for("benchmark.isl=500", "benchmark.osl=100", "max_seq_len=600")
    assert plan.isl == 500


def test_prompt_above_max_num_tokens_without_chunked_prefill():
    with pytest.raises(ADError, match=r"Raise it with `max_num_tokens=300`, or set `enable_chunked_prefill=true`"):
        plan_for("benchmark.isl=300", "benchmark.osl=8", "max_num_tokens=256")
    plan_for("benchmark.isl=300", "benchmark.osl=8", "max_num_tokens=256", "enable_chunked_prefill=true")


def test_concurrency_limits():
    with pytest.raises(ADError, match=r"above `max_batch_size` \(8\).*`max_batch_size=16`"):
        plan_for("benchmark.concurrency=16")
    with pytest.raises(ADError, match="runs one request at a time, but `--concurrency` is 4"):
        plan_for("benchmark.mode=latency", "benchmark.concurrency=4")
    assert plan_for("benchmark.concurrency=16", "max_batch_size=16")[1].concurrency == 16


def _dataset(tmp_path, lines: list[str]):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_dataset_prompts_are_tokenized_with_their_max_tokens(tmp_path):
    path = _dataset(tmp_path, [json.dumps({"prompt": "Hello there", "max_tokens": 5}), "",
                               json.dumps({"prompt": "What is 2+2?"})])
    cfg, plan = plan_for(f"benchmark.dataset={path}", "benchmark.osl=7")
    tok = ModelFactory(cfg).tokenizer()
    w = dataset_workload(plan, cfg, tok)
    assert [r.prompt_token_ids for r in w.requests] == [tok.encode("Hello there"), tok.encode("What is 2+2?")]
    assert [r.max_tokens for r in w.requests] == [5, 7]  # the second line defaults to --osl
    assert w.requests[1].source.endswith("line 3")
    cfg, plan = plan_for(f"benchmark.dataset={path}", "benchmark.num_requests=5")
    assert [r.max_tokens for r in dataset_workload(plan, cfg, tok).requests] == [5, 128, 5, 128, 5]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"text": "no prompt here"}', 'line 3: no "prompt" field.'),
        ('{"prompt": "x", "max_tokens": 0}', 'line 3: "max_tokens" must be a positive integer, got 0.'),
        ('{"prompt": ""}', 'line 3: "prompt" must be a non-empty string.'),
        ("not json", "line 3: not valid JSON (Expecting value)."),
    ],
)
def test_bad_dataset_line_names_its_number(tmp_path, line, message):
    path = _dataset(tmp_path, ['{"prompt": "a"}', '{"prompt": "b"}', line])
    cfg, plan = plan_for(f"benchmark.dataset={path}")
    with pytest.raises(ADError) as e:
        dataset_workload(plan, cfg, ModelFactory(cfg).tokenizer())
    assert str(e.value).startswith(f"Dataset `{path}` {message}")


def test_dataset_line_too_long_and_missing_file(tmp_path):
    path = _dataset(tmp_path, [json.dumps({"prompt": "x" * 300, "max_tokens": 300})])
    cfg, plan = plan_for(f"benchmark.dataset={path}")
    with pytest.raises(ADError, match=r"line 1: prompt \d+ \+ output 300 = \d+ tokens exceeds `max_seq_len` \(512\)"):
        dataset_workload(plan, cfg, ModelFactory(cfg).tokenizer())
    cfg, plan = plan_for(f"benchmark.dataset={tmp_path / 'missing.jsonl'}")
    with pytest.raises(ADError, match="does not exist"):
        dataset_workload(plan, cfg, None)


def test_trtllm_prepare_dataset_lines(tmp_path):
    """trtllm-bench prepare-dataset lines: token ids and output_tokens; text lines still need the tokenizer."""
    path = _dataset(tmp_path, [json.dumps({"task_id": 0, "input_ids": [5, 6, 7], "output_tokens": 4}),
                               json.dumps({"task_id": 1, "prompt": "Hi", "output_tokens": 2})])
    cfg, plan = plan_for(f"benchmark.dataset={path}")
    loads = []

    def loader():
        loads.append(1)
        return ModelFactory(cfg).tokenizer()

    w = dataset_workload(plan, cfg, loader)
    assert [(r.prompt_token_ids[:3], r.max_tokens) for r in w.requests][0] == ([5, 6, 7], 4)
    assert w.requests[1].max_tokens == 2 and loads == [1]
    ids_only = _dataset(tmp_path, [json.dumps({"task_id": 0, "input_ids": [9], "output_tokens": 1})])
    cfg, plan = plan_for(f"benchmark.dataset={ids_only}")
    assert dataset_workload(plan, cfg, lambda: pytest.fail("no text line: no tokenizer")).requests[0].max_tokens == 1
    bad = _dataset(tmp_path, [json.dumps({"task_id": 0, "input_ids": ["a"]})])
    cfg, plan = plan_for(f"benchmark.dataset={bad}")
    with pytest.raises(ADError, match='line 1: "input_ids" must be a non-empty list of token ids'):
        dataset_workload(plan, cfg, loader)
