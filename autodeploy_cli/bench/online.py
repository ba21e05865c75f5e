"""`ad bench --url URL`: the same workloads, metrics and JSON as the offline bench, against any OpenAI-compatible
server (ours, vLLM, trtllm-serve), streamed over HTTP.

Each request is a streamed `/v1/completions` call with token-id prompts (exact ISL), greedy, EOS ignored, and
`stream_options.include_usage` (so the token count is the server's, whatever its chunking). Token times are the
arrival times of the chunks: a chunk without a finish reason is a token; a final chunk that still carries text
holds the last token(s), and the server's usage count fills in any tokens a chunk merged. `--concurrency` clients
keep requests in flight; warm-up sends the first `concurrency` requests once.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from typing import Any, Callable, Optional

from autodeploy_cli.bench.http_stream import HTTPError, get_json, stream_json
from autodeploy_cli.bench.metrics import RequestRecord, RunTrace, now
from autodeploy_cli.bench.plan import BenchPlan
from autodeploy_cli.bench.results import BenchResult
from autodeploy_cli.bench.workload import BenchRequest, load_workload
from autodeploy_cli.config.schema import ADConfig
from autodeploy_cli.errors import ADError

ONLINE = "online"
SERVER_NOTE = "online run: the engine's steps and the server's GPU are not visible from the client"


def payload(model: str, req: BenchRequest) -> dict[str, Any]:
    return {"model": model, "prompt": list(req.prompt_token_ids), "max_tokens": req.max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}


async def run_request(url: str, model: str, req: BenchRequest, rec: RequestRecord) -> None:
    """One streamed request, recorded into `rec` (token times, end, error)."""
    times: list[float] = []
    usage: Optional[int] = None
    last: Optional[float] = None
    tail = False  # the final chunk carried text: it holds the last token(s)
    rec.t_submit = now()
    try:
        async for t, obj in stream_json(url + "/v1/completions", payload(model, req)):
            if obj.get("error") and not obj.get("choices"):
                rec.error = str(obj["error"])[:500]
                break
            if obj.get("usage"):
                usage = obj["usage"].get("completion_tokens")
            for ch in obj.get("choices") or []:
                last = t
                if ch.get("finish_reason") is None:
                    times.append(t)
                elif ch.get("text"):
                    tail = True
    except (HTTPError, OSError, asyncio.IncompleteReadError, ValueError) as e:
        rec.error = f"{type(e).__name__}: {e}"[:500]
    n = usage if usage is not None else len(times) + int(tail)
    if last is not None:
        times = times[:n] + [last] * max(n - len(times), 0)
    rec.token_times = times
    rec.t_end = times[-1] if times else now()
    if rec.error is None and len(times) != rec.max_tokens:
        rec.error = f"produced {len(times)} tokens but {rec.max_tokens} were requested with EOS ignored"


async def drive(url: str, model: str, requests: list[BenchRequest], concurrency: int, trace: RunTrace,
                on_done: Optional[Callable[[], None]] = None) -> RunTrace:
    """`concurrency` clients over `requests`, recording into `trace` as they go (an interrupt keeps what ran)."""
    pending = deque(enumerate(requests))

    async def client() -> None:
        while pending:
            index, req = pending.popleft()
            rec = RequestRecord(index, req.prompt_len, req.max_tokens)
            trace.requests.append(rec)
            await run_request(url, model, req, rec)
            if on_done:
                on_done()

    trace.t_start = now()
    try:
        await asyncio.gather(*[client() for _ in range(max(1, min(concurrency, len(requests))))])
    finally:
        trace.t_end = now()
    return trace


async def served_model(url: str, wanted: str) -> tuple[str, list[str]]:
    """The model name to send: `wanted` when the server lists it, else the server's first model."""
    try:
        ids = [m["id"] for m in (await get_json(url + "/v1/models")).get("data", [])]
    except (HTTPError, OSError, ValueError, KeyError, TypeError) as e:
        raise ADError(f"Cannot reach an OpenAI-compatible server at `{url}` (GET /v1/models: {e}). Start it "
                      "first (e.g. `ad serve MODEL`) and pass its base URL to --url.") from None
    if not ids:
        raise ADError(f"The server at `{url}` lists no models (GET /v1/models); it cannot be benchmarked.")
    return (wanted if wanted in ids else ids[0]), ids


class OnlineSession:
    """One `ad bench --url` run; the same shape as the offline session (result, plan, console, stage)."""

    def __init__(self, cfg: ADConfig, plan: BenchPlan, console: Any):
        from autodeploy_cli.models.factory import ModelFactory

        self.cfg, self.plan, self.console = cfg, plan, console
        self.factory = ModelFactory(cfg)  # the model's vocabulary and tokenizer: the workload is built here
        self.workload = load_workload(plan, cfg, self.factory, check_fits=False)
        self.stage = "setup"
        self.result = BenchResult(plan=plan, config=dataclasses.asdict(cfg), workload=self.workload.summary(),
                                  conditions={"model": cfg.model, "url": plan.url, "dtype": "server's",
                                              "device": "server's", "world_size": None})

    def run(self) -> None:
        import torch

        from autodeploy_cli.bench import hardware

        assert self.plan.url is not None
        model, ids = asyncio.run(served_model(self.plan.url, self.cfg.model))
        self.result.conditions.update(served_model=model, server_models=ids)
        self.result.environment = {**hardware.environment(torch.device("cpu")), "server_url": self.plan.url}
        self.result.model = hardware.model_bytes(self.factory)
        self.result.hardware = {"copy_bandwidth_gb_s": None, "note": SERVER_NOTE}
        c, requests = self.plan.concurrency, self.workload.requests
        trace = self.result.runs.setdefault(ONLINE, RunTrace(ONLINE, f"streamed /v1/completions at {self.plan.url} "
                                                                     f"(model {model}), {c} clients"))
        self.stage = ONLINE
        if self.plan.warmup:
            t0 = now()
            asyncio.run(drive(self.plan.url, model, requests[:c], c, RunTrace("online-warmup")))
            trace.warmup_s = now() - t0
        asyncio.run(drive(self.plan.url, model, requests, c, trace))
        trace.notes.append(SERVER_NOTE)
