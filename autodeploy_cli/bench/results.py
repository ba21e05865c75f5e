"""The benchmark result: everything measured plus what it takes to reproduce it, as one JSON document.

Layout (schema `ad-bench/1`): partial flag, conditions, environment (versions, GPU, driver, git commit), the
resolved config, workload, build-time split, KV-cache capacity, hardware (copy bandwidth) and model bytes, then one
metrics block per run (`ad`, and `hf` / `hf-compile` when asked) and the speedups of ours over each baseline.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from autodeploy_cli.bench.metrics import RunTrace, decode_floor, speedups, summarize
from autodeploy_cli.bench.plan import BenchPlan
from autodeploy_cli.errors import ADError

SCHEMA = "ad-bench/1"
OURS = "ad"

# metrics every run block carries (the tests check each is present)
RUN_FIELDS = (
    "num_requests_completed", "input_tokens", "output_tokens", "duration_s", "warmup_s",
    "request_throughput_req_s", "output_throughput_tok_s", "total_throughput_tok_s", "per_user_tok_s",
    "ttft_ms", "itl_ms", "tpot_ms", "e2e_latency_ms", "peak_gpu_memory_gib", "peak_gpu_memory_note", "decode",
)
BUILD_FIELDS = ("total_s", "export_s", "transforms_s", "weight_load_s", "compile_s")


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class BenchResult:
    plan: BenchPlan
    config: dict[str, Any]
    workload: dict[str, Any]
    conditions: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)  # hardware.model_bytes()
    hardware: dict[str, Any] = field(default_factory=dict)  # copy bandwidth and how it was measured
    build: Optional[dict[str, Any]] = None
    kv_cache_capacity_tokens: Optional[int] = None
    quality: Optional[dict[str, Any]] = None  # quantized builds with --baseline hf: logits vs the HF model
    runs: dict[str, RunTrace] = field(default_factory=dict)
    partial: bool = False
    interrupted_during: Optional[str] = None
    started_at: str = field(default_factory=utc_now)

    def run_metrics(self, trace: RunTrace) -> dict[str, Any]:
        data = summarize(trace)
        bw = self.hardware.get("copy_bandwidth_gb_s")
        moe = self.model.get("moe")  # MoE: the dense part + the experts each step's batch touches
        data["decode"] = decode_floor(
            trace,
            moe["dense_weight_bytes_per_decode_step"] if moe else self.model.get("weight_bytes_per_decode_step", 0),
            self.model.get("kv_bytes_per_token", 0),
            bw * 1e9 if bw else None,
            "" if bw else self.hardware.get("note", "copy bandwidth not measured"),
            self.model.get("state_bytes_per_seq", 0),
            moe=moe,
        )
        return data

    def to_dict(self) -> dict[str, Any]:
        runs = {name: self.run_metrics(trace) for name, trace in self.runs.items()}
        comparison = {
            name: speedups(runs[OURS], data) for name, data in runs.items() if name != OURS and OURS in runs
        }
        return {
            "schema": SCHEMA,
            "partial": self.partial,
            "interrupted_during": self.interrupted_during,
            "started_at": self.started_at,
            "finished_at": utc_now(),
            "conditions": {**self.conditions, **self.plan.conditions()},
            "environment": self.environment,
            "workload": self.workload,
            "build": self.build,
            "kv_cache_capacity_tokens": self.kv_cache_capacity_tokens,
            "quality": self.quality,
            "hardware": self.hardware,
            "model": self.model,
            "runs": runs,
            "speedup_vs": comparison,
            "config": self.config,
        }


def write_json(data: dict[str, Any], path: str | Path) -> Path:
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(data, indent=2, default=str) + "\n")
    except OSError as e:
        raise ADError(f"Cannot write the benchmark results to `{path}`: {e.strerror}. Pick a writable --output path.") from None
    return p
