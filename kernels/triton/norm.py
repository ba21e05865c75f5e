"""Triton RMSNorm and fused residual-add + RMSNorm over the last dimension.

Rounding follows Hugging Face's Llama-style norm: normalise in fp32, round to the input dtype, then multiply by the
weight (so bf16 results match the eager model to the last bit in most elements).
"""

from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl


@triton.jit
def _rmsnorm_kernel(x_ptr, r_ptr, w_ptr, y_ptr, rout_ptr, stride_x, stride_r, stride_y, stride_ro, H, eps,
                    offset, BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr, GEMMA: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m = offs < H
    x = tl.load(x_ptr + row * stride_x + offs, mask=m, other=0.0)
    if HAS_RESIDUAL:
        x = (x + tl.load(r_ptr + row * stride_r + offs, mask=m, other=0.0)).to(x_ptr.dtype.element_ty)
        tl.store(rout_ptr + row * stride_ro + offs, x, mask=m)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, 0) / H + eps)
    w = tl.load(w_ptr + offs, mask=m, other=0.0).to(tl.float32)
    if GEMMA:  # (1 + w) form: multiply in fp32, round once
        y = xf * rstd * (w + offset)
    else:  # Llama form: round the normalised value to the input dtype, then scale
        y = (xf * rstd).to(x_ptr.dtype.element_ty).to(tl.float32) * w
    tl.store(y_ptr + row * stride_y + offs, y.to(y_ptr.dtype.element_ty), mask=m)


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _num_warps(block: int) -> int:
    return 1 if block <= 256 else 4 if block <= 2048 else 8 if block <= 8192 else 16


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, weight_offset: float = 0.0) -> torch.Tensor:
    """y = round(x * rsqrt(mean(x^2) + eps)) * weight, over the last dim; y has x's dtype and shape."""
    x2 = _rows(x)
    y = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    if x2.shape[0]:
        block = triton.next_power_of_2(x2.shape[1])
        _rmsnorm_kernel[(x2.shape[0],)](x2, x2, weight, y, y, x2.stride(0), 0, y.stride(0), 0, x2.shape[1], eps,
                                        float(weight_offset), BLOCK=block, HAS_RESIDUAL=False,
                                        GEMMA=weight_offset != 0.0, num_warps=_num_warps(block))
    return y.view(x.shape)


def add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                weight_offset: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """s = x + residual (in x's dtype); returns (rmsnorm(s), s) in one pass."""
    x2, r2 = _rows(x), _rows(residual)
    y = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    s = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    if x2.shape[0]:
        block = triton.next_power_of_2(x2.shape[1])
        _rmsnorm_kernel[(x2.shape[0],)](x2, r2, weight, y, s, x2.stride(0), r2.stride(0), y.stride(0), s.stride(0),
                                        x2.shape[1], eps, float(weight_offset), BLOCK=block, HAS_RESIDUAL=True,
                                        GEMMA=weight_offset != 0.0, num_warps=_num_warps(block))
    return y.view(x.shape), s.view(x.shape)
