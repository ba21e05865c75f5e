"""cleanup_input_constraints: export's runtime asserts and guard module are dropped."""

from __future__ import annotations

import torch
from torch import nn

from tests.transforms.pattern_helpers import export_toy, matches, ops_in, run_transforms


class _Casts(nn.Module):
    def forward(self, x):
        return x.to(torch.float32) * 2


def test_asserts_and_guards_are_removed():
    module = _Casts()
    gm = export_toy(module, torch.randn(2, 5), dynamic={0: {0: "b"}}, cleanup=False)
    assert "aten._assert_tensor_metadata" in ops_in(gm)
    guards = [n for n in gm.graph.nodes if n.op == "call_module" and str(n.target).startswith("_guards_fn")]
    asserts = ops_in(gm).count("aten._assert_tensor_metadata")
    assert len(guards) == 1 and asserts == 1
    records, _ = run_transforms(gm, ["cleanup_input_constraints"])
    assert matches(records) == {"cleanup_input_constraints": 2}
    assert "aten._assert_tensor_metadata" not in ops_in(gm)
    assert not [n for n in gm.graph.nodes if n.op == "call_module"]
    x = torch.randn(3, 5)
    torch.testing.assert_close(gm(x), module(x))

    records, _ = run_transforms(gm, ["cleanup_input_constraints"])
    assert matches(records) == {"cleanup_input_constraints": 0}


def test_graph_without_asserts_is_unchanged():
    gm = export_toy(nn.ReLU(), torch.randn(2, 5), dynamic={0: {0: "b"}})
    before = ops_in(gm)
    records, _ = run_transforms(gm, ["cleanup_input_constraints"])
    assert matches(records) == {"cleanup_input_constraints": 0} and ops_in(gm) == before
