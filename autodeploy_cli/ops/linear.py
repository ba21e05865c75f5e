"""auto_deploy::torch_linear_simple: a linear layer as one opaque op (keeps export's view/transposes out)."""

from __future__ import annotations

from typing import Optional

import torch


@torch.library.custom_op("auto_deploy::torch_linear_simple", mutates_args=())
def torch_linear_simple(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y = input @ weight.T + bias. input: [..., in]; weight: [out, in]; bias: [out] or None. Returns [..., out]."""
    return torch.nn.functional.linear(input, weight, bias)


@torch_linear_simple.register_fake
def _torch_linear_simple_fake(input, weight, bias=None):
    return input.new_empty(*input.shape[:-1], weight.shape[0])
