"""Triton FP8 weight-streaming GEMV for single-token steps: y[1, N] = fq(a[1, K]) @ (W[N, K] * w_scale)^T.

The FP8 sibling of kernels/triton/gemv.py. At one token per step a linear layer is a pure weight stream; FP8
weights halve the bytes. Each program reads BLOCK_N weight rows once (16-byte vectors of 16 fp8 values) and
accumulates in fp32; there is no reduction across programs. The prologue is fused in: the plain input, silu(gate) *
up of a fused gate|up row, or the RMSNorm (after a residual add) of x. Program 0 writes the residual sum.

Two activation modes:
  * act_quant=False (what fuse_fp8_linear inserts by default): the activation stays in bf16/fp32 and the norm is
    applied in the same single pass (W @ (x * norm_w) and sum(x^2) together, 1/rms at the end). Quantizing a
    one-token activation buys no speed in a weight-streaming kernel; it would only add error and passes.
  * act_quant=True: the activation is formed exactly like the unfused ops and quantized like the reference
    (x / scale, clamped to +-448, rounded to e4m3; static input scale or the dynamic per-token amax / 448), so the
    result matches auto_deploy::torch_quant_fp8_linear up to summation order. This needs passes over the input row
    before the weight stream (the norm's sum of squares, the dynamic amax), repeated by every program.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels.triton.fp8_round import interpreting, to_fp8

FP8_MAX = 448.0
SCALE_EPS = 1e-12


@triton.jit
def _activation(x_ptr, r_ptr, nw_ptr, offs_k, mask_k, K, rstd, offset, SILU_MUL: tl.constexpr, NORM: tl.constexpr,
                HAS_RES: tl.constexpr, GEMMA: tl.constexpr):
    """The linear's input at columns offs_k (fp32 values of the unfused ops' rounded results)."""
    dt = x_ptr.dtype.element_ty
    x = tl.load(x_ptr + offs_k, mask=mask_k, other=0.0)
    if SILU_MUL:  # x is the gate half; the up half follows K elements later
        u = tl.load(x_ptr + K + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        g = x.to(tl.float32)
        a = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32)
        return (a * u).to(dt).to(tl.float32)
    if HAS_RES:
        x = (x + tl.load(r_ptr + offs_k, mask=mask_k, other=0.0)).to(dt)
    xf = x.to(tl.float32)
    if NORM:
        nw = tl.load(nw_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        if GEMMA:
            xf = (xf * rstd * (nw + offset)).to(dt).to(tl.float32)
        else:
            xf = ((xf * rstd).to(dt).to(tl.float32) * nw).to(dt).to(tl.float32)
    return xf


@triton.jit
def _act_scale(x_ptr, r_ptr, s_ptr, nw_ptr, pid, K, eps, offset, SILU_MUL: tl.constexpr, NORM: tl.constexpr,
               HAS_RES: tl.constexpr, GEMMA: tl.constexpr, STATIC: tl.constexpr, is_ptr, BLOCK_K: tl.constexpr):
    """(rstd, scale) of the exact-quantization mode: passes over the input row before the weight stream (program 0
    stores the residual sum)."""
    rstd = 1.0
    if NORM:
        sq = tl.zeros((BLOCK_K,), dtype=tl.float32)
        sum_len = tl.where(pid == 0, K, 0)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < K
            x = tl.load(x_ptr + offs_k, mask=mask_k, other=0.0)
            if HAS_RES:
                x = (x + tl.load(r_ptr + offs_k, mask=mask_k, other=0.0)).to(x_ptr.dtype.element_ty)
                tl.store(s_ptr + offs_k, x, mask=offs_k < sum_len)
            xf = x.to(tl.float32)
            sq += xf * xf
        rstd = 1.0 / tl.sqrt(tl.sum(sq, 0) / K + eps)
    if STATIC:
        scale = tl.load(is_ptr).to(tl.float32)
    else:
        amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            a = _activation(x_ptr, r_ptr, nw_ptr, offs_k, offs_k < K, K, rstd, offset, SILU_MUL, NORM, HAS_RES,
                            GEMMA)
            amax = tl.maximum(amax, tl.abs(a))
        scale = tl.maximum(tl.max(amax, 0), 1e-12) / 448.0
    return rstd, scale


@triton.jit
def _fp8_gemv_kernel(x_ptr, w_ptr, ws_ptr, is_ptr, b_ptr, y_ptr, r_ptr, s_ptr, nw_ptr, N, K, stride_w, eps, offset,
                     HAS_BIAS: tl.constexpr, SILU_MUL: tl.constexpr, NORM: tl.constexpr, HAS_RES: tl.constexpr,
                     GEMMA: tl.constexpr, STATIC: tl.constexpr, PER_CHANNEL: tl.constexpr, EVEN_K: tl.constexpr,
                     ACT_QUANT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INTERP: tl.constexpr):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = tl.where(mask_n, offs_n, 0).to(tl.int64)  # clamp: EVEN_K loads stay unmasked and in bounds
    dt = x_ptr.dtype.element_ty
    rstd, scale = 1.0, 1.0
    if ACT_QUANT:
        rstd, scale = _act_scale(x_ptr, r_ptr, s_ptr, nw_ptr, pid, K, eps, offset, SILU_MUL, NORM, HAS_RES, GEMMA,
                                 STATIC, is_ptr, BLOCK_K)
    sum_len = tl.where(pid == 0, K, 0)
    sq = tl.zeros((BLOCK_K,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):  # the weight stream
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        if ACT_QUANT:  # the reference's numerics: the exact activation, rounded through e4m3
            a = _activation(x_ptr, r_ptr, nw_ptr, offs_k, mask_k, K, rstd, offset, SILU_MUL, NORM, HAS_RES, GEMMA)
            a = to_fp8(a / scale, INTERP).to(tl.float32)
        elif NORM:  # one pass: W @ (x * norm_w) and sum(x^2) together, 1/rms at the end (like gemv.py)
            x = tl.load(x_ptr + offs_k, mask=mask_k, other=0.0)
            if HAS_RES:
                x = (x + tl.load(r_ptr + offs_k, mask=mask_k, other=0.0)).to(dt)
                tl.store(s_ptr + offs_k, x, mask=offs_k < sum_len)
            a = x.to(tl.float32)
            sq += a * a
            nw = tl.load(nw_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
            a = a * (nw + offset) if GEMMA else a * nw
        else:
            a = _activation(x_ptr, r_ptr, nw_ptr, offs_k, mask_k, K, 1.0, offset, SILU_MUL, False, False, GEMMA)
        w_ptrs = w_ptr + rows[:, None] * stride_w + offs_k[None, :]
        if EVEN_K:
            w = tl.load(w_ptrs, eviction_policy="evict_first")
        else:
            w = tl.load(w_ptrs, mask=mask_k[None, :], other=0.0, eviction_policy="evict_first")
        acc += w.to(tl.float32) * a[None, :]
    y = tl.sum(acc, axis=1) * scale
    if NORM and not ACT_QUANT:
        y = y / tl.sqrt(tl.sum(sq, 0) / K + eps)
    if PER_CHANNEL:
        y = y * tl.load(ws_ptr + rows).to(tl.float32)
    else:
        y = y * tl.load(ws_ptr).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=mask_n)


def config(n: int, k: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps) by shape, after the bf16 GEMV's measured choice (results/gemv_h200.json) at the
    same bytes per program: wide outputs 4 FP8 rows per program (the bf16 kernel's 2), narrow ones 16;
    benchmarks/fp8_bench.py times the alternatives."""
    block_k = min(1024, max(16, triton.next_power_of_2(k)))
    if n >= 6144:
        return 4, block_k, 4
    return min(16, triton.next_power_of_2(max(1, n // 256))), block_k, 8 if block_k >= 1024 else 4


def fp8_gemv(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, input_scale: Optional[torch.Tensor],
             bias: Optional[torch.Tensor] = None, out_features: Optional[int] = None, silu_mul: bool = False,
             norm_weight: Optional[torch.Tensor] = None, residual: Optional[torch.Tensor] = None, eps: float = 1e-6,
             weight_offset: float = 0.0, cfg: Optional[tuple[int, int, int]] = None, act_quant: bool = False):
    """One row x [..., K] (gate|up [..., 2K] with silu_mul) times the FP8 weight [N(+pad), K(+pad)] -> [..., N].

    act_quant=False (default): the activation stays in its dtype (one pass; the weight stream starts at once, and
    the result is closer to the unquantized layer than W8A8). True: the activation is quantized like the reference
    op and scaled_mm do (static input scale or its dynamic per-token one), at the cost of passes over the input row
    in every program before the weights stream.
    weight_scale: [] or [N(+pad)]; input_scale: [] (static) or None (dynamic per token). norm_weight: RMS-normalise
    x first (after adding `residual`; then (y, x + residual) is returned, like fused_add_rmsnorm's (normed, sum)).
    """
    k = x.shape[-1] // 2 if silu_mul else x.shape[-1]
    n = out_features or weight.shape[0]
    if x.numel() != x.shape[-1] or weight.shape[1] < k:
        raise ValueError(f"fp8_gemv takes one row of width <= {weight.shape[1]}, got {tuple(x.shape)}")
    xr = x.reshape(-1).contiguous()
    res = residual.reshape(k).contiguous() if residual is not None else xr
    y = torch.empty(*x.shape[:-1], n, dtype=x.dtype, device=x.device)
    s = torch.empty_like(x) if residual is not None else y
    block_n, block_k, warps = cfg or config(n, k)
    _fp8_gemv_kernel[(triton.cdiv(n, block_n),)](
        xr, weight, weight_scale, input_scale if input_scale is not None else weight_scale,
        bias if bias is not None else xr, y, res, s, norm_weight if norm_weight is not None else xr,
        n, k, weight.stride(0), float(eps), float(weight_offset),
        HAS_BIAS=bias is not None, SILU_MUL=silu_mul, NORM=norm_weight is not None, HAS_RES=residual is not None,
        GEMMA=weight_offset != 0.0, STATIC=input_scale is not None, PER_CHANNEL=weight_scale.numel() > 1,
        EVEN_K=k % block_k == 0, ACT_QUANT=act_quant, BLOCK_N=block_n, BLOCK_K=block_k, INTERP=interpreting(),
        num_warps=warps)
    return (y, s) if residual is not None else y
