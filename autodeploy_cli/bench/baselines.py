"""Hugging Face baselines, run in the same process on the same device with the same weights and workload.

    hf          transformers `generate`, eager PyTorch, dynamic cache (the default)
    hf-compile  `generate` with a static cache, which makes transformers torch.compile the decode step

`generate` batches statically: requests go in groups of `concurrency` (left-padded to the longest prompt of the
group), each group decodes to its longest output. A streamer timestamps every step on the host, so TTFT, ITL
and per-request completion times are measured the same way as ours.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from autodeploy_cli.bench.metrics import RequestRecord, RunTrace, StepRecord, now
from autodeploy_cli.bench.workload import BenchRequest

HF_COMPILE_BACKEND = "inductor"  # torch.compile backend of hf-compile (tests use "eager" to stay fast)

Batch = list[tuple[int, BenchRequest]]


def batches(requests: list[BenchRequest], size: int) -> list[Batch]:
    indexed = list(enumerate(requests))
    return [indexed[i : i + size] for i in range(0, len(indexed), size)]


def batch_shape(batch: Batch) -> tuple[int, int, int]:
    """(batch size, padded prompt length, new tokens): what `generate` sees; warm-up covers each once."""
    return len(batch), max(r.prompt_len for _, r in batch), max(r.max_tokens for _, r in batch)


def generate_kwargs(kind: str, device: torch.device) -> dict[str, Any]:
    if kind == "hf":
        return {}
    from transformers import CompileConfig

    compile_config = CompileConfig(backend=HF_COMPILE_BACKEND)
    if device.type != "cuda":
        compile_config.mode = "default"  # reduce-overhead means CUDA graphs
        compile_config._compile_all_devices = True  # transformers only auto-compiles on accelerators otherwise
    return {"cache_implementation": "static", "compile_config": compile_config}


def describe(kind: str, model: Any) -> str:
    import transformers

    attn = getattr(model.config, "_attn_implementation", None) or "default"
    cache = "dynamic cache" if kind == "hf" else f"static cache + torch.compile ({HF_COMPILE_BACKEND})"
    return f"transformers {transformers.__version__} generate: eager PyTorch, {attn} attention, {cache}"


def _pad_id(model: Any) -> int:
    for value in (model.generation_config.pad_token_id, model.config.pad_token_id, model.generation_config.eos_token_id):
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if isinstance(value, int):
            return value
    return 0


def _make_clock() -> Any:
    from transformers.generation.streamers import BaseStreamer

    class TokenClock(BaseStreamer):
        """Host timestamp of every generated step (the first `put` is the prompt itself)."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self._prompt_seen = False

        def put(self, value: Any) -> None:
            if self._prompt_seen:
                self.times.append(now())
            self._prompt_seen = True

        def end(self) -> None:
            pass

    return TokenClock()


def generate_batch(model: Any, batch: Batch, kwargs: dict[str, Any]) -> tuple[float, list[float], int]:
    """One left-padded `generate` call; returns (start time, per-step token times, new tokens generated)."""
    size, length, new = batch_shape(batch)
    pad = _pad_id(model)
    device = model.device
    ids = torch.full((size, length), pad, dtype=torch.long)
    mask = torch.zeros((size, length), dtype=torch.long)
    for row, (_, req) in enumerate(batch):
        ids[row, length - req.prompt_len :] = torch.tensor(req.prompt_token_ids, dtype=torch.long)
        mask[row, length - req.prompt_len :] = 1
    ids, mask = ids.to(device), mask.to(device)
    clock = _make_clock()
    t0 = now()
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
        pad_token_id=pad, streamer=clock, **kwargs,
    )
    return t0, clock.times, int(out.shape[1]) - length


def warmup(model: Any, groups: list[Batch], kwargs: dict[str, Any]) -> float:
    """Run every distinct batch shape once, untimed (first calls pay for kernels, plans and compilation)."""
    t0 = now()
    seen: set[tuple[int, int, int]] = set()
    for batch in groups:
        if batch_shape(batch) not in seen:
            seen.add(batch_shape(batch))
            generate_batch(model, batch, kwargs)
    return now() - t0


def run_hf(
    model: Any,
    kind: str,
    requests: list[BenchRequest],
    concurrency: int,
    trace: RunTrace,
    do_warmup: bool = True,
    on_done: Optional[Callable[[], None]] = None,
    on_warm: Optional[Callable[[], None]] = None,
) -> RunTrace:
    """Run the workload through `model.generate` in groups of `concurrency`, recording into `trace`."""
    kwargs = generate_kwargs(kind, model.device)
    groups = batches(requests, concurrency)
    trace.description = describe(kind, model)
    if do_warmup:
        trace.warmup_s = warmup(model, groups, kwargs)
    if on_warm:
        on_warm()
    trace.t_start = now()
    try:
        for batch in groups:
            size, length, _ = batch_shape(batch)
            records = [RequestRecord(i, r.prompt_len, r.max_tokens) for i, r in batch]
            trace.requests.extend(records)
            t0, times, generated = generate_batch(model, batch, kwargs)
            if times:  # step 0 is the prefill; step k reads the padded prompt plus k earlier tokens per row
                trace.steps.append(StepRecord(times[0] - t0, size, False, 0))
                trace.steps.extend(StepRecord(b - a, size, True, size * (length + k))
                                   for k, (a, b) in enumerate(zip(times, times[1:]), start=1))
            for rec in records:
                rec.t_submit = t0
                n = rec.max_tokens
                if len(times) >= n and generated >= n:
                    rec.token_times, rec.t_end = times[:n], times[n - 1]
                else:
                    rec.token_times, rec.t_end = times[:n], times[-1] if times else t0
                    rec.error = f"generate produced {generated} tokens, {n} requested"
                if on_done:
                    on_done()
    finally:
        trace.t_end = now()
    return trace
