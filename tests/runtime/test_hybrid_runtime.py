"""The runtime on a tiny Nemotron-H (Mamba2 + MLP + attention + MoE layers): state slots under continuous batching.

A batch mixing new prefills with decodes, a pool too small for everyone (preemption, then recompute from the prompt)
and many short requests interleaving through few slots all give HF generate's greedy tokens; two running sequences
never share a slot and every slot returns on finish."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.llm import build_engine
from autodeploy_cli.models.factory import ModelFactory
from autodeploy_cli.runtime.engine import Engine, SamplingParams
from tests.e2e.hf_match import overrides

GREEDY = SamplingParams(max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def setup(tiny_dir):
    cfg = resolve([], overrides(tiny_dir("nemotron_h"), "nemotron_h", "attn_page_size=4"))  # batch 4, seq 64
    engine = build_engine(cfg)
    hf = ModelFactory(cfg).materialize()
    cache: dict[tuple, list[int]] = {}

    def ref(ids: list[int]) -> list[int]:
        if tuple(ids) not in cache:
            x = torch.tensor([ids])
            with torch.no_grad():
                out = hf.generate(x, max_new_tokens=GREEDY.max_tokens, do_sample=False, eos_token_id=None,
                                  pad_token_id=0)
            cache[tuple(ids)] = out[0, x.shape[1]:].tolist()
        return cache[tuple(ids)]

    return cfg, engine, ref


def fresh(engine: Engine, cfg, **changes) -> Engine:
    return Engine(engine.model, engine.iface, dataclasses.replace(cfg, **changes), tokenizer=engine.tokenizer,
                  eos_token_ids=engine.eos_token_ids, vocab_size=engine.vocab_size)


def prompt(n: int, salt: int = 0) -> list[int]:
    return [(11 * i + 5 * salt) % 250 + 3 for i in range(n)]


def _watch_slots(eng: Engine) -> list[list[int]]:
    """Record the slots of each step's batch (checked: distinct, owned by running requests, never the scratch)."""
    seen, forward = [], eng.iface.forward

    def spy(model):
        slots = eng.iface.info.arg("slot_idx").tolist()
        running = {r.slot for r in eng.scheduler.running}
        assert len(set(slots)) == len(slots) and set(slots) <= running, (slots, running)
        assert eng.iface.info.pad_slot not in slots
        seen.append(slots)
        return forward(model)

    eng.iface.forward = spy
    return seen


def test_prefills_joining_decodes_give_their_solo_tokens(setup):
    cfg, base, ref = setup
    eng = fresh(base, cfg)
    a = eng.add_request(prompt(21), GREEDY)
    for _ in range(3):
        eng.step()  # a decodes now, its state lives in its slot
    b, c = eng.add_request(prompt(6, 1), GREEDY), eng.add_request(prompt(1, 2), GREEDY)
    eng.step()
    info = eng.iface.info
    assert (info.num_seqs, info.num_prefill, info.num_tokens) == (3, 2, 8)  # two new prefills + one decode
    while eng.has_unfinished():
        eng.step()
    assert [eng.completion(r).token_ids for r in (a, b, c)] == [ref(prompt(21)), ref(prompt(6, 1)), ref(prompt(1, 2))]
    assert eng.slots.num_free == eng.slots.num_slots


def test_preemption_recomputes_from_the_prompt_with_the_same_tokens(setup):
    cfg, base, ref = setup
    full = base.iface.num_pages
    base.iface.allocate(7)  # 28 tokens; the four requests need 4 + 4 + 4 + 3 pages at their longest
    try:
        eng = fresh(base, cfg)
        seen = _watch_slots(eng)
        prompts = [prompt(n, salt=i) for i, n in enumerate((9, 7, 8, 3))]
        comps = eng.generate(prompts, GREEDY)
        assert eng.stats.num_preemptions > 0  # running requests were preempted, their slots freed and retaken
        assert [c.token_ids for c in comps] == [ref(p) for p in prompts]
        assert eng.pages.num_free == 7 and eng.slots.num_free == eng.slots.num_slots and seen
    finally:
        vars(base.iface).pop("forward", None)  # back to the class method
        base.iface.allocate(full)


def test_interleaved_requests_never_share_a_slot(setup):
    cfg, base, ref = setup
    eng = fresh(base, cfg)
    seen = _watch_slots(eng)
    try:
        prompts = [prompt(n, salt=i) for i, n in enumerate((4, 11, 2, 7, 5, 9, 3))]
        lengths = [SamplingParams(max_tokens=m, ignore_eos=True) for m in (3, 8, 2, 5, 8, 1, 4)]
        comps = eng.generate(prompts, lengths)
        assert [c.token_ids for c in comps] == [ref(p)[: s.max_tokens] for p, s in zip(prompts, lengths)]
        used = {s for step in seen for s in step}
        assert used == set(range(eng.slots.num_slots))  # 7 requests through 4 slots: every slot reused
        assert eng.slots.num_free == eng.slots.num_slots
    finally:
        vars(base.iface).pop("forward", None)  # back to the class method
