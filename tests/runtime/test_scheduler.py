"""Scheduler + page manager without a model: admission, chunked prefill, page accounting and preemption."""

from __future__ import annotations

from autodeploy_cli.runtime.pages import PageManager
from autodeploy_cli.runtime.request import Request
from autodeploy_cli.runtime.scheduler import Scheduler


def req(rid: int, n: int) -> Request:
    return Request(rid, list(range(n)), sampling=None)


def advance(batch, new_token=True):
    """What the engine does after a forward: cache the scheduled tokens, sample one token for completed contexts."""
    for r, n in batch:
        r.num_computed += n
        if new_token and r.num_computed == len(r.all_token_ids):
            r.all_token_ids.append(0)
            r.output_token_ids.append(0)


def test_page_manager():
    pm = PageManager(4, page_size=8)
    assert pm.pages_for(1) == 1 and pm.pages_for(8) == 1 and pm.pages_for(9) == 2
    a = pm.allocate(3)
    assert a == [0, 1, 2] and pm.num_free == 1
    pm.release(a)
    assert pm.num_free == 4 and a == []


def test_chunked_prefill_shares_the_token_budget_with_decodes():
    s = Scheduler(PageManager(32, 4), max_batch_size=4, max_num_tokens=8, chunked_prefill=True)
    a = req(0, 3)
    s.add(a)
    batch = s.schedule()
    assert [(r.request_id, n) for r, n in batch] == [(0, 3)]
    advance(batch)
    b = req(1, 20)
    s.add(b)  # joins while `a` decodes
    chunks = []
    while b.num_computed < 20:
        batch = s.schedule()
        assert sum(n for _, n in batch) <= 8
        chunks.append([(r.request_id, n) for r, n in batch])
        advance(batch)
    assert chunks == [[(0, 1), (1, 7)], [(0, 1), (1, 7)], [(0, 1), (1, 6)]]
    assert len(b.pages) == 5  # ceil(20 / 4): pages follow the cached tokens


def test_without_chunking_a_prompt_waits_for_a_step_with_room():
    s = Scheduler(PageManager(32, 4), max_batch_size=4, max_num_tokens=8, chunked_prefill=False)
    a, b = req(0, 2), req(1, 8)
    s.add(a)
    advance(s.schedule())
    s.add(b)
    batch = s.schedule()  # a's decode takes 1 token, 7 left < 8: b waits
    assert [(r.request_id, n) for r, n in batch] == [(0, 1)]


def test_preemption_frees_the_newest_and_requeues_it_first():
    pm = PageManager(4, page_size=2)
    s = Scheduler(pm, max_batch_size=4, max_num_tokens=16, chunked_prefill=False)
    a, b = req(0, 2), req(1, 1)
    s.add(a)
    s.add(b)
    batch = s.schedule()
    assert [(r.request_id, n) for r, n in batch] == [(0, 2), (1, 1)]
    advance(batch)  # contexts: a 3 tokens (2 cached), b 2 tokens (1 cached); one page each
    assert pm.num_free == 2
    advance(s.schedule())  # a caches token 3 -> a second page; b's token 2 still fits its page
    assert pm.num_free == 1
    advance(s.schedule())  # b caches token 3 -> its second page: the pool is full
    assert pm.num_free == 0 and len(a.pages) == 2 and len(b.pages) == 2
    batch = s.schedule()  # a's 5th token needs a 3rd page: b, the newest, is preempted
    assert [(r.request_id, n) for r, n in batch] == [(0, 1)]
    assert b.num_computed == 0 and b.pages == [] and b.resumed and list(s.waiting) == [b]
    assert s.num_preemptions == 1
    advance(batch)
    s.finish(a)
    batch = s.schedule()  # b comes back and recomputes prompt + generated tokens
    assert [(r.request_id, n) for r, n in batch] == [(1, 4)]
