"""Engine logprobs (sampled tokens and every prompt token) and min_tokens, against HF eager on the same weights."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.config.loader import resolve
from autodeploy_cli.llm import build_engine
from autodeploy_cli.models.factory import ModelFactory
from autodeploy_cli.runtime.engine import SamplingParams
from tests.e2e.hf_match import overrides


@pytest.fixture(scope="module")
def setup(tiny_dir):
    # chunked prefill at 8 tokens a step: a scored prompt spans several steps
    cfg = resolve([], overrides(tiny_dir("llama"), "llama", "attn_page_size=4", "enable_chunked_prefill=true",
                                "max_num_tokens=8"))
    return build_engine(cfg), ModelFactory(cfg).materialize()


def hf_logprobs(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)  # [L, V]


def test_prompt_and_output_logprobs_equal_hf(setup):
    engine, hf = setup
    prompt = [(13 * i) % 250 + 3 for i in range(19)]
    other = [(7 * i) % 250 + 3 for i in range(11)]
    sp = SamplingParams(max_tokens=5, ignore_eos=True, logprobs=3, prompt_logprobs=2)
    plain = SamplingParams(max_tokens=5, ignore_eos=True)
    c, p = engine.generate([prompt, other], [sp, plain])  # one scored, one plain request in the same batches
    assert p.logprobs is None and p.prompt_logprobs is None
    ref = hf_logprobs(hf, prompt + c.token_ids)
    assert c.token_ids == ref[len(prompt) - 1:-1].argmax(-1).tolist()  # greedy under logprobs: HF's argmax
    assert len(c.prompt_logprobs) == len(prompt) and c.prompt_logprobs[0] is None
    for j, e in enumerate(c.prompt_logprobs[1:], start=1):
        assert e.token_id == prompt[j]
        assert e.logprob == pytest.approx(ref[j - 1, prompt[j]].item(), abs=1e-4)
        top = torch.topk(ref[j - 1], 2)
        assert [t for t, _ in e.top] == top.indices.tolist()
        assert [v for _, v in e.top] == pytest.approx(top.values.tolist(), abs=1e-4)
    assert [e.token_id for e in c.logprobs] == c.token_ids
    for i, e in enumerate(c.logprobs):
        row = ref[len(prompt) - 1 + i]
        assert e.logprob == pytest.approx(row[e.token_id].item(), abs=1e-4)
        assert len(e.top) == 3 and e.top[0][0] == e.token_id
    hf_other = hf_logprobs(hf, other + p.token_ids)
    assert p.token_ids == hf_other[len(other) - 1:-1].argmax(-1).tolist()


def test_streamed_outputs_carry_logprobs(setup):
    engine, _ = setup
    rid = engine.add_request([5, 6, 7], SamplingParams(max_tokens=3, ignore_eos=True, logprobs=0, prompt_logprobs=0))
    outs = []
    while engine.has_unfinished():
        outs += [o for o in engine.step() if o.request_id == rid]
    assert [len(o.logprobs) for o in outs] == [1, 1, 1] and all(o.logprobs[0].top == [] for o in outs)
    assert [o.prompt_logprobs is not None for o in outs] == [True, False, False]
    assert [e is None for e in outs[0].prompt_logprobs] == [True, False, False]
    assert engine.completion(rid, pop=True) is not None and engine.completion(rid) is None


def test_min_tokens_masks_stop_tokens(setup):
    engine, hf = setup
    prompt = [9, 8, 7, 6, 5]
    first = engine.generate([prompt], SamplingParams(max_tokens=6, ignore_eos=True))[0].token_ids[0]
    stopped = engine.generate([prompt], SamplingParams(max_tokens=6, stop_token_ids=[first], ignore_eos=True))[0]
    assert stopped.token_ids == [first] and stopped.finish_reason == "stop"
    held = engine.generate([prompt], SamplingParams(max_tokens=6, stop_token_ids=[first], min_tokens=3,
                                                    ignore_eos=True))[0]
    assert first not in held.token_ids[:3] and len(held.token_ids) >= 3
    second_best = torch.topk(hf_logprobs(hf, prompt)[-1], 2).indices[1].item()
    assert held.token_ids[0] == second_best


def test_bad_logprob_values_fail_alone(setup):
    engine, _ = setup
    bad, good = engine.generate([[5, 6], [5, 6]], [SamplingParams(max_tokens=2, min_tokens=3),
                                                   SamplingParams(max_tokens=2, ignore_eos=True)])
    assert bad.finish_reason == "error" and "min_tokens must be in [0, max_tokens=2]" in bad.error
    assert good.error is None and len(good.token_ids) == 2
    neg = engine.generate([[5]], SamplingParams(max_tokens=2, logprobs=-1))[0]
    assert "logprobs must be null or in [0, 320]" in neg.error
