"""Engine on a tiny Llama: continuous batching, a pool too small for everyone, bad requests, sampling, stops.

The oracle is HF `generate` (greedy, float32) on the same seeded weights, one prompt at a time.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.models.factory import ModelFactory
from autodeploy_cli.llm import build_engine
from autodeploy_cli.runtime.engine import Engine, SamplingParams
from tests.e2e.hf_match import overrides

GREEDY = SamplingParams(max_tokens=10, ignore_eos=True)


@pytest.fixture(scope="module")
def setup(tiny_dir):
    cfg = resolve([], overrides(tiny_dir("llama"), "llama", "attn_page_size=4"))  # max_seq_len 64, batch 4
    engine = build_engine(cfg)
    hf = ModelFactory(cfg).materialize()
    cache: dict[tuple, list[int]] = {}

    def ref(ids: list[int], n: int = 10) -> list[int]:
        key = (tuple(ids), n)
        if key not in cache:
            x = torch.tensor([ids], device=hf.device)
            with torch.no_grad():
                out = hf.generate(x, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
            cache[key] = out[0, x.shape[1]:].tolist()
        return cache[key]

    return cfg, engine, ref


def fresh(engine: Engine, cfg, **changes) -> Engine:
    """A new engine (own scheduler and page manager) on the same built graph and caches."""
    return Engine(engine.model, engine.iface, dataclasses.replace(cfg, **changes),
                  tokenizer=engine.tokenizer, eos_token_ids=engine.eos_token_ids, vocab_size=engine.vocab_size)


def prompt(n: int, salt: int = 0) -> list[int]:
    return [(11 * i + 5 * salt) % 250 + 3 for i in range(n)]


def test_request_joining_while_others_decode_gets_its_solo_tokens(setup):
    cfg, base, ref = setup
    eng = fresh(base, cfg)
    a = eng.add_request(prompt(13), GREEDY)
    for _ in range(4):
        eng.step()  # a is decoding now
    b = eng.add_request(prompt(7, salt=1), GREEDY)
    eng.step()  # b's prefill runs in the same forward as a's decode
    info = eng.iface.info
    assert (info.num_seqs, info.num_prefill, info.num_tokens) == (2, 1, 8)
    # greedy tokens reach the host one step later (read while the next step runs): both arrive together
    assert {o.request_id for o in eng.step()} == {a, b}
    while eng.has_unfinished():
        eng.step()
    assert eng.completion(a).token_ids == ref(prompt(13))
    assert eng.completion(b).token_ids == ref(prompt(7, salt=1))


def test_pool_too_small_for_all_requests_completes_all_with_the_same_tokens(setup):
    cfg, base, ref = setup
    full = base.iface.num_pages
    base.iface.allocate(7)  # 28 tokens; each request reaches <= 19 tokens (5 pages), four need 20 pages
    try:
        eng = fresh(base, cfg)
        prompts = [prompt(n, salt=i) for i, n in enumerate((9, 6, 8, 3))]
        comps = eng.generate(prompts, GREEDY)
        assert eng.stats.num_preemptions > 0  # running requests were preempted and resumed
        assert [c.token_ids for c in comps] == [ref(p) for p in prompts]
        assert eng.pages.num_free == 7  # every page came back
    finally:
        base.iface.allocate(full)


def test_bad_requests_finish_with_an_error_and_others_run(setup):
    cfg, base, ref = setup
    eng = fresh(base, cfg)
    good = eng.add_request(prompt(5), GREEDY)
    bad = {
        "empty": eng.add_request([], GREEDY),
        "long": eng.add_request(prompt(65), GREEDY),
        "temp": eng.add_request(prompt(5), SamplingParams(temperature=-1.0)),
        "top_p0": eng.add_request(prompt(5), SamplingParams(top_p=0.0)),
        "top_p": eng.add_request(prompt(5), SamplingParams(top_p=1.5)),
        "vocab": eng.add_request([5, 320], GREEDY),
    }
    near_limit = eng.add_request(prompt(60), SamplingParams(max_tokens=100, ignore_eos=True))
    first = eng.step()
    errors = {o.request_id: o.error for o in first if o.finish_reason == "error"}
    assert errors == {
        bad["empty"]: "empty prompt: give at least one token",
        bad["long"]: "prompt has 65 tokens, more than max_seq_len=64; shorten it or raise `max_seq_len`",
        bad["temp"]: "invalid sampling parameters: temperature must be a finite number >= 0 (0 = greedy), got -1.0",
        bad["top_p0"]: "invalid sampling parameters: top_p must be in (0, 1], got 0.0",
        bad["top_p"]: "invalid sampling parameters: top_p must be in (0, 1], got 1.5",
        bad["vocab"]: "prompt token ids must be in [0, 320) (the model's vocabulary)",
    }
    while eng.has_unfinished():
        eng.step()
    assert eng.completion(good).token_ids == ref(prompt(5))
    limited = eng.completion(near_limit)
    assert limited.finish_reason == "length" and limited.error is None
    assert limited.token_ids == ref(prompt(60), 4)  # 60 + 4 = max_seq_len


def test_prompt_over_max_num_tokens_needs_chunked_prefill(setup):
    cfg, base, ref = setup
    eng = fresh(base, cfg, max_num_tokens=16)
    comp = eng.generate([prompt(20)], GREEDY)[0]
    assert comp.finish_reason == "error"
    assert comp.error == ("prompt has 20 tokens, more than max_num_tokens=16 per step; set "
                          "`enable_chunked_prefill=true` or raise `max_num_tokens`")
    chunked = fresh(base, cfg, max_num_tokens=16, enable_chunked_prefill=True)
    assert chunked.generate([prompt(20)], GREEDY)[0].token_ids == ref(prompt(20))


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(setup):
    cfg, base, ref = setup
    eng = fresh(base, cfg)
    hot = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.95, seed=123, ignore_eos=True)
    p = prompt(6)
    first = eng.generate([p, p], [hot, dataclasses.replace(hot, seed=7)])
    again = eng.generate([p], hot)[0]
    assert again.token_ids == first[0].token_ids
    assert first[1].token_ids != first[0].token_ids
    top1 = SamplingParams(max_tokens=10, temperature=1.0, top_k=1, seed=5, ignore_eos=True)
    assert eng.generate([p], top1)[0].token_ids == ref(p)


def test_stop_token_ids_and_stop_strings(setup):
    cfg, base, ref = setup
    eng = fresh(base, cfg)
    p = prompt(6, salt=3)
    greedy = ref(p)
    k = next(i for i in range(2, len(greedy)) if greedy[i] not in greedy[:i])  # first occurrence at k
    out = eng.generate([p], SamplingParams(max_tokens=10, stop_token_ids=[greedy[k]], ignore_eos=True))[0]
    assert out.token_ids == greedy[: k + 1] and out.finish_reason == "stop"
    # the step launched before the stop token was read computed one token past the end: dropped, pages returned
    assert not eng.has_unfinished() and eng.pages.num_free == eng.pages.num_pages
    eos = Engine(base.model, base.iface, cfg, tokenizer=base.tokenizer, eos_token_ids=[greedy[k]], vocab_size=320)
    assert eos.generate([p], SamplingParams(max_tokens=10))[0].token_ids == greedy[: k + 1]
    assert eos.generate([p], SamplingParams(max_tokens=10, ignore_eos=True))[0].token_ids == greedy
    tok = eng.tokenizer
    texts = [tok.decode(greedy[:i], skip_special_tokens=True) for i in range(len(greedy) + 1)]
    full = texts[-1]
    j = next(i for i in range(1, len(full)) if full[i].isascii() and full[i] not in full[:i])
    stop = full[j]
    out = eng.generate([p], SamplingParams(max_tokens=10, stop=[stop], ignore_eos=True))[0]
    assert out.finish_reason == "stop" and out.text == full[:j]
    n = next(i for i, t in enumerate(texts) if stop in t)  # the token that produced the stop string ends it
    assert out.token_ids == greedy[:n]


def test_detokenize_false_needs_no_tokenizer(setup):
    cfg, base, ref = setup

    def no_tokenizer():
        raise AssertionError("the tokenizer was loaded")

    eng = Engine(base.model, base.iface, cfg, eos_token_ids=base.eos_token_ids, vocab_size=base.vocab_size,
                 tokenizer_loader=no_tokenizer)
    ids_only = dataclasses.replace(GREEDY, detokenize=False)
    [done] = eng.generate([prompt(5)], ids_only)
    assert done.token_ids == ref(prompt(5)) and done.text == ""
    bad = eng.add_request(prompt(5), dataclasses.replace(ids_only, stop=["x"]))
    eng.step()
    assert eng.completion(bad).error == ("invalid sampling parameters: stop strings need the output text: keep "
                                         "detokenize=True or use stop_token_ids")


def test_generation_eos_never_waits_on_the_network(tmp_path, monkeypatch):
    import transformers

    from autodeploy_cli.llm import _generation_eos

    calls = []

    def fake(source, **kw):
        calls.append((source, kw))
        raise OSError("not in the cache")

    monkeypatch.setattr(transformers.GenerationConfig, "from_pretrained", fake)
    assert _generation_eos("meta-llama/Llama-3.1-8B") is None
    assert calls == [("meta-llama/Llama-3.1-8B", {"local_files_only": True})]
    monkeypatch.undo()
    transformers.GenerationConfig(eos_token_id=[7, 9]).save_pretrained(tmp_path)
    assert _generation_eos(str(tmp_path)) == [7, 9]  # a local folder is read as before


def test_abort_frees_pages_and_leaves_others_running(tiny_dir):
    cfg = resolve([], [f"model={tiny_dir('llama')}", "skip_loading_weights=true", "max_seq_len=64", "max_batch_size=4",
                       "attn_page_size=4"])
    engine = build_engine(cfg)
    free = engine.pages.num_free
    keep = engine.add_request([5, 6, 7], SamplingParams(max_tokens=6, ignore_eos=True))
    gone = engine.add_request([8, 9, 10, 11, 12], SamplingParams(max_tokens=40, ignore_eos=True))
    for _ in range(3):
        engine.step()
    assert engine.abort(gone) and not engine.abort(gone) and not engine.abort(999)
    assert engine.completion(gone).finish_reason == "abort"
    while engine.has_unfinished():
        engine.step()
    assert len(engine.completion(keep).token_ids) == 6 and engine.pages.num_free == free
