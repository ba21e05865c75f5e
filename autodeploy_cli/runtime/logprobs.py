"""Log-probabilities for the requests that ask (sampling.logprobs / prompt_logprobs) and the min_tokens mask.

Prompt logprobs need the logits of every prompt token, not just the last: a step with a prompt chunk to score
gathers explicit rows (that sequence's every token, the others' last) instead of "last". Everything here runs only
for requests that ask, so plain greedy steps keep their device-side overlap.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from autodeploy_cli.runtime.request import Request, TokenLogprob

Span = tuple[int, int, bool]  # (first gathered row of the sequence, its number of rows, whether its prompt is scored)


def token_logprobs(logits: torch.Tensor, targets: Sequence[int], k: int, chunk: int = 256) -> list[Any]:
    """logits [R, V] -> per row (logprob of targets[r], top-k [(id, logprob)]) under log_softmax of the raw logits,
    in float32, `chunk` rows at a time (a whole prompt's logits in float32 can be large)."""
    out: list[Any] = []
    for s in range(0, logits.shape[0], chunk):
        lp = torch.log_softmax(logits[s: s + chunk].float(), dim=-1)
        idx = torch.tensor(list(targets[s: s + chunk]), device=lp.device).unsqueeze(1)
        chosen = lp.gather(1, idx).squeeze(1).tolist()
        if k > 0:
            top = torch.topk(lp, min(k, lp.shape[-1]), dim=-1)
            pairs = [list(zip(i, v)) for i, v in zip(top.indices.tolist(), top.values.tolist())]
        else:
            pairs = [[] for _ in chosen]
        out.extend(zip(chosen, pairs))
    return out



def scores_prompt(r: Request) -> bool:
    """r's prompt still has tokens to score and the coming chunk runs prompt tokens."""
    return r.sampling.prompt_logprobs is not None and len(r.prompt_logprobs) < len(r.prompt_token_ids) \
        and r.num_computed < len(r.prompt_token_ids)


def gather_plan(batch: list[tuple[Request, int]]) -> tuple[Any, Optional[list[Span]]]:
    """("last", None), or explicit flat token indices and a Span per sequence when a prompt chunk is scored."""
    if not any(scores_prompt(r) for r, _ in batch):
        return "last", None
    idx: list[int] = []
    spans: list[Span] = []
    off = 0
    for r, n in batch:
        scored = scores_prompt(r)
        lo = off if scored else off + n - 1
        spans.append((len(idx), off + n - lo, scored))
        idx.extend(range(lo, off + n))
        off += n
    return idx, spans


def score_prompts(logits: torch.Tensor, batch: list[tuple[Request, int]], spans: list[Span]) -> None:
    """Prompt logprobs of the chunks just run (before num_computed moves): the row of token j scores token j + 1.
    A recomputed (preempted) prompt is not scored twice."""
    for (r, n), (start, _, scored) in zip(batch, spans):
        if not scored:
            continue
        s, plen = r.num_computed, len(r.prompt_token_ids)
        if not r.prompt_logprobs:
            r.prompt_logprobs.append(None)  # the first token has no context to score it
        j0, j1 = max(s, len(r.prompt_logprobs) - 1), min(s + n, plen - 1)
        if j0 >= j1:
            continue
        targets = r.prompt_token_ids[j0 + 1: j1 + 1]
        rows = logits[start + j0 - s: start + j1 - s]
        for t, (lp, top) in zip(targets, token_logprobs(rows, targets, r.sampling.prompt_logprobs or 0)):
            r.prompt_logprobs.append(TokenLogprob(t, lp, top))


def mask_below_min_tokens(logits: torch.Tensor, ready: list[Request], eos_token_ids: set[int]) -> torch.Tensor:
    """logits [R, V] with EOS and stop tokens at -inf for requests below min_tokens (a copy when any is)."""
    early = [i for i, r in enumerate(ready) if len(r.output_token_ids) < r.sampling.min_tokens]
    if not early:
        return logits
    out = logits.clone()
    for i in early:
        sp = ready[i].sampling
        ids = [t for t in set(sp.stop_token_ids) | (set() if sp.ignore_eos else eos_token_ids) if 0 <= t < out.shape[-1]]
        if ids:
            out[i, ids] = float("-inf")
    return out
