"""Block-scaled FP8 linear layers (DeepSeek-V3 / Qwen3-FP8 layout): weight scales per block_n x block_k block,
activations quantized per token and per group of block_k features (dynamic).

block_gemv: one token; each program streams BLOCK_N weight rows, block_k columns at a time: the activation group is
quantized in registers (its amax computed by every program: 256 bytes from L2), dotted with the FP8 weights, and
the partial sum scaled by the group's and the weight block's scales.
block_gemm: many tokens; the activations are quantized by fp8_quant.quantize_groups, then a tiled FP8 tensor-core
GEMM multiplies each block_k step's partial product by its activation and weight scales.
Both require block_k to be a power of two (the reference op covers other sizes).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels.triton.fp8_round import interpreting, to_fp8
from kernels.triton.fp8_quant import quantize_groups


@triton.jit
def _block_gemv_kernel(x_ptr, w_ptr, ws_ptr, b_ptr, y_ptr, N, K, stride_w, stride_ws, BN_SCALE: tl.constexpr,
                       HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BK: tl.constexpr, INTERP: tl.constexpr):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = tl.where(mask_n, offs_n, 0).to(tl.int64)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BK):
        offs_k = k0 + tl.arange(0, BK)
        mask_k = offs_k < K
        a = tl.load(x_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        s = tl.maximum(tl.max(tl.abs(a), 0), 1e-12) / 448.0
        q = to_fp8(a / s, INTERP).to(tl.float32)
        w = tl.load(w_ptr + rows[:, None] * stride_w + offs_k[None, :], mask=mask_k[None, :], other=0.0,
                    eviction_policy="evict_first")
        ws = tl.load(ws_ptr + (rows // BN_SCALE) * stride_ws + k0 // BK).to(tl.float32)
        acc += tl.sum(w.to(tl.float32) * q[None, :], axis=1) * (s * ws)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs_n, acc.to(y_ptr.dtype.element_ty), mask=mask_n)


def block_gemv(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, block_n: int, block_k: int,
               bias: Optional[torch.Tensor] = None, block_rows: Optional[int] = None) -> torch.Tensor:
    """One row x [..., K] times the block-scaled FP8 weight [N, K] -> [..., N]."""
    n, k = weight.shape
    xr = x.reshape(-1).contiguous()
    y = torch.empty(*x.shape[:-1], n, dtype=x.dtype, device=x.device)
    bn = block_rows or (4 if n <= 4096 else 8)
    _block_gemv_kernel[(triton.cdiv(n, bn),)](xr, weight, weight_scale, bias if bias is not None else xr, y, n, k,
                                              weight.stride(0), weight_scale.stride(0), BN_SCALE=block_n,
                                              HAS_BIAS=bias is not None, BLOCK_N=bn, BK=block_k,
                                              INTERP=interpreting(), num_warps=4)
    return y


@triton.jit
def _block_gemm_kernel(q_ptr, qs_ptr, w_ptr, ws_ptr, b_ptr, y_ptr, M, N, K, stride_q, stride_qs, stride_w,
                       stride_ws, stride_y, BN_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m, mask_n = offs_m < M, offs_n < N
    rows_m = tl.where(mask_m, offs_m, 0).to(tl.int64)
    rows_n = tl.where(mask_n, offs_n, 0).to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BK):
        offs_k = k0 + tl.arange(0, BK)
        mask_k = offs_k < K
        a = tl.load(q_ptr + rows_m[:, None] * stride_q + offs_k[None, :], mask=mask_k[None, :], other=0.0)
        b = tl.load(w_ptr + rows_n[None, :] * stride_w + offs_k[:, None], mask=mask_k[:, None], other=0.0)
        a_s = tl.load(qs_ptr + rows_m * stride_qs + k0 // BK)
        b_s = tl.load(ws_ptr + (rows_n // BN_SCALE) * stride_ws + k0 // BK)
        acc += tl.dot(a, b) * (a_s[:, None] * b_s[None, :])
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None].to(tl.int64) * stride_y + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


def block_gemm(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, block_n: int, block_k: int,
               bias: Optional[torch.Tensor] = None, block_m: int = 64, tile_n: Optional[int] = None,
               num_warps: int = 4, num_stages: int = 3) -> torch.Tensor:
    """x [..., K] times the block-scaled FP8 weight [N, K] -> [..., N] (activations quantized per token group)."""
    n, k = weight.shape
    q, qs = quantize_groups(x, block_k)
    m = q.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    tn = tile_n or 128  # weight scales are read per output row: a tile may straddle scale blocks
    if m:
        grid = (triton.cdiv(m, block_m), triton.cdiv(n, tn))
        _block_gemm_kernel[grid](q, qs, weight, weight_scale, bias if bias is not None else y, y, m, n, k,
                                 q.stride(0), qs.stride(0), weight.stride(0), weight_scale.stride(0), y.stride(0),
                                 BN_SCALE=block_n, HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=tn,
                                 BK=block_k, num_warps=num_warps, num_stages=num_stages)
    return y.view(*x.shape[:-1], n)
