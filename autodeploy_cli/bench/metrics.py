"""Timing records of one benchmark run and the metrics computed from them.

A run records, per request, when it was submitted and when each output token reached the host, and per engine
step how long it took and how many KV-cache tokens its decoding sequences read. Everything else is derived:

    TTFT      first token time - submit time
    ITL       gaps between consecutive tokens of one request (pooled over requests)
    TPOT      (e2e - TTFT) / (output tokens - 1), per request
    e2e       last token time - submit time
    per-user  output tokens / e2e, per request
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

now = time.perf_counter


@dataclass
class RequestRecord:
    index: int  # position in the workload
    prompt_len: int
    max_tokens: int
    t_submit: float = 0.0
    token_times: list[float] = field(default_factory=list)  # one host timestamp per output token
    t_end: Optional[float] = None
    error: Optional[str] = None

    @property
    def output_len(self) -> int:
        return len(self.token_times)

    @property
    def done(self) -> bool:
        return self.t_end is not None and self.error is None


@dataclass
class StepRecord:
    duration_s: float
    batch: int  # sequences that produced a token in this step
    is_decode: bool  # no sequence produced its first token (no prefill work in the step)
    kv_tokens: int  # cached tokens the decoding sequences attend over


@dataclass
class RunTrace:
    """Everything one timed run (ours or a baseline) records; filled while it runs, so a partial run is usable."""

    name: str
    description: str = ""
    requests: list[RequestRecord] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    t_start: Optional[float] = None
    t_end: Optional[float] = None
    warmup_s: Optional[float] = None
    peak_memory_bytes: Optional[int] = None
    peak_memory_note: str = ""
    partial: bool = False
    notes: list[str] = field(default_factory=list)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def distribution(values: Sequence[float], scale: float = 1.0) -> dict[str, Optional[float]]:
    """mean, p50, p90, p99 of `values` times `scale` (all None when there are no values)."""
    if not values:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    xs = [v * scale for v in values]
    return {"mean": sum(xs) / len(xs), "p50": percentile(xs, 50), "p90": percentile(xs, 90), "p99": percentile(xs, 99)}


def _ratio(a: float, b: float) -> Optional[float]:
    return a / b if b > 0 else None


def summarize(trace: RunTrace) -> dict[str, Any]:
    """The metrics of one run (latencies in ms, rates per second) from its completed requests."""
    done = [r for r in trace.requests if r.done]
    t_start = trace.t_start if trace.t_start is not None else 0.0
    ends = [r.t_end for r in done if r.t_end is not None]
    t_end = trace.t_end if trace.t_end is not None else (max(ends) if ends else t_start)
    duration = max(t_end - t_start, 0.0)
    input_tokens = sum(r.prompt_len for r in done)
    output_tokens = sum(r.output_len for r in done)
    ttft = [r.token_times[0] - r.t_submit for r in done if r.token_times]
    e2e = [r.t_end - r.t_submit for r in done]  # type: ignore[operator]
    itl = [b - a for r in done for a, b in zip(r.token_times, r.token_times[1:])]
    tpot = [(r.t_end - r.token_times[0]) / (r.output_len - 1) for r in done if r.output_len > 1]  # type: ignore[operator]
    per_user = [r.output_len / (r.t_end - r.t_submit) for r in done if r.t_end > r.t_submit]  # type: ignore[operator]
    errors = [f"request {r.index}: {r.error}" for r in trace.requests if r.error]
    return {
        "name": trace.name,
        "description": trace.description,
        "partial": trace.partial,
        "num_requests_submitted": len(trace.requests),
        "num_requests_completed": len(done),
        "num_requests_failed": len(errors),
        "errors": errors[:10],
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "duration_s": duration,
        "warmup_s": trace.warmup_s,
        "request_throughput_req_s": _ratio(len(done), duration),
        "output_throughput_tok_s": _ratio(output_tokens, duration),
        "total_throughput_tok_s": _ratio(input_tokens + output_tokens, duration),
        "per_user_tok_s": distribution(per_user),
        "ttft_ms": distribution(ttft, 1e3),
        "itl_ms": distribution(itl, 1e3),
        "tpot_ms": distribution(tpot, 1e3),
        "e2e_latency_ms": distribution(e2e, 1e3),
        "peak_gpu_memory_gib": None if trace.peak_memory_bytes is None else trace.peak_memory_bytes / 2**30,
        "peak_gpu_memory_note": trace.peak_memory_note,
        "notes": list(trace.notes),
        "requests": [
            {
                "index": r.index,
                "prompt_tokens": r.prompt_len,
                "max_tokens": r.max_tokens,
                "output_tokens": r.output_len,
                "ttft_ms": (r.token_times[0] - r.t_submit) * 1e3 if r.token_times else None,
                "e2e_ms": (r.t_end - r.t_submit) * 1e3 if r.t_end is not None else None,
                "error": r.error,
            }
            for r in trace.requests
        ],
    }


def expected_experts_touched(num_experts: int, top_k: int, tokens: int) -> float:
    """Expected distinct experts one MoE layer reads when `tokens` tokens each pick `top_k` distinct experts of
    `num_experts` uniformly: an expert is missed by one token with probability (E - k) / E, so
    E * (1 - ((E - k) / E) ** tokens) (= k for one token, -> E for many)."""
    if num_experts <= 0 or tokens <= 0:
        return 0.0
    k = min(top_k, num_experts)
    return num_experts * (1.0 - ((num_experts - k) / num_experts) ** tokens)


def step_weight_bytes(weight_bytes: int, moe: Optional[dict[str, Any]], batch: int) -> float:
    """Weight bytes one decode step of `batch` sequences reads: every weight for a dense model; for MoE the dense
    part (`weight_bytes`) plus the routed experts it is expected to touch (hardware.model_bytes()'s `moe`)."""
    if not moe:
        return float(weight_bytes)
    touched = expected_experts_touched(moe["num_experts"], moe["experts_per_token"], batch)
    return weight_bytes + moe["routed_expert_bytes"] * touched / moe["num_experts"]


def decode_floor(
    trace: RunTrace, weight_bytes: int, kv_bytes_per_token: int, bandwidth_bytes_s: Optional[float], reason: str = "",
    state_bytes_per_seq: int = 0, moe: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Achieved fraction of the memory-bandwidth floor over the run's decode-only steps.

    A decode step must read every weight once (embedding rows excepted), the KV cache of its sequences and (hybrid
    models) the state slots of its sequences, so it cannot beat (weight + KV + state bytes) / bandwidth.
    fraction = sum of those floors / sum of measured step times. MoE (`moe` given, `weight_bytes` = the non-expert
    part): a step reads only the experts its batch's top-k touches, expected_experts_touched() per layer.
    """
    steps = [s for s in trace.steps if s.is_decode]
    measured = sum(s.duration_s for s in steps)
    moved = [step_weight_bytes(weight_bytes, moe, s.batch) + kv_bytes_per_token * s.kv_tokens
             + state_bytes_per_seq * s.batch for s in steps]
    out: dict[str, Any] = {
        "decode_steps": len(steps),
        "mean_step_ms": measured / len(steps) * 1e3 if steps else None,
        "mean_batch": sum(s.batch for s in steps) / len(steps) if steps else None,
        "mean_bytes_per_step": sum(moved) / len(steps) if steps else None,
        "floor_ms_per_step": None,
        "bandwidth_floor_fraction": None,
        "reason": reason,
    }
    if moe and steps:
        out["mean_experts_touched_per_layer"] = sum(
            expected_experts_touched(moe["num_experts"], moe["experts_per_token"], s.batch) for s in steps) / len(steps)
    if not steps:
        out["reason"] = reason or "no decode-only steps were recorded"
        return out
    if bandwidth_bytes_s:
        floor = sum(b / bandwidth_bytes_s for b in moved)
        out["floor_ms_per_step"] = floor / len(steps) * 1e3
        out["bandwidth_floor_fraction"] = floor / measured if measured > 0 else None
    return out


def speedups(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Optional[float]]:
    """How many times better ours is per headline metric (> 1: ours wins): rates ours/theirs, latencies theirs/ours."""
    out: dict[str, Optional[float]] = {}
    for key in ("request_throughput_req_s", "output_throughput_tok_s", "total_throughput_tok_s"):
        a, b = ours.get(key), theirs.get(key)
        out[key] = a / b if a and b else None
    for key in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_latency_ms"):
        a, b = (ours.get(key) or {}).get("mean"), (theirs.get(key) or {}).get("mean")
        out[key] = b / a if a and b else None
    a, b = (ours.get("per_user_tok_s") or {}).get("mean"), (theirs.get("per_user_tok_s") or {}).get("mean")
    out["per_user_tok_s"] = a / b if a and b else None
    return out
