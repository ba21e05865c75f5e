"""Export patch baddbmm_as_bmm: the same values as torch.baddbmm, captured as bmm / mul / add (shape-propagatable
with dynamic dims, which the fused op's meta kernel is not)."""

from __future__ import annotations

import torch
from torch import nn

from autodeploy_cli.export.library.baddbmm_as_bmm import baddbmm_as_bmm
from autodeploy_cli.graph.core import count_ops, shape_prop
from tests.transforms.pattern_helpers import export_toy


class _Scores(nn.Module):
    def forward(self, bias, q, k):  # Bloom: alibi.baddbmm(q, k^T, beta=1, alpha=1/sqrt(d)); GPT-NeoX-J: torch.baddbmm
        return bias.baddbmm(q, k.transpose(1, 2), beta=1.0, alpha=0.25) + torch.baddbmm(bias, q, k.transpose(1, 2),
                                                                                           beta=0.5, alpha=2.0)


def test_values_and_capture():
    args = (torch.randn(6, 1, 5), torch.randn(6, 5, 8), torch.randn(6, 5, 8))
    want = _Scores()(*args)
    originals = (torch.baddbmm, torch.Tensor.baddbmm)
    with baddbmm_as_bmm(None):
        assert torch.baddbmm is not originals[0]
        torch.testing.assert_close(_Scores()(*args), want)
        gm = export_toy(_Scores(), *args, dynamic={0: {0: "bn", 2: "s"}, 1: {0: "bn", 1: "s"}, 2: {0: "bn", 1: "s"}})
    assert (torch.baddbmm, torch.Tensor.baddbmm) == originals  # restored on exit
    assert count_ops(gm, torch.ops.aten.baddbmm.default) == 0 and count_ops(gm, torch.ops.aten.bmm.default) == 2
    shape_prop(gm)  # dynamic dims propagate
    torch.testing.assert_close(gm(*args), want)
    x = (torch.randn(3, 1, 4), torch.randn(3, 4, 8), torch.randn(3, 4, 8))  # a second shape
    torch.testing.assert_close(gm(*x), _Scores()(*x))
