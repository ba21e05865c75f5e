"""Export patch: `baddbmm(input, b1, b2, beta, alpha)` is captured as `beta * input + alpha * bmm(b1, b2)`.

Bloom and GPT-NeoX-Japanese compute attention scores with baddbmm (Bloom folds its ALiBi bias in as `input`). The
fused op's meta kernel needs concrete sizes, so a graph holding it with dynamic batch/sequence dims cannot be shape-
propagated; the same arithmetic as a bmm, a multiply and an add propagates, and the attention matcher reads it as
scores plus a bias.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from autodeploy_cli.export.patches import register_export_patch


def _baddbmm(input, batch1, batch2, *, beta=1, alpha=1, out=None):  # noqa: A002 - torch's argument names
    if out is not None:
        return _ORIGINAL[0](input, batch1, batch2, beta=beta, alpha=alpha, out=out)
    product = torch.bmm(batch1, batch2)
    product = product if alpha == 1 else product * alpha
    if beta == 0:
        return product
    return product + (input if beta == 1 else input * beta)


_ORIGINAL = [torch.baddbmm]


@register_export_patch("baddbmm_as_bmm", "baddbmm is captured as beta * input + alpha * bmm (Bloom, GPT-NeoX-Japanese "
                       "attention scores; shape propagation handles it with dynamic dims)")
@contextlib.contextmanager
def baddbmm_as_bmm(model: nn.Module) -> Iterator[None]:
    function, method = torch.baddbmm, torch.Tensor.baddbmm
    _ORIGINAL[0] = function
    torch.baddbmm = _baddbmm  # type: ignore[assignment]
    torch.Tensor.baddbmm = lambda self, batch1, batch2, *, beta=1, alpha=1: _baddbmm(  # type: ignore[method-assign]
        self, batch1, batch2, beta=beta, alpha=alpha)
    try:
        yield
    finally:
        torch.baddbmm = function  # type: ignore[assignment]
        torch.Tensor.baddbmm = method  # type: ignore[method-assign]
