"""Overlapped greedy steps: a step's sampled tokens stay on the GPU, feed the next step's input_ids there, and reach
the host one step later (read while the next step runs), so the GPU does not wait for the host between steps.
This module owns every token in flight: which requests have one, where it sits, and which device row holds it.

    launch(tokens, ready, reserve)  step N: tokens chosen on the device, async copy to pinned memory; each request that
                                    continues gets a PLACEHOLDER slot (reserve) for the token
    feed(batch, info)               step N+1: input_ids of placeholder slots <- step N's device tokens (index_copy)
    take()                          after launching N+1: wait for step N only, return its tokens for the host
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from autodeploy_cli.runtime.request import PLACEHOLDER, Request


@dataclass
class InFlight:
    """A step whose tokens the host has not read yet (greedy), or has read at once (sampled: on_host)."""

    ready: list[Request]  # requests that sample a token this step, in logits-row order
    positions: list[int]  # all_token_ids index of each one's new token
    held: list[bool]  # whether that slot holds a PLACEHOLDER (False: the token ends the request, it is appended)
    tokens_dev: Optional[torch.Tensor]  # [R] int64 on the model's device (None when sampled on the host)
    tokens_host: Any  # [R] pinned tensor (CUDA) or device tensor (CPU), or a list of ints (sampled on the host)
    event: Optional[Any] = None  # torch.cuda.Event after the device->host copy
    rows: dict[int, int] = field(default_factory=dict)  # id(request) -> row of tokens_dev holding its placeholder
    logprobs: dict[int, Any] = field(default_factory=dict)  # row -> TokenLogprob (host-sampled steps that ask)

    @property
    def on_host(self) -> bool:
        return self.tokens_dev is None


class TokenPipeline:
    """At most one step in flight. Pinned buffers: two for tokens (one in flight while the other is read) and one
    for the feed indices, each rewritten only after its last async copy is done."""

    def __init__(self, device: torch.device, max_batch_size: int, max_seq_len: int):
        cuda = device.type == "cuda"
        self.max_seq_len = max_seq_len
        self.inflight: Optional[InFlight] = None
        self._unread: dict[int, int] = {}  # id(request) -> its tokens the host has not read yet
        self._tokens = [torch.empty(max_batch_size, dtype=torch.int64, pin_memory=True) for _ in range(2)] \
            if cuda else None
        self._flip = 0
        self._feed_host = torch.empty(2, max_batch_size, dtype=torch.int64, pin_memory=cuda)
        self._feed_dev = torch.empty(2, max_batch_size, dtype=torch.int64, device=device) if cuda \
            else self._feed_host
        self._feed_copied: Optional[Any] = None

    def holds_token(self, r: Request) -> bool:
        """r has a sampled token on the device that the host has not read."""
        return self._unread.get(id(r), 0) > 0

    def launch(self, tokens_dev: torch.Tensor, ready: list[Request], reserve: Callable[[Request], None]) -> InFlight:
        """Step N's tokens ([R] int64 on the device: argmax, or sampled there) go in flight."""
        event = None
        if self._tokens is not None:
            tokens_host = self._tokens[self._flip][: len(ready)]
            self._flip ^= 1
            tokens_host.copy_(tokens_dev, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            tokens_host = tokens_dev
        flight = InFlight(ready, [], [], tokens_dev, tokens_host, event)
        for row, r in enumerate(ready):
            pos = len(r.all_token_ids)
            unread = self._unread.get(id(r), 0)
            ends = len(r.output_token_ids) + unread + 1 >= r.sampling.max_tokens or pos + 1 >= self.max_seq_len
            flight.positions.append(pos)
            flight.held.append(not ends)
            self._unread[id(r)] = unread + 1
            if not ends:  # keeps the request schedulable: the next step decodes this token, fed on the device
                reserve(r)
                flight.rows[id(r)] = row
        return flight

    def host_step(self, tokens: list[int], ready: list[Request]) -> InFlight:
        """A step sampled on the host: its tokens are known now (appended, never held)."""
        return InFlight(ready, [len(r.all_token_ids) for r in ready], [False] * len(ready), None, tokens)

    def feed(self, batch: list[tuple[Request, int]], info: Any) -> None:
        """Point the placeholder tokens of `batch` (just set on `info`) at the in-flight step's device tokens."""
        flight = self.inflight
        if flight is None or flight.on_host:
            return
        dst, src, offset = [], [], 0
        for r, n in batch:
            if r.all_token_ids[r.num_computed + n - 1] == PLACEHOLDER:
                assert n == 1, "a placeholder token can only be decoded alone"
                dst.append(offset)
                src.append(flight.rows[id(r)])
            offset += n
        if not dst:
            return
        if self._feed_copied is not None:
            self._feed_copied.synchronize()
        k = len(dst)
        self._feed_host[0, :k] = torch.tensor(dst)
        self._feed_host[1, :k] = torch.tensor(src)
        idx = self._feed_dev[:, :k]
        if self._feed_dev is not self._feed_host:
            idx.copy_(self._feed_host[:, :k], non_blocking=True)
            self._feed_copied = torch.cuda.Event()
            self._feed_copied.record()
        info.feed_tokens(idx[0], flight.tokens_dev.index_select(0, idx[1]))

    def take(self, flight: Optional[InFlight] = None) -> Optional[tuple[InFlight, list[int]]]:
        """`flight` (default: the one in flight, which is then cleared) and its tokens, waiting for its copy only."""
        if flight is None:
            flight, self.inflight = self.inflight, None
        if flight is None:
            return None
        if flight.on_host:
            return flight, list(flight.tokens_host)
        if flight.event is not None:
            flight.event.synchronize()
        for r in flight.ready:
            left = self._unread.pop(id(r)) - 1
            if left:
                self._unread[id(r)] = left
        return flight, flight.tokens_host.tolist()

    def busy(self) -> bool:
        """A step is in flight for a request that has not finished (one computed past the ends is no work)."""
        return self.inflight is not None and not all(r.finished for r in self.inflight.ready)
