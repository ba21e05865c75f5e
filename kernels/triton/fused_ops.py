"""Triton implementations of the fused ops (auto_deploy::triton_*), inserted by the post_load_fusion transforms."""

from __future__ import annotations

from typing import Optional

import torch

from kernels.triton import activation, gemv, norm, rope
from kernels.triton import norm_gated  # noqa: F401 - registers auto_deploy::triton_rmsnorm_gated


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


@torch.library.custom_op("auto_deploy::triton_rope_with_qk_interleaving", mutates_args=())
def triton_rope_with_qk_interleaving(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                                     unsqueeze_dim: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as torch_rope_with_qk_interleaving for the bsnd layout (DeepSeek's MLA RoPE): one launch."""
    from kernels.triton import mla

    return mla.rope_qk_interleaved(q, k, cos, sin)


@triton_rope_with_qk_interleaving.register_fake
def _rope_interleaving_fake(q, k, cos, sin, unsqueeze_dim=2):
    return q.new_empty(q.shape), k.new_empty(k.shape)


# --- linear layers: a GEMV kernel when the step has one token (bs1 decode), cuBLAS otherwise -------------------
def _one_row(x: torch.Tensor) -> bool:
    return x.numel() == x.shape[-1]


@torch.library.custom_op("auto_deploy::triton_linear", mutates_args=())
def triton_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    if _one_row(x):
        return gemv.gemv(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)


@torch.library.custom_op("auto_deploy::triton_silu_mul_linear", mutates_args=())
def triton_silu_mul_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
                           ) -> torch.Tensor:
    if _one_row(x):
        return gemv.gemv(x, weight, bias, silu_mul=True)
    return torch.nn.functional.linear(activation.silu_and_mul(x), weight, bias)


@torch.library.custom_op("auto_deploy::triton_rmsnorm_linear", mutates_args=())
def triton_rmsnorm_linear(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, weight_offset: float,
                          weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    if _one_row(x):
        return gemv.gemv(x, weight, bias, norm_weight=norm_weight, eps=eps, weight_offset=weight_offset)
    return torch.nn.functional.linear(norm.rmsnorm(x, norm_weight, eps, weight_offset), weight, bias)


@torch.library.custom_op("auto_deploy::triton_add_rmsnorm_linear", mutates_args=())
def triton_add_rmsnorm_linear(x: torch.Tensor, residual: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                              weight_offset: float, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    if _one_row(x):
        return gemv.gemv(x, weight, bias, norm_weight=norm_weight, residual=residual, eps=eps,
                         weight_offset=weight_offset)
    normed, s = norm.add_rmsnorm(x, residual, norm_weight, eps, weight_offset)
    return torch.nn.functional.linear(normed, weight, bias), s


@triton_linear.register_fake
def _linear_fake(x, weight, bias=None):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@triton_silu_mul_linear.register_fake
def _silu_mul_linear_fake(x, weight, bias=None):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@triton_rmsnorm_linear.register_fake
def _rmsnorm_linear_fake(x, norm_weight, eps, weight_offset, weight, bias=None):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@triton_add_rmsnorm_linear.register_fake
def _add_rmsnorm_linear_fake(x, residual, norm_weight, eps, weight_offset, weight, bias=None):
    return x.new_empty(*x.shape[:-1], weight.shape[0]), torch.empty_like(x)
