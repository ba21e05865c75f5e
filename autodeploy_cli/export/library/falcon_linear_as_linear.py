"""Export patch: Falcon's `FalconLinear` (`input @ weight.T + bias`) is captured as `aten.linear`.

Captured as written it is an `aten.matmul` with a transposed weight. On CUDA (torch 2.11) matmul's composite kernel
asks a symbolic-size tensor for its numel during shape propagation with dynamic batch/sequence dims, so the build
fails; it also hides the projection from every pass that reads linears (GEMM fusion, the one-token GEMV, FP8,
sharding). `F.linear` computes the same product.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch.nn.functional as F
from torch import nn

from autodeploy_cli.export.patches import register_export_patch


def _falcon_linears(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if type(m).__name__ == "FalconLinear" and isinstance(m, nn.Linear)]


def _as_linear(module: nn.Module):
    def forward(input):  # noqa: A002 - FalconLinear's argument name
        return F.linear(input, module.weight, module.bias)

    return forward


@register_export_patch("falcon_linear_as_linear", "Falcon's `input @ weight.T` linears are captured as aten.linear "
                       "(shape-propagatable on CUDA, visible to GEMM fusion, GEMV, FP8 and sharding)",
                       applies=lambda model: bool(_falcon_linears(model)))
@contextlib.contextmanager
def falcon_linear_as_linear(model: nn.Module) -> Iterator[None]:
    linears = _falcon_linears(model)
    for m in linears:
        m.forward = _as_linear(m)  # instance attribute: shadows the class's forward during export only
    try:
        yield
    finally:
        for m in linears:
            del m.forward
