"""Our side of the benchmark: build the engine, warm it up, and drive it with the workload.

The driver keeps at most `concurrency` requests in the engine (offline throughput mode; latency mode is
concurrency 1) and timestamps every token when `engine.step()` hands it back to the host.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterable, Optional

from autodeploy_cli.bench.metrics import RequestRecord, RunTrace, StepRecord, now
from autodeploy_cli.bench.workload import BenchRequest
from autodeploy_cli.config.schema import ADConfig

# build stages -> the build-time split `ad bench` reports
BUILD_SPLIT = {
    "factory": "export",
    "export": "export",
    "post_export": "transforms",
    "pattern_matcher": "transforms",
    "sharding": "transforms",
    "post_load_fusion": "transforms",
    "cache_init": "transforms",
    "weight_load": "weight_load",
    "compile": "compile",
}


def make_engine(cfg: ADConfig) -> Any:
    """Build our engine (runs the whole pipeline). Tests replace this with a fake engine."""
    from autodeploy_cli.llm import build_engine

    return build_engine(cfg)


def sampling_params(max_tokens: int, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> Any:
    """Exactly `max_tokens` tokens (EOS ignored), so every run does the same work; greedy unless a temperature is
    given (benchmark.temperature / top_p: sampled runs, seeded)."""
    from autodeploy_cli.runtime.engine import SamplingParams

    # token ids in and out: a benchmark of a hub id needs no tokenizer (none may be stored offline)
    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, ignore_eos=True,
                          detokenize=False, seed=seed if temperature > 0 else None)


def build_split(records: Iterable[Any], total_s: float) -> dict[str, Any]:
    """Seconds per part of the build (export, transforms, weight load, compile) from the build records' stages."""
    split = {"total_s": total_s, "export_s": 0.0, "transforms_s": 0.0, "weight_load_s": 0.0, "compile_s": 0.0}
    rows = []
    for rec in records:
        part = BUILD_SPLIT.get(str(getattr(rec, "stage", "")), "transforms")
        split[f"{part}_s"] += float(getattr(rec, "time_s", 0.0) or 0.0)
        rows.append({"name": rec.name, "stage": rec.stage, "time_s": rec.time_s,
                     "num_matches": getattr(rec, "num_matches", None), "enabled": getattr(rec, "enabled", True)})
    split["other_s"] = max(total_s - sum(split[k] for k in ("export_s", "transforms_s", "weight_load_s", "compile_s")), 0.0)
    split["records"] = rows
    return split


def run_engine(
    engine: Any,
    requests: list[BenchRequest],
    concurrency: int,
    trace: RunTrace,
    on_done: Optional[Callable[[], None]] = None,
    sampling: Optional[Callable[[int], Any]] = None,
) -> RunTrace:
    """Drive `engine` through `requests`, recording into `trace` as it goes (so an interrupt keeps what ran)."""
    sampling = sampling or sampling_params
    pending = deque(enumerate(requests))
    live: dict[int, RequestRecord] = {}
    trace.t_start = now()
    try:
        while pending or live:
            while pending and len(live) < concurrency:
                index, req = pending.popleft()
                rec = RequestRecord(index, req.prompt_len, req.max_tokens, t_submit=now())
                trace.requests.append(rec)
                live[engine.add_request(list(req.prompt_token_ids), sampling(req.max_tokens))] = rec
            t0 = now()
            outputs = engine.step()
            t1 = now()
            first = decode = kv_tokens = 0
            for out in outputs:
                rec = live.get(out.request_id)
                if rec is None:
                    continue
                if out.new_token_ids:
                    if rec.output_len == 0:
                        first += 1
                    else:  # the new token attends over the prompt and every earlier output token
                        decode += 1
                        kv_tokens += rec.prompt_len + rec.output_len
                    rec.token_times.extend([t1] * len(out.new_token_ids))
                if getattr(out, "error", None):
                    rec.error = str(out.error)
                if out.finished or rec.error:
                    _finish(rec, t1, getattr(out, "finish_reason", None))
                    del live[out.request_id]
                    if on_done:
                        on_done()
            if first or decode:
                # a call returns the tokens of the forward before it (greedy steps overlap with the host) and
                # waits for that forward: a call that returns first tokens timed a prefill
                trace.steps.append(StepRecord(t1 - t0, first + decode, first == 0, kv_tokens))
            elif live and not engine.has_unfinished():
                for rec in live.values():  # the engine dropped them: report, never hang
                    rec.error = "the engine reported no unfinished requests while this one was still running"
                    _finish(rec, t1, None)
                live.clear()
    finally:
        trace.t_end = now()
    return trace


def _finish(rec: RequestRecord, t: float, finish_reason: Optional[str]) -> None:
    rec.t_end = rec.token_times[-1] if rec.token_times else t
    if rec.error is None and rec.output_len != rec.max_tokens:
        rec.error = (f"produced {rec.output_len} tokens but {rec.max_tokens} were requested with EOS ignored "
                     f"(finish_reason={finish_reason})")
