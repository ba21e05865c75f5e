"""auto_deploy::torch_rmsnorm: RMS normalisation over the last dim, the canonical form of every HF RMSNorm."""

from __future__ import annotations

import torch


@torch.library.custom_op("auto_deploy::torch_rmsnorm", mutates_args=())
def torch_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, weight_offset: float = 0.0) -> torch.Tensor:
    """y = x / sqrt(mean(x^2, -1) + eps) * (weight + weight_offset), statistics in float32.

    x: [..., h]; weight: [h]. weight_offset=0 is the Llama form (normalise in float32, cast to x.dtype, then
    multiply by the weight); weight_offset=1 is the Gemma `(1 + w)` form (multiply in float32, then cast).
    Returns a tensor of x's shape and dtype.
    """
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight_offset == 0.0:
        return (weight * normed.to(x.dtype)).to(x.dtype)
    return (normed * (weight.float() + weight_offset)).to(x.dtype)


@torch_rmsnorm.register_fake
def _torch_rmsnorm_fake(x, weight, eps, weight_offset=0.0):
    return torch.empty_like(x)
