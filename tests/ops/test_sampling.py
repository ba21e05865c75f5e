"""auto_deploy::torch_sample_tokens, the sampling reference: greedy rows exact, the kept set of top-k / top-p equal to
a sort-based filter's, draws that follow the filtered softmax (chi-square), and a seeded hash that repeats."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.ops.sampling import order_keys, torch_sample_tokens, uniform_from_seed


def _sample(logits, temperature, top_k=0, top_p=1.0, seed=0, counters=None):
    rows = logits.shape[0]
    counters = torch.arange(rows) if counters is None else counters
    full = lambda v, dt: torch.full((rows,), v, dtype=dt)  # noqa: E731
    return torch_sample_tokens(logits, full(temperature, torch.float32), full(top_k, torch.int64),
                               full(top_p, torch.float32), full(seed, torch.int64), counters)


def _kept_by_sorting(row, top_k, top_p):
    """The textbook filter: top-k by rank, then drop a token once the tokens before it reach top_p."""
    order = row.argsort(descending=True)
    keep = torch.zeros_like(row, dtype=torch.bool)
    keep[order[: top_k or row.numel()]] = True
    probs = torch.softmax(row.masked_fill(~keep, float("-inf")), -1)[order]
    before = probs.cumsum(0) - probs
    keep[order[before >= top_p]] = False
    return set(torch.nonzero(keep).flatten().tolist())


def test_greedy_and_top_k_1_rows_are_the_argmax():
    logits = torch.randn(8, 300, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_sample(logits, 0.0), logits.argmax(-1))
    assert torch.equal(_sample(logits, 1.0, top_k=1), logits.argmax(-1))
    assert torch.equal(_sample(logits.bfloat16(), 2.0, top_p=1e-6), logits.bfloat16().float().argmax(-1))


@pytest.mark.parametrize("top_k,top_p", [(3, 1.0), (0, 0.5), (0, 0.8), (4, 0.9), (0, 0.999)])
def test_kept_set_equals_the_sorting_filter(top_k, top_p):
    row = torch.tensor([2.0, -1.0, 1.5, 0.3, 1.9, -2.5, 0.0, 1.0])  # no ties
    drawn = set(_sample(row.repeat(3000, 1), 1.0, top_k, top_p).tolist())  # counters 0..2999: 3000 draws
    assert drawn == _kept_by_sorting(row, top_k, top_p)


def test_ties_at_the_top_k_boundary_stay():
    row = torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.0]])
    assert set(_sample(row.repeat(2000, 1), 1.0, top_k=2).tolist()) == {1, 2, 3}


def test_draws_follow_the_softmax_of_logits_over_temperature():
    """Chi-square goodness of fit on a 6-token vocabulary, 6,000 draws (counters 0..5999 of one seed)."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]]).repeat(6000, 1)
    counts = torch.bincount(_sample(logits, 0.8, seed=123), minlength=6).double()
    want = torch.softmax(logits[0] / 0.8, dim=-1).double() * 6000
    chi2 = float(((counts - want) ** 2 / want).sum())
    assert chi2 < 20.5, (counts.tolist(), want.tolist())  # 5 degrees of freedom: p = 0.001


def test_top_p_renormalises_within_top_k():
    """top-k 3 leaves probs ~ [0.47, 0.35, 0.17]; top_p 0.8 then keeps the first two (0.47 < 0.8 <= 0.82)."""
    logits = torch.tensor([[3.0, 2.7, 2.0, 1.9, 1.8, 1.7]]).repeat(2000, 1)
    assert set(_sample(logits, 1.0, top_k=3, top_p=0.8).tolist()) == {0, 1}


def test_uniform_hash_repeats_and_spreads():
    seeds, counters = torch.tensor([7, 7, 8, -5]), torch.tensor([0, 1, 0, 0])
    u = uniform_from_seed(seeds, counters)
    assert torch.equal(u, uniform_from_seed(seeds, counters))
    assert len(set(u.tolist())) == 4 and bool(((u > 0) & (u < 1)).all())
    many = uniform_from_seed(torch.full((20000,), 3), torch.arange(20000))
    assert abs(float(many.mean()) - 0.5) < 0.01 and abs(float((many < 0.1).float().mean()) - 0.1) < 0.01


def test_order_keys_sort_like_the_values():
    x = torch.tensor([-float("inf"), -3.5, -0.0, 0.0, 1e-30, 2.0, float("inf")])
    keys = order_keys(x)
    assert bool((keys[1:] >= keys[:-1]).all()) and keys[0] < keys[1] and keys[-2] < keys[-1]
