"""Overlapped greedy steps: a step's sampled tokens stay on the GPU, feed the next step's input_ids there, and reach
the host one step later (read while the next step runs), so the GPU does not wait for the host between steps.

    launch(logits, ready)   step N: argmax on the device, async copy to pinned memory; each request gets a
                            PLACEHOLDER slot for the token (unless that token certainly ends it by length)
    feed(batch, info)       step N+1: input_ids of placeholder slots <- step N's device tokens (index_copy)
    take()                  after launching N+1: wait for step N only, return its tokens for the host
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from autodeploy_cli.runtime.scheduler import PLACEHOLDER, Request


@dataclass
class InFlight:
    """A greedy step whose tokens the host has not read yet."""

    ready: list[Request]  # requests that sample a token this step, in logits-row order
    positions: list[int]  # all_token_ids index of each one's new token
    held: list[bool]  # whether that slot holds a PLACEHOLDER (False: the token ends the request, it is appended)
    tokens_dev: torch.Tensor  # [R] int64 on the model's device
    tokens_host: torch.Tensor  # [R] (pinned copy on CUDA)
    event: Optional[Any]  # torch.cuda.Event after the device->host copy


class TokenPipeline:
    """At most one step in flight. Pinned buffers: two for tokens (one in flight while the other is read) and one
    for the feed indices, each rewritten only after its last async copy is done."""

    def __init__(self, device: torch.device, max_batch_size: int, max_seq_len: int):
        cuda = device.type == "cuda"
        self.max_seq_len = max_seq_len
        self.inflight: Optional[InFlight] = None
        self._tokens = [torch.empty(max_batch_size, dtype=torch.int64, pin_memory=True) for _ in range(2)] \
            if cuda else None
        self._flip = 0
        self._feed_host = torch.empty(2, max_batch_size, dtype=torch.int64, pin_memory=cuda)
        self._feed_dev = torch.empty(2, max_batch_size, dtype=torch.int64, device=device) if cuda \
            else self._feed_host
        self._feed_copied: Optional[Any] = None

    def launch(self, logits: torch.Tensor, ready: list[Request]) -> InFlight:
        tokens_dev = logits.argmax(dim=-1)
        event = None
        if self._tokens is not None:
            tokens_host = self._tokens[self._flip][: len(ready)]
            self._flip ^= 1
            tokens_host.copy_(tokens_dev, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            tokens_host = tokens_dev
        positions, held = [], []
        for row, r in enumerate(ready):
            pos = len(r.all_token_ids)
            ends = len(r.output_token_ids) + r.unresolved + 1 >= r.sampling.max_tokens or pos + 1 >= self.max_seq_len
            positions.append(pos)
            held.append(not ends)
            r.unresolved += 1
            if not ends:  # keeps the request schedulable: the next step decodes this token, fed on the device
                r.all_token_ids.append(PLACEHOLDER)
                r.feed_row = row
        return InFlight(ready, positions, held, tokens_dev, tokens_host, event)

    def feed(self, batch: list[tuple[Request, int]], info: Any) -> None:
        """Point the placeholder tokens of `batch` (just set on `info`) at the in-flight step's device tokens."""
        flight = self.inflight
        if flight is None:
            return
        dst, src, offset = [], [], 0
        for r, n in batch:
            if r.all_token_ids[r.num_computed + n - 1] == PLACEHOLDER:
                assert n == 1, "a placeholder token can only be decoded alone"
                dst.append(offset)
                src.append(r.feed_row)
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

    def take(self) -> Optional[tuple[InFlight, list[int]]]:
        """The in-flight step and its tokens (waits for that step's copy only); None when nothing is in flight."""
        flight, self.inflight = self.inflight, None
        if flight is None:
            return None
        if flight.event is not None:
            flight.event.synchronize()
        for r in flight.ready:
            r.unresolved -= 1
        return flight, flight.tokens_host.tolist()

    def busy(self) -> bool:
        """A step is in flight for a request that has not finished (one computed past the ends is no work)."""
        return self.inflight is not None and not all(r.finished for r in self.inflight.ready)
