"""cleanup_noop_add: additions of zero that change neither shape nor dtype disappear."""

from __future__ import annotations

import torch
from torch import nn

from tests.transforms.pattern_helpers import count, export_toy, matches, ops_in, run_transforms

ADD = (torch.ops.aten.add.Tensor, torch.ops.aten.add.Scalar)


class _AddZero(nn.Module):
    def forward(self, x):  # x: [b, s] int
        pos = torch.arange(x.shape[1]) + 0  # no-op: same dtype and shape
        promoted = x + 0.0  # int + float zero: changes the dtype, must stay
        return pos.unsqueeze(0) + x, promoted


def test_zero_adds_are_removed_unless_they_change_the_dtype():
    module = _AddZero()
    gm = export_toy(module, torch.ones(2, 5, dtype=torch.long), dynamic={0: {0: "b", 1: "s"}}, cleanup=False)
    assert sum(count(gm, op) for op in ADD) == 3
    records, _ = run_transforms(gm, ["cleanup_noop_add"])
    assert matches(records) == {"cleanup_noop_add": 1}
    assert sum(count(gm, op) for op in ADD) == 2
    x = torch.randint(0, 9, (3, 7))
    for got, want in zip(gm(x), module(x)):
        torch.testing.assert_close(got, want)

    records, _ = run_transforms(gm, ["cleanup_noop_add"])
    assert matches(records) == {"cleanup_noop_add": 0}


def test_graph_without_zero_adds_is_unchanged():
    gm = export_toy(nn.ReLU(), torch.randn(2, 5), dynamic={0: {0: "b"}}, cleanup=False)
    before = ops_in(gm)
    records, _ = run_transforms(gm, ["cleanup_noop_add"])
    assert matches(records) == {"cleanup_noop_add": 0} and ops_in(gm) == before
