"""cleanup_noop_slice: slices that keep the whole dimension disappear; real slices stay."""

from __future__ import annotations

import torch
from torch import fx, nn

from autodeploy_cli.graph.core import is_op
from tests.transforms.pattern_helpers import count, export_toy, matches, ops_in, run_transforms

SLICE = torch.ops.aten.slice.Tensor


class _Slices(nn.Module):
    def forward(self, x):  # x: [b, s, 8]
        return x[:, : x.shape[1]] * 2, x[..., 2:5]


def _add_full_slice(gm: fx.GraphModule) -> None:
    """The form older exports write for x[:, :, 0:]: slice(x, 2, 0, INT64_MAX)."""
    mul = next(n for n in gm.graph.nodes if is_op(n, torch.ops.aten.mul.Tensor))
    with gm.graph.inserting_before(mul):
        full = gm.graph.call_function(SLICE, (mul.args[0], 2, 0, 2**63 - 1))
    full.meta["val"] = mul.args[0].meta["val"]
    mul.replace_input_with(mul.args[0], full)
    gm.recompile()


def test_full_slices_are_removed_and_real_ones_kept():
    module = _Slices()
    gm = export_toy(module, torch.randn(2, 5, 8), dynamic={0: {0: "b", 1: "s"}}, cleanup=False)
    _add_full_slice(gm)
    assert count(gm, SLICE) == 3
    records, _ = run_transforms(gm, ["cleanup_noop_slice"])
    assert matches(records) == {"cleanup_noop_slice": 2}
    (kept,) = [n for n in gm.graph.nodes if n.target == SLICE]
    assert kept.args[1:4] == (2, 2, 5)
    x = torch.randn(3, 7, 8)
    for got, want in zip(gm(x), module(x)):
        torch.testing.assert_close(got, want)

    records, _ = run_transforms(gm, ["cleanup_noop_slice"])
    assert matches(records) == {"cleanup_noop_slice": 0}


def test_graph_without_full_slices_is_unchanged():
    gm = export_toy(nn.ReLU(), torch.randn(2, 5), dynamic={0: {0: "b"}}, cleanup=False)
    before = ops_in(gm)
    records, _ = run_transforms(gm, ["cleanup_noop_slice"])
    assert matches(records) == {"cleanup_noop_slice": 0} and ops_in(gm) == before
