"""Triton implementations of the fused ops (auto_deploy::triton_*), inserted by the post_load_fusion transforms."""

from __future__ import annotations

import torch

from kernels.triton import activation, norm, rope


@torch.library.custom_op("auto_deploy::triton_rmsnorm", mutates_args=())
def triton_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, weight_offset: float = 0.0) -> torch.Tensor:
    return norm.rmsnorm(x, weight, eps, weight_offset)


@triton_rmsnorm.register_fake
def _rmsnorm_fake(x, weight, eps, weight_offset=0.0):
    return torch.empty_like(x)


@torch.library.custom_op("auto_deploy::triton_fused_add_rmsnorm", mutates_args=())
def triton_fused_add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                             weight_offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    return norm.add_rmsnorm(x, residual, weight, eps, weight_offset)


@triton_fused_add_rmsnorm.register_fake
def _add_rmsnorm_fake(x, residual, weight, eps, weight_offset=0.0):
    return torch.empty_like(x), torch.empty_like(x)


@torch.library.custom_op("auto_deploy::triton_silu_and_mul", mutates_args=())
def triton_silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    return activation.silu_and_mul(x)


@triton_silu_and_mul.register_fake
def _silu_and_mul_fake(x):
    return x.new_empty(*x.shape[:-1], x.shape[-1] // 2)


@torch.library.custom_op("auto_deploy::triton_rope_with_explicit_cos_sin", mutates_args=())
def triton_rope_with_explicit_cos_sin(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                                      unsqueeze_dim: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as torch_rope_with_explicit_cos_sin for the bsnd layout (unsqueeze_dim 2): one launch."""
    return rope.rope_qk_cos_sin(q, k, cos, sin)


@triton_rope_with_explicit_cos_sin.register_fake
def _rope_fake(q, k, cos, sin, unsqueeze_dim=2):
    return torch.empty_like(q), torch.empty_like(k)
