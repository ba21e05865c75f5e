"""Token sampling: greedy (temperature 0), or temperature + top-k + top-p with a per-request seeded generator."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch


MIN_TEMPERATURE = 1e-5  # below this, sampling is greedy: dividing float32 logits by it would overflow


def validate(sp: Any) -> Optional[str]:
    """Why the sampling parameters are invalid (None: they are fine)."""
    if sp.max_tokens is None or sp.max_tokens < 1:
        return f"max_tokens must be at least 1, got {sp.max_tokens}"
    if sp.temperature is None or not (math.isfinite(sp.temperature) and sp.temperature >= 0):
        return f"temperature must be a finite number >= 0 (0 = greedy), got {sp.temperature}"
    if sp.top_p is None or not 0 < sp.top_p <= 1:  # NaN fails both comparisons
        return f"top_p must be in (0, 1], got {sp.top_p}"
    if sp.top_k is not None and sp.top_k < 0:
        return f"top_k must be >= 0 (0 or null = off), got {sp.top_k}"
    if sp.stop and not getattr(sp, "detokenize", True):
        return "stop strings need the output text: keep detokenize=True or use stop_token_ids"
    return None


def filter_logits(logits: torch.Tensor, top_k: Optional[int], top_p: float) -> torch.Tensor:
    """logits [V] (float) with everything outside the top-k / top-p set at -inf."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens before it already reach top_p (the first one always stays)
        drop = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return logits


def sample(logits: torch.Tensor, params: Sequence[Any], generators: Sequence[Optional[torch.Generator]]) -> list[int]:
    """logits [R, V] -> one token per row. Greedy rows need one device argmax; sampled rows run on the CPU."""
    tokens = logits.argmax(dim=-1).tolist()  # the one device->host transfer of a greedy step
    for i, sp in enumerate(params):
        if sp.temperature < MIN_TEMPERATURE:
            continue  # greedy: logits / t would overflow float32 (and the distribution is one-hot anyway)
        row = logits[i].float().cpu()
        row = (row - row.max()) / sp.temperature  # max first: a tiny temperature gives -inf, never inf - inf
        probs = torch.softmax(filter_logits(row, sp.top_k, sp.top_p), dim=-1)
        tokens[i] = int(torch.multinomial(probs, 1, generator=generators[i]).item())
    return tokens


def validate_logprobs(sp: Any, vocab_size: Optional[int]) -> Optional[str]:
    """Why min_tokens / logprobs / prompt_logprobs are invalid (None: fine)."""
    if sp.min_tokens is None or sp.min_tokens < 0 or sp.min_tokens > sp.max_tokens:
        return f"min_tokens must be in [0, max_tokens={sp.max_tokens}], got {sp.min_tokens}"
    for name in ("logprobs", "prompt_logprobs"):
        k = getattr(sp, name)
        if k is not None and (k < 0 or (vocab_size is not None and k > vocab_size)):
            return f"{name} must be null or in [0, {vocab_size or 'vocab size'}], got {k}"
    return None

