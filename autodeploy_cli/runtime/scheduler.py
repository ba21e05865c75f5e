"""The scheduler: continuous batching, chunked prefill, preemption when the pool is full; it alone appends tokens
to requests and finishes them.

Every step the scheduler picks, within `max_batch_size` sequences and `max_num_tokens` tokens:
  1. running requests, oldest first: decodes (one token) and the next chunk of unfinished prefills; a request that
     needs a page when none is free preempts the newest running request (its pages are freed and it goes back to
     the front of the queue, to be recomputed later: its prompt plus the tokens generated so far);
  2. waiting requests, first come first served, while tokens, sequences and pages last (new requests join while
     others decode). Without chunked prefill a prompt is scheduled whole or waits; a resumed request may always be
     chunked (its recomputed context can be longer than max_num_tokens).
A model with stateful mixers also needs a free state slot per admitted request (`slots`); a request holds its
slot until it finishes or is preempted.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Optional

from autodeploy_cli.runtime.pages import PageManager
from autodeploy_cli.runtime.request import PLACEHOLDER, Request, SamplingParams, StopPolicy
from autodeploy_cli.runtime.slots import SlotManager


class Scheduler:
    def __init__(self, pages: PageManager, max_batch_size: int, max_num_tokens: int, chunked_prefill: bool,
                 stops: Optional[StopPolicy] = None, slots: Optional[SlotManager] = None):
        self.pages = pages
        self.slots = slots
        self.stops = stops
        self.max_batch_size = max_batch_size
        self.max_num_tokens = max_num_tokens
        self.chunked_prefill = chunked_prefill
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order (oldest first)
        self.num_preemptions = 0

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # --- tokens and endings (the only place that changes a request's tokens or ends it) --------------------------
    def reserve_token(self, req: Request) -> None:
        """A token for `req` is in flight on the device: its slot holds PLACEHOLDER, so the next step can decode it."""
        req.all_token_ids.append(PLACEHOLDER)

    def append_token(self, req: Request, tok: int, pos: int, held: bool) -> Optional[str]:
        """Token `tok` at all_token_ids[pos] (held: that slot has a placeholder, else it is appended); ends the
        request when the stop policy says so and returns the reason."""
        req.output_token_ids.append(tok)
        if held:
            req.all_token_ids[pos] = tok
        else:
            req.all_token_ids.append(tok)
        reason = self.stops.reason(req, tok, pos) if self.stops is not None else None
        if reason is not None:
            self.finish(req, reason)
        return reason

    def finish(self, req: Request, reason: str = "stop", error: Optional[str] = None) -> None:
        req.finished, req.finish_reason = True, reason
        if error is not None:
            req.error, req.text = error, ""
        self.pages.release(req.pages)
        self._release_slot(req)
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:  # preempted while its last token was in flight
            self.waiting.remove(req)

    def _release_slot(self, req: Request) -> None:
        if req.slot is not None:
            self.slots.release(req.slot)
            req.slot = None

    def preempt(self, req: Request) -> None:
        self.pages.release(req.pages)
        self._release_slot(req)
        self.running.remove(req)
        req.num_computed = 0
        req.resumed = True
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)  # newest preempted first: older victims end up in front

    def _chunk(self, req: Request, budget: int) -> int:
        if self.chunked_prefill or req.resumed:
            return min(req.num_pending, budget)
        return req.num_pending

    def schedule(self, in_flight: Callable[[Request], bool] = lambda r: False) -> list[tuple[Request, int]]:
        """The requests of the next step with their number of new tokens. `in_flight(r)`: r has a token on the
        device the host has not read (a preempted one waits for it before its context is recomputed)."""
        tokens, seqs = self.max_num_tokens, self.max_batch_size
        out: list[tuple[Request, int]] = []
        i = 0
        while i < len(self.running) and seqs > 0 and tokens > 0:
            req = self.running[i]
            n = self._chunk(req, tokens)
            if n == 0 or n > tokens:  # 0: its last token is being sampled and ends it (length)
                i += 1
                continue
            need = self.pages.pages_for(req.num_computed + n) - len(req.pages)
            while need > self.pages.num_free and req in self.running:
                self.preempt(self.running[-1])
            if req not in self.running:
                break  # it was the newest: everything after it is gone too
            req.pages += self.pages.allocate(max(0, need))
            out.append((req, n))
            tokens, seqs, i = tokens - n, seqs - 1, i + 1
        while self.waiting and seqs > 0 and tokens > 0:
            req = self.waiting[0]
            if in_flight(req):  # preempted while its last token was in flight: recompute once the token is known
                break
            n = self._chunk(req, tokens)
            need = self.pages.pages_for(n)
            # keep one page per running sequence free so admissions do not immediately force preemptions
            if n > tokens or need > self.pages.num_free - (len(self.running) if self.running else 0):
                break
            if self.slots is not None and self.slots.num_free == 0:
                break  # every state slot belongs to a running sequence
            self.waiting.popleft()
            self.running.append(req)
            if self.slots is not None:
                req.slot = self.slots.allocate()
            req.pages += self.pages.allocate(need)
            out.append((req, n))
            tokens, seqs = tokens - n, seqs - 1
        return out


def request_error(ids: list[int], sp: SamplingParams, vocab_size: Optional[int], max_seq_len: int,
                  max_num_tokens: int, chunked_prefill: bool, pages: PageManager) -> Optional[str]:
    """Why a request can never run here (None: it can be admitted): checked when it arrives, so it fails alone."""
    from autodeploy_cli.runtime import sampler

    if not ids:
        return "empty prompt: give at least one token"
    reason = sampler.validate(sp) or sampler.validate_logprobs(sp, vocab_size)
    if reason:
        return f"invalid sampling parameters: {reason}"
    if vocab_size is not None and (min(ids) < 0 or max(ids) >= vocab_size):
        return f"prompt token ids must be in [0, {vocab_size}) (the model's vocabulary)"
    n = len(ids)
    if n > max_seq_len:
        return f"prompt has {n} tokens, more than max_seq_len={max_seq_len}; shorten it or raise `max_seq_len`"
    if not chunked_prefill and n > max_num_tokens:
        return (f"prompt has {n} tokens, more than max_num_tokens={max_num_tokens} per step; set "
                "`enable_chunked_prefill=true` or raise `max_num_tokens`")
    longest = min(n + sp.max_tokens - 1, max_seq_len)
    if pages.pages_for(longest) > pages.num_pages:
        return (f"the request may reach {longest} tokens but the KV cache holds {pages.num_pages * pages.page_size}; "
                "lower max_tokens or give the cache more room (transforms.resize_kv_cache)")
    return None
