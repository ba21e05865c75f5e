"""Fused ops the post_load_fusion transforms produce, with plain-torch references (CPU and any backend).

  auto_deploy::torch_fused_add_rmsnorm(x, residual, weight, eps, weight_offset) -> (rmsnorm(x + residual), x + residual)
  auto_deploy::torch_silu_and_mul(x [..., 2I]) -> silu(x[..., :I]) * x[..., I:]

Backends provide the same ops as `auto_deploy::<backend>_<name>` (see fused_backends.py); the reference ops of the
canonical forms (torch_rmsnorm, torch_rope_*) live in their own modules.
"""

from __future__ import annotations

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
