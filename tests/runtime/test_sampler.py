"""Sampler: validation messages, greedy, top-k / top-p filtering, seeded reproducibility."""

from __future__ import annotations

import torch

from autodeploy_cli.runtime.engine import SamplingParams
from autodeploy_cli.runtime.sampler import filter_logits, sample, validate


def test_validate():
    assert validate(SamplingParams()) is None
    assert validate(SamplingParams(temperature=-0.5)) == "temperature must be a finite number >= 0 (0 = greedy), got -0.5"
    assert validate(SamplingParams(temperature=float("nan"))).startswith("temperature must be a finite number")
    assert validate(SamplingParams(top_p=float("nan"))) == "top_p must be in (0, 1], got nan"
    assert validate(SamplingParams(top_p=0.0)) == "top_p must be in (0, 1], got 0.0"
    assert validate(SamplingParams(top_p=1.5)) == "top_p must be in (0, 1], got 1.5"
    assert validate(SamplingParams(top_k=-1)) == "top_k must be >= 0 (0 or null = off), got -1"
    assert validate(SamplingParams(max_tokens=0)) == "max_tokens must be at least 1, got 0"


def test_filters():
    logits = torch.tensor([1.0, 3.0, 2.0, 0.0])
    assert torch.isinf(filter_logits(logits, 2, 1.0)).tolist() == [True, False, False, True]
    # probs ~ [0.09, 0.64, 0.24, 0.03]: top_p 0.7 keeps the two largest
    assert torch.isinf(filter_logits(logits, None, 0.7)).tolist() == [True, False, False, True]
    assert torch.isinf(filter_logits(logits, None, 0.5)).tolist() == [True, False, True, True]


def test_greedy_topk1_and_seeds():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=g)
    greedy = logits.argmax(-1).tolist()
    assert sample(logits, [SamplingParams()] * 3, [None] * 3) == greedy
    topk1 = SamplingParams(temperature=1.0, top_k=1)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    assert sample(logits, [topk1] * 3, gens) == greedy
    hot = SamplingParams(temperature=1.5, top_p=0.9)

    def draw(seed):
        gen = torch.Generator().manual_seed(seed)
        return [sample(logits[:1], [hot], [gen])[0] for _ in range(20)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)
