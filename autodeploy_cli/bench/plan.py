"""The benchmark plan: the `benchmark:` config section checked against the deployment limits, before any build.

Every check here is cheap, so a bad ISL/OSL or count fails in well under a second instead of after the build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from autodeploy_cli.config.schema import ADConfig
from autodeploy_cli.config.schema import effective_max_num_tokens as schema_max_num_tokens
from autodeploy_cli.errors import ADError, did_you_mean

BASELINES = ("hf", "hf-compile")
DEFAULT_NUM_REQUESTS = 8  # synthetic requests when `benchmark.num_requests` is unset


@dataclass
class BenchPlan:
    """The resolved benchmark settings (`concurrency` is the effective number of requests in flight)."""

    isl: int
    osl: int
    num_requests: Optional[int]  # None: every dataset line
    concurrency: int
    isl_stdev: float
    osl_stdev: float
    seed: int
    dataset: Optional[str]
    mode: str
    baselines: list[str] = field(default_factory=list)
    baseline_concurrency: Optional[int] = None  # HF's batch per generate call (None: concurrency)
    output: Optional[str] = None
    warmup: bool = True
    max_seq_len: int = 512
    max_num_tokens: int = 4096
    url: Optional[str] = None  # online: an OpenAI-compatible server's base URL

    @property
    def synthetic(self) -> bool:
        return self.dataset is None

    def conditions(self) -> dict:
        """The workload half of "the conditions next to every number"."""
        return {
            "mode": self.mode,
            "isl": None if self.dataset else self.isl,
            "osl": self.osl,
            "isl_stdev": self.isl_stdev,
            "osl_stdev": self.osl_stdev,
            "num_requests": self.num_requests,
            "concurrency": self.concurrency,
            "dataset": self.dataset,
            "seed": self.seed,
            "warmup": self.warmup,
            "url": self.url,
            "baseline_concurrency": self.baseline_concurrency if self.baselines else None,
        }


def _positive(value: Optional[float], flag: str, key: str, what: str) -> None:
    if value is not None and value <= 0:
        raise ADError(f"`{flag}` (`benchmark.{key}`) must be a positive {what}, got {value}. Give a value of 1 or more.")


def effective_max_num_tokens(cfg: ADConfig) -> int:
    """The runtime's own rule (config.schema), so the bench rejects exactly what the engine would."""
    return schema_max_num_tokens(cfg.max_batch_size, cfg.max_seq_len, cfg.max_num_tokens)


def check_sequence_fits(prompt_len: int, max_tokens: int, cfg: ADConfig, where: str, fix: str) -> None:
    """ADError when one request cannot fit the deployment: `where` names it, `fix` says what else to lower."""
    total = prompt_len + max_tokens
    if total > cfg.max_seq_len:
        raise ADError(
            f"{where}: prompt {prompt_len} + output {max_tokens} = {total} tokens exceeds `max_seq_len` "
            f"({cfg.max_seq_len}), the longest sequence the KV cache holds. Raise the limit with "
            f"`max_seq_len={total}` (or more), or {fix}."
        )
    limit = effective_max_num_tokens(cfg)
    if prompt_len > limit and not cfg.enable_chunked_prefill:
        raise ADError(
            f"{where}: the prompt has {prompt_len} tokens but one forward step takes at most `max_num_tokens` = "
            f"{limit} tokens. Raise it with `max_num_tokens={prompt_len}`, or set `enable_chunked_prefill=true`, "
            f"or {fix}."
        )


def make_plan(cfg: ADConfig) -> BenchPlan:
    """Check `cfg.benchmark` (counts, choices, limits) and resolve the effective concurrency."""
    b = cfg.benchmark
    _positive(b.isl, "--isl", "isl", "number of prompt tokens")
    _positive(b.osl, "--osl", "osl", "number of output tokens")
    _positive(b.num_requests, "--num-requests", "num_requests", "number of requests")
    _positive(b.concurrency, "--concurrency", "concurrency", "number of requests in flight")
    _positive(b.baseline_concurrency, "--baseline-concurrency", "baseline_concurrency", "number of sequences per HF call")
    for flag, key in (("--isl-stdev", "isl_stdev"), ("--osl-stdev", "osl_stdev")):
        if getattr(b, key) < 0:
            raise ADError(f"`{flag}` (`benchmark.{key}`) must be 0 (exact lengths) or positive, got {getattr(b, key)}.")
    baselines: list[str] = []
    for name in b.baseline:
        if name not in BASELINES:
            raise ADError(
                f"Unknown baseline `{name}` in `--baseline` (`benchmark.baseline`).{did_you_mean(name, BASELINES)} "
                f"Choose from: {', '.join(BASELINES)}."
            )
        if name not in baselines:
            baselines.append(name)
    if b.mode == "latency":
        if b.concurrency not in (None, 1):
            raise ADError(
                f"`--mode latency` runs one request at a time, but `--concurrency` is {b.concurrency}. Drop "
                "`--concurrency`, or use `--mode throughput` to keep several requests in flight."
            )
        concurrency = 1
    else:
        concurrency = b.concurrency or cfg.max_batch_size
        if concurrency > cfg.max_batch_size and not b.url:  # a server's own limits apply online
            raise ADError(
                f"`--concurrency` {concurrency} is above `max_batch_size` ({cfg.max_batch_size}), the most requests "
                f"the runtime keeps in flight. Raise it with `max_batch_size={concurrency}`, or lower --concurrency."
            )
    if b.url and not b.url.startswith(("http://", "https://")):
        raise ADError(f"`--url {b.url}` is not an HTTP URL; give the server's base URL, e.g. http://127.0.0.1:8000.")
    if b.url and baselines:
        raise ADError("`--baseline` runs HF in this process and cannot be combined with `--url`; benchmark the "
                      "baseline offline, or run a second server and compare the two JSON files.")
    if b.dataset is None and not b.url:
        check_sequence_fits(b.isl, b.osl, cfg, f"--isl {b.isl} --osl {b.osl}", "lower --isl/--osl")
    return BenchPlan(
        isl=b.isl,
        osl=b.osl,
        num_requests=b.num_requests if (b.num_requests or b.dataset) else DEFAULT_NUM_REQUESTS,
        concurrency=concurrency,
        isl_stdev=float(b.isl_stdev),
        osl_stdev=float(b.osl_stdev),
        seed=b.seed,
        dataset=b.dataset,
        mode=b.mode,
        baselines=baselines,
        baseline_concurrency=min(b.baseline_concurrency, concurrency) if b.baseline_concurrency else None,
        output=b.output,
        warmup=b.warmup,
        # online the server's limits apply: synthetic lengths are not clipped to this config's
        max_seq_len=max(cfg.max_seq_len, b.isl + b.osl) if b.url else cfg.max_seq_len,
        max_num_tokens=max(effective_max_num_tokens(cfg), b.isl) if b.url else effective_max_num_tokens(cfg),
        url=b.url.rstrip("/") if b.url else None,
    )
