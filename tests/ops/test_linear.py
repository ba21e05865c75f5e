"""torch_linear_simple: equals F.linear with and without bias."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autodeploy_cli.ops import load_ops

load_ops()
LINEAR = torch.ops.auto_deploy.torch_linear_simple


def test_equals_linear():
    x, w, b = torch.randn(2, 5, 8), torch.randn(6, 8), torch.randn(6)
    torch.testing.assert_close(LINEAR(x, w, b), F.linear(x, w, b), rtol=0, atol=0)
    torch.testing.assert_close(LINEAR(x, w), F.linear(x, w), rtol=0, atol=0)
    assert LINEAR(x, w).shape == (2, 5, 6)


def test_opcheck():
    cases = ((torch.randn(3, 8), torch.randn(4, 8), None), (torch.randn(2, 3, 8), torch.randn(4, 8), torch.randn(4)))
    for args in cases:
        torch.library.opcheck(LINEAR.default, args, test_utils=("test_schema", "test_faketensor"))
