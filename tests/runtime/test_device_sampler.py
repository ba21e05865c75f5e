"""Sampling on the device: seeded and reproducible whatever the batch, the right distribution, greedy rows exact,
and sampled engine steps keep the host/GPU overlap (tokens come back one call later, like greedy ones)."""

from __future__ import annotations

import math

import torch

from autodeploy_cli.runtime.device_sampler import DeviceSampler
from autodeploy_cli.runtime.engine import SamplingParams


def _gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_seeded_rows_do_not_depend_on_the_rest_of_the_batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    hot = SamplingParams(temperature=1.2, top_p=0.9)
    s = DeviceSampler(torch.device("cpu"), 4)
    alone = [int(s.sample(logits[1:2], [hot], _gens(7))[0]) for _ in range(1)]
    mixed = s.sample(logits, [SamplingParams(), hot, SamplingParams(temperature=0.7, top_k=3)], _gens(1, 7, 2))
    assert int(mixed[1]) == alone[0] and int(mixed[0]) == int(logits[0].argmax())
    again = s.sample(logits, [SamplingParams(), hot, SamplingParams(temperature=0.7, top_k=3)], _gens(1, 7, 2))
    assert torch.equal(mixed, again)
    assert int(mixed[2]) in logits[2].topk(3).indices.tolist()


def test_draws_follow_softmax_of_logits_over_temperature():
    """Chi-square goodness of fit on a 6-token vocabulary, 6,000 draws (rows of one batch, one generator)."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]]).repeat(6000, 1)
    sp = SamplingParams(temperature=0.8)
    gen = torch.Generator().manual_seed(123)
    tokens = DeviceSampler(torch.device("cpu"), 6000).sample(logits, [sp] * 6000, [gen] * 6000)
    counts = torch.bincount(tokens, minlength=6).double()
    want = torch.softmax(logits[0] / 0.8, dim=-1).double() * 6000
    chi2 = float(((counts - want) ** 2 / want).sum())
    assert chi2 < 20.5, (counts.tolist(), want.tolist())  # 5 degrees of freedom: p = 0.001


def test_top_k_and_top_p_exclude_what_they_should():
    logits = torch.tensor([[3.0, 2.9, 0.0, -1.0]]).repeat(2000, 1)
    s = DeviceSampler(torch.device("cpu"), 2000)
    gen = torch.Generator().manual_seed(5)
    k2 = s.sample(logits, [SamplingParams(temperature=1.0, top_k=2)] * 2000, [gen] * 2000)
    assert set(k2.tolist()) == {0, 1}
    # probs ~ [0.50, 0.45, 0.03, 0.01]: top_p 0.5 keeps the first token only (it reaches 0.5 alone), 0.9 two
    p5 = s.sample(logits, [SamplingParams(temperature=1.0, top_p=0.5)] * 2000, [gen] * 2000)
    p9 = s.sample(logits, [SamplingParams(temperature=1.0, top_p=0.9)] * 2000, [gen] * 2000)
    assert set(p5.tolist()) == {0} and set(p9.tolist()) == {0, 1}
    assert not math.isnan(float(p9.float().mean()))


def test_sampled_engine_steps_overlap_like_greedy_ones():
    from autodeploy_cli.config.loader import resolve
    from autodeploy_cli.llm import build_engine

    engine = build_engine(resolve([], ["max_seq_len=64", "max_batch_size=2"]))
    sp = SamplingParams(max_tokens=5, temperature=0.9, top_k=50, seed=11, ignore_eos=True)
    engine.add_request([5, 6, 7, 8], sp)
    first = engine.step()  # the prefill launches the first token; the host has not read it yet
    assert first == [] and engine._tokens.inflight is not None
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    tokens = [o.new_token_ids[0] for o in outs]
    again = engine.generate([[5, 6, 7, 8]], sp)[0].token_ids
    assert len(tokens) == 5 and tokens == again  # seeded: the same tokens on a second run
