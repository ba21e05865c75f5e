"""Fused ops the post_load_fusion transforms produce, with plain-torch references (CPU and any backend).

  auto_deploy::torch_fused_add_rmsnorm(x, residual, weight, eps, weight_offset) -> (rmsnorm(x + residual), x + residual)
  auto_deploy::torch_silu_and_mul(x [..., 2I]) -> silu(x[..., :I]) * x[..., I:]
  auto_deploy::torch_silu_mul_linear / torch_rmsnorm_linear / torch_add_rmsnorm_linear: those, then a linear layer

Backends provide the same ops as `auto_deploy::<backend>_<name>` (see the FUSED_OPS table in ops/backends.py); the reference ops of the
canonical forms (torch_rmsnorm, torch_rope_*) live in their own modules.
"""

from __future__ import annotations

from typing import Optional

import torch


@torch.library.custom_op("auto_deploy::torch_fused_add_rmsnorm", mutates_args=())
def torch_fused_add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                            weight_offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """s = x + residual (in x's dtype); returns (torch_rmsnorm(s), s)."""
    s = x + residual
    return torch.ops.auto_deploy.torch_rmsnorm(s, weight, eps, weight_offset), s


@torch_fused_add_rmsnorm.register_fake
def _fused_add_rmsnorm_fake(x, residual, weight, eps, weight_offset=0.0):
    return torch.empty_like(x), torch.empty_like(x)


@torch.library.custom_op("auto_deploy::torch_silu_and_mul", mutates_args=())
def torch_silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2 * I] (gate first, then up) -> silu(gate) * up [..., I] (silu rounded to x's dtype first)."""
    inter = x.shape[-1] // 2
    return torch.nn.functional.silu(x[..., :inter]) * x[..., inter:]


@torch_silu_and_mul.register_fake
def _silu_and_mul_fake(x):
    return x.new_empty(*x.shape[:-1], x.shape[-1] // 2)


# --- a norm or SiLU-and-mul fused into the linear layer that consumes it (optimize_linear) --------------------
@torch.library.custom_op("auto_deploy::torch_silu_mul_linear", mutates_args=())
def torch_silu_mul_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
                          ) -> torch.Tensor:
    """linear(silu_and_mul(x), weight, bias): x [..., 2K] gate|up, weight [N, K]."""
    return torch.nn.functional.linear(torch_silu_and_mul(x), weight, bias)


@torch.library.custom_op("auto_deploy::torch_rmsnorm_linear", mutates_args=())
def torch_rmsnorm_linear(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, weight_offset: float,
                         weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """linear(torch_rmsnorm(x, norm_weight, eps, weight_offset), weight, bias)."""
    normed = torch.ops.auto_deploy.torch_rmsnorm(x, norm_weight, eps, weight_offset)
    return torch.nn.functional.linear(normed, weight, bias)


@torch.library.custom_op("auto_deploy::torch_add_rmsnorm_linear", mutates_args=())
def torch_add_rmsnorm_linear(x: torch.Tensor, residual: torch.Tensor, norm_weight: torch.Tensor, eps: float,
                             weight_offset: float, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(linear(normed, weight, bias), s) where (normed, s) = torch_fused_add_rmsnorm(x, residual, ...)."""
    normed, s = torch_fused_add_rmsnorm(x, residual, norm_weight, eps, weight_offset)
    return torch.nn.functional.linear(normed, weight, bias), s


@torch_silu_mul_linear.register_fake
def _silu_mul_linear_fake(x, weight, bias=None):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@torch_rmsnorm_linear.register_fake
def _rmsnorm_linear_fake(x, norm_weight, eps, weight_offset, weight, bias=None):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@torch_add_rmsnorm_linear.register_fake
def _add_rmsnorm_linear_fake(x, residual, norm_weight, eps, weight_offset, weight, bias=None):
    return x.new_empty(*x.shape[:-1], weight.shape[0]), torch.empty_like(x)
