"""eliminate_redundant_transposes: transpose pairs (also across a shape-keeping reshape) cancel out."""

from __future__ import annotations

import torch
from torch import nn

from tests.transforms.pattern_helpers import (
    PATTERN_STAGE, count, export_tiny, export_toy, matches, max_rel_err, ops_in, run_transforms,
)

aten = torch.ops.aten


class _Pairs(nn.Module):
    def forward(self, x):  # x: [b, s, n, d]
        a = x.transpose(1, 2).transpose(1, 2)  # direct pair
        b = x.transpose(1, 2)
        b = b.reshape(b.shape[0], -1, b.shape[2], b.shape[3]).transpose(2, 1)  # pair across a no-op reshape
        return a * 2 + b


def test_pairs_cancel():
    module = _Pairs()
    gm = export_toy(module, torch.randn(2, 5, 3, 4), dynamic={0: {0: "b", 1: "s"}})
    assert count(gm, aten.transpose.int) == 4
    records, _ = run_transforms(gm, ["eliminate_redundant_transposes"])
    assert matches(records) == {"eliminate_redundant_transposes": 2}
    assert count(gm, aten.transpose.int) == 0
    x = torch.randn(3, 7, 3, 4)
    torch.testing.assert_close(gm(x), module(x))

    records, _ = run_transforms(gm, ["eliminate_redundant_transposes"])
    assert matches(records) == {"eliminate_redundant_transposes": 0}


class _Distinct(nn.Module):
    def forward(self, x):  # different dim pairs, and a real reshape between: nothing cancels
        y = x.transpose(1, 2).transpose(2, 3)
        z = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1, 2).transpose(1, 2)
        return y.sum() + z.sum()


def test_graph_without_the_pattern_is_unchanged():
    gm = export_toy(_Distinct(), torch.randn(2, 5, 3, 4), dynamic={0: {0: "b", 1: "s"}})
    before = ops_in(gm)
    records, _ = run_transforms(gm, ["eliminate_redundant_transposes"])
    assert matches(records) == {"eliminate_redundant_transposes": 0}
    assert ops_in(gm) == before


def test_layout_transposes_cancel_against_hf_ones_in_a_real_model():
    tiny = export_tiny("llama", "sdpa")
    stage = list(PATTERN_STAGE)
    records, ctx = run_transforms(tiny.gm, stage[: stage.index("eliminate_redundant_transposes")])
    before = count(tiny.gm, aten.transpose.int)
    records, ctx = run_transforms(tiny.gm, ["eliminate_redundant_transposes"], ctx=ctx)
    # per layer: HF's q, k, v and output transposes (4), the attention layout's (4) and the RoPE layout's (4)
    assert before == 24
    assert matches(records) == {"eliminate_redundant_transposes": 12}  # each removes a pair
    assert count(tiny.gm, aten.transpose.int) == 0
    assert max_rel_err(tiny.gm, tiny.ref, ctx) < 1e-5
