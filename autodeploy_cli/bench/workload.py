"""Benchmark workloads: synthetic prompts of exact token lengths, or real prompts from a JSONL dataset.

Every request asks for exactly `max_tokens` output tokens with EOS ignored, so ours and the baselines do the same
work and token counts can be checked exactly.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from autodeploy_cli.bench.plan import BenchPlan, check_sequence_fits
from autodeploy_cli.config.schema import ADConfig
from autodeploy_cli.errors import ADError


@dataclass
class BenchRequest:
    prompt_token_ids: list[int]
    max_tokens: int
    source: str = "synthetic"  # or "<file> line N"

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


@dataclass
class Workload:
    requests: list[BenchRequest]
    clipped: int = 0  # synthetic lengths clipped to fit max_seq_len / max_num_tokens

    def summary(self) -> dict[str, Any]:
        isl = [r.prompt_len for r in self.requests]
        osl = [r.max_tokens for r in self.requests]

        def stats(xs: list[int]) -> dict[str, float]:
            return {"mean": sum(xs) / len(xs), "min": min(xs), "max": max(xs)} if xs else {}

        return {
            "num_requests": len(self.requests),
            "input_tokens": sum(isl),
            "output_tokens": sum(osl),
            "isl": stats(isl),
            "osl": stats(osl),
            "clipped_lengths": self.clipped,
        }


def _draw_length(rng: random.Random, mean: int, stdev: float) -> int:
    return mean if stdev <= 0 else max(1, round(rng.gauss(mean, stdev)))


def synthetic_workload(plan: BenchPlan, vocab_size: int, avoid_ids: Iterable[int] = ()) -> Workload:
    """`plan.num_requests` prompts of random token ids; lengths exact, or normal(mean, stdev) clipped to fit.

    Ids in `avoid_ids` (BOS/EOS/PAD) are never drawn, so a prompt never contains a control token by chance.
    """
    rng = random.Random(plan.seed)
    avoid = set(avoid_ids)
    allowed = [i for i in range(vocab_size) if i not in avoid]
    n = plan.num_requests or 0
    requests: list[BenchRequest] = []
    clipped = 0
    for _ in range(n):
        isl = _draw_length(rng, plan.isl, plan.isl_stdev)
        osl = _draw_length(rng, plan.osl, plan.osl_stdev)
        fit_isl = min(isl, plan.max_seq_len - 1, plan.max_num_tokens)
        fit_osl = min(osl, plan.max_seq_len - fit_isl)
        clipped += (fit_isl, fit_osl) != (isl, osl)
        requests.append(BenchRequest(rng.choices(allowed, k=fit_isl), fit_osl))
    return Workload(requests, clipped)


def special_token_ids(hf_config: Any) -> set[int]:
    ids: set[int] = set()
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(hf_config, key, None)
        ids.update(value if isinstance(value, (list, tuple)) else [value] if isinstance(value, int) else [])
    return ids


def _line_error(path: str, lineno: int, what: str) -> ADError:
    return ADError(
        f"Dataset `{path}` line {lineno}: {what}. Each line must be one JSON object like "
        '{"prompt": "Hello", "max_tokens": 64} ("max_tokens" is optional and defaults to --osl), or a line of '
        "trtllm-bench prepare-dataset: {\"task_id\": 0, \"input_ids\": [1, 2], \"output_tokens\": 64}. "
        "Fix or remove that line."
    )


def _prompt_of(obj: dict, path: str, lineno: int) -> Any:
    """A line's prompt: a non-empty string ("prompt") or a non-empty list of token ids ("input_ids")."""
    if "input_ids" in obj and "prompt" not in obj:
        ids = obj["input_ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(t, int) and t >= 0 for t in ids):
            raise _line_error(path, lineno, '"input_ids" must be a non-empty list of token ids')
        return list(ids)
    if "prompt" not in obj:
        raise _line_error(path, lineno, 'no "prompt" field')
    prompt = obj["prompt"]
    if not isinstance(prompt, str) or not prompt:
        raise _line_error(path, lineno, '"prompt" must be a non-empty string')
    return prompt


def read_dataset(path: str) -> list[tuple[int, Any, Optional[int]]]:
    """(line number, prompt text or token ids, max_tokens or None) for every non-blank line; ADError names a bad
    line. "output_tokens" (trtllm-bench's name) is read like "max_tokens"; "task_id" is ignored."""
    p = Path(path)
    if not p.is_file():
        raise ADError(f"Dataset file `{path}` does not exist (resolved to {p.resolve()}). Check the --dataset path.")
    rows: list[tuple[int, str, Optional[int]]] = []
    for lineno, raw in enumerate(p.read_bytes().splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _line_error(path, lineno, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})") \
                from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise _line_error(path, lineno, f"not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise _line_error(path, lineno, 'no "prompt" field')
        prompt = _prompt_of(obj, path, lineno)
        max_tokens = obj.get("max_tokens", obj.get("output_tokens"))
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
            raise _line_error(path, lineno, f'"max_tokens" must be a positive integer, got {max_tokens!r}')
        rows.append((lineno, prompt, max_tokens))
    if not rows:
        raise ADError(f"Dataset `{path}` has no requests (every line is blank). Add JSON lines with a \"prompt\".")
    return rows


def dataset_workload(plan: BenchPlan, cfg: ADConfig, tokenizer: Any, check_fits: bool = True) -> Workload:
    """Tokenised dataset prompts (no chat template); the first `num_requests` lines, repeated if it asks for more.
    `tokenizer` may be a zero-argument loader (called only when a line has a text prompt). check_fits=False: the
    limits are a remote server's to enforce (`ad bench --url`)."""
    assert plan.dataset is not None
    rows = read_dataset(plan.dataset)
    if not hasattr(tokenizer, "encode") and callable(tokenizer) and any(isinstance(r[1], str) for r in rows):
        tokenizer = tokenizer()
    n = plan.num_requests or len(rows)
    requests: list[BenchRequest] = []
    for i in range(n):
        lineno, prompt, max_tokens = rows[i % len(rows)]
        ids = list(tokenizer.encode(prompt)) if isinstance(prompt, str) else list(prompt)
        where = f"Dataset `{plan.dataset}` line {lineno}"
        out = max_tokens or plan.osl
        if check_fits:
            check_sequence_fits(len(ids), out, cfg, where, "shorten that line's prompt or max_tokens")
        requests.append(BenchRequest(ids, out, source=f"{plan.dataset} line {lineno}"))
    return Workload(requests)


def load_workload(plan: BenchPlan, cfg: ADConfig, factory: Any, check_fits: bool = True) -> Workload:
    """The plan's workload: dataset lines (tokenised with the model's tokenizer when they are text) or synthetic
    prompts over the model's vocabulary (its control tokens never drawn)."""
    if plan.dataset:
        return dataset_workload(plan, cfg, factory.tokenizer, check_fits)
    hf_config = factory.hf_config()
    vocab = getattr(getattr(hf_config, "text_config", None) or hf_config, "vocab_size")
    return synthetic_workload(plan, vocab, special_token_ids(hf_config))
