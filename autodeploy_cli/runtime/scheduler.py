"""Request state and the scheduler: continuous batching, chunked prefill, and preemption when the pool is full.

Every step the scheduler picks, within `max_batch_size` sequences and `max_num_tokens` tokens:
  1. running requests, oldest first: decodes (one token) and the next chunk of unfinished prefills; a request that
     needs a page when none is free preempts the newest running request (its pages are freed and it goes back to
     the front of the queue, to be recomputed later: its prompt plus the tokens generated so far);
  2. waiting requests, first come first served, while tokens, sequences and pages last (new requests join while
     others decode). Without chunked prefill a prompt is scheduled whole or waits; a resumed request may always be
     chunked (its recomputed context can be longer than max_num_tokens).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

from autodeploy_cli.runtime.page_manager import PageManager


PLACEHOLDER = -1  # all_token_ids slot of a token sampled on the GPU that the host has not read yet


@dataclass(eq=False)  # identity comparison: `req in running` must not compare token lists (O(B^2 L) per step)
class Request:
    request_id: int
    prompt_token_ids: list[int]
    sampling: Any  # SamplingParams
    prompt: Optional[str] = None
    all_token_ids: list[int] = field(default_factory=list)  # prompt + generated
    output_token_ids: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose K/V are in the cache
    pages: list[int] = field(default_factory=list)
    resumed: bool = False  # preempted at least once
    num_preemptions: int = 0
    finished: bool = False
    finish_reason: Optional[str] = None
    error: Optional[str] = None
    text: Optional[str] = None
    generator: Any = None  # torch.Generator for sampling
    unresolved: int = 0  # sampled tokens still on the GPU (their all_token_ids slots hold PLACEHOLDER)
    feed_row: int = 0  # row of the in-flight step's token tensor that holds this request's placeholder token

    def __post_init__(self) -> None:
        if not self.all_token_ids:
            self.all_token_ids = list(self.prompt_token_ids)

    @property
    def num_pending(self) -> int:
        """Tokens not yet in the cache (the whole context after a preemption, else a prompt chunk or 1)."""
        return len(self.all_token_ids) - self.num_computed


class Scheduler:
    def __init__(self, pages: PageManager, max_batch_size: int, max_num_tokens: int, chunked_prefill: bool):
        self.pages = pages
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

    def finish(self, req: Request) -> None:
        self.pages.release(req.pages)
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:  # preempted while its last token was in flight
            self.waiting.remove(req)

    def preempt(self, req: Request) -> None:
        self.pages.release(req.pages)
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

    def schedule(self) -> list[tuple[Request, int]]:
        """The requests of the next step with their number of new tokens."""
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
            if req.unresolved:  # preempted while its last token was in flight: recompute once the token is known
                break
            n = self._chunk(req, tokens)
            need = self.pages.pages_for(n)
            # keep one page per running sequence free so admissions do not immediately force preemptions
            if n > tokens or need > self.pages.num_free - (len(self.running) if self.running else 0):
                break
            self.waiting.popleft()
            self.running.append(req)
            req.pages += self.pages.allocate(need)
            out.append((req, n))
            tokens, seqs = tokens - n, seqs - 1
        return out
