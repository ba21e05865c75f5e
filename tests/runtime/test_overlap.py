"""TokenPipeline: placeholders for tokens still on the device, the device-side feed into the next step, and take()."""

from __future__ import annotations

import torch

from autodeploy_cli.runtime.engine import SamplingParams
from autodeploy_cli.runtime.overlap import TokenPipeline
from autodeploy_cli.runtime.request import PLACEHOLDER, Request


class _Info:
    def __init__(self):
        self.fed = None

    def feed_tokens(self, dst, src):
        self.fed = (dst.tolist(), src.tolist())


def _reserve(r: Request) -> None:  # what Scheduler.reserve_token does
    r.all_token_ids.append(PLACEHOLDER)


def _req(rid, prompt, max_tokens, computed):
    r = Request(rid, list(prompt), SamplingParams(max_tokens=max_tokens))
    r.num_computed = computed
    return r


def test_launch_feed_take():
    pipe = TokenPipeline(torch.device("cpu"), max_batch_size=4, max_seq_len=8)
    a = _req(0, [5, 6, 7], max_tokens=4, computed=3)
    b = _req(1, [8, 9], max_tokens=1, computed=2)  # its first token is its last: no placeholder
    c = _req(2, [1, 2, 3, 4, 5, 6, 7], max_tokens=9, computed=7)  # position 7 is the last of max_seq_len 8
    logits = torch.zeros(3, 10)
    logits[0, 4] = logits[1, 2] = logits[2, 9] = 1.0
    pipe.inflight = pipe.launch(logits.argmax(-1), [a, b, c], _reserve)
    assert a.all_token_ids == [5, 6, 7, PLACEHOLDER] and pipe.inflight.rows[id(a)] == 0
    assert b.all_token_ids == [8, 9] and c.all_token_ids == [1, 2, 3, 4, 5, 6, 7]
    assert pipe.inflight.held == [True, False, False] and pipe.inflight.positions == [3, 2, 7]
    assert all(pipe.holds_token(r) for r in (a, b, c)) and pipe.busy()
    # next step: a new prefill of 3 tokens first, then a's decode of its placeholder
    d = _req(3, [1, 1, 1], max_tokens=2, computed=0)
    info = _Info()
    pipe.feed([(d, 3), (a, 1)], info)
    assert info.fed == ([3], [4])  # flat index 3 <- a's token (row 0 of the argmax)
    flight, tokens = pipe.take()
    assert tokens == [4, 2, 9] and flight.ready == [a, b, c] and not (pipe.holds_token(a) or pipe.holds_token(b))
    assert pipe.take() is None and not pipe.busy()


def test_finished_requests_leave_no_work():
    pipe = TokenPipeline(torch.device("cpu"), max_batch_size=2, max_seq_len=16)
    a = _req(0, [5], max_tokens=5, computed=1)
    pipe.inflight = pipe.launch(torch.eye(2, 6)[:1].argmax(-1), [a], _reserve)
    a.finished = True  # it stopped on the previous token: this step ran past its end
    assert not pipe.busy()
