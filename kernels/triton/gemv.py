"""Triton GEMV for single-token steps: y[1, N] = x[1, K] @ W[N, K]^T, optionally with SiLU-and-mul fused in front.

At one token per step a linear layer is a pure weight stream: cuBLAS picks split-K kernels for the narrow shapes
(o_proj, down_proj) and pays a second reduce launch, and reaches ~3.1 TB/s on the 4096-wide ones. This kernel reads
each weight row once, in 16-byte vectors, with one program per BLOCK_N output rows and no reduction across
programs. With `silu_mul` the input is a fused gate|up row [1, 2K] and silu(gate) * up is formed while loading, so
the activation never makes a round trip through memory (rounded to the input dtype like the unfused op). With
`norm_weight` the RMSNorm (and residual add) in front is fused in the same single pass: W @ (x * norm_w) and
sum(x^2) accumulate together and 1/rms scales the result, so the weight stream starts at once (a separate pass
for the rms first cost 3-7 us per GEMV on an H200). That skips the normalised value's rounding to the input
dtype: results differ from the unfused ops by bf16 rounding, not more. Program 0 writes the residual sum.
On Hopper the kernel is launched with programmatic dependent launch (kernels/triton/pdl.py): it may start before the kernel in
front of it ends, loads its first weight tile, then waits (griddepcontrol) before it reads any activation.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import triton
import triton.language as tl

from kernels.triton import pdl


@triton.jit
def _gemv_step(acc, sq, w, k0, x_ptr, r_ptr, s_ptr, nw_ptr, K, sum_len, offset, SILU_MUL: tl.constexpr,
               NORM: tl.constexpr, HAS_RES: tl.constexpr, GEMMA: tl.constexpr, EVEN_K: tl.constexpr,
               BLOCK_K: tl.constexpr):
    """acc += w * x over one K tile (x formed from the fused prologue: SiLU-and-mul, residual add, RMSNorm)."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    if EVEN_K:
        x = tl.load(x_ptr + offs_k)
    else:
        x = tl.load(x_ptr + offs_k, mask=mask_k, other=0.0)
    if SILU_MUL:  # x is the gate half; the up half follows K elements later
        u = tl.load(x_ptr + K + offs_k, mask=mask_k, other=0.0)
        g = x.to(tl.float32)
        a = (g / (1.0 + tl.exp(-g))).to(u.dtype)
        x = (a.to(tl.float32) * u.to(tl.float32)).to(u.dtype)
    xf = x.to(tl.float32)
    if NORM:  # one pass: accumulate W @ (x * norm_w) and sum(x^2); the 1/rms factor is applied at the end
        if HAS_RES:
            x = (x + tl.load(r_ptr + offs_k, mask=mask_k, other=0.0)).to(x_ptr.dtype.element_ty)
            tl.store(s_ptr + offs_k, x, mask=offs_k < sum_len)
            xf = x.to(tl.float32)
        sq += xf * xf
        nw = tl.load(nw_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        xf = xf * (nw + offset) if GEMMA else xf * nw
    acc += w.to(tl.float32) * xf[None, :]
    return acc, sq


@triton.jit
def _load_w(w_ptr, rows, stride_w, k0, K, EVEN_K: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_k = k0 + tl.arange(0, BLOCK_K)
    w_ptrs = w_ptr + rows[:, None] * stride_w + offs_k[None, :]
    if EVEN_K:
        w = tl.load(w_ptrs, eviction_policy="evict_first")
    else:
        w = tl.load(w_ptrs, mask=(offs_k < K)[None, :], other=0.0, eviction_policy="evict_first")
    return w


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, r_ptr, s_ptr, nw_ptr, N, K, stride_w, eps, offset,
                 HAS_BIAS: tl.constexpr, SILU_MUL: tl.constexpr, NORM: tl.constexpr, HAS_RES: tl.constexpr,
                 GEMMA: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 PDL: tl.constexpr = False):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = tl.where(mask_n, offs_n, 0).to(tl.int64)  # clamp: EVEN_K loads stay unmasked and in bounds
    sum_len = tl.where(pid == 0, K, 0)  # program 0 stores the residual sum, the others nothing
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    sq = tl.zeros((BLOCK_K,), dtype=tl.float32)
    # the first weight tile is loaded before waiting for the kernel in front (PDL): no kernel writes weights
    w = _load_w(w_ptr, rows, stride_w, 0, K, EVEN_K, BLOCK_K)
    if PDL:
        tl.extra.cuda.gdc_wait()  # x, the residual and y's readers: the previous kernel is done from here on
        tl.extra.cuda.gdc_launch_dependents()
    acc, sq = _gemv_step(acc, sq, w, 0, x_ptr, r_ptr, s_ptr, nw_ptr, K, sum_len, offset, SILU_MUL, NORM, HAS_RES,
                         GEMMA, EVEN_K, BLOCK_K)
    for k0 in range(BLOCK_K, K, BLOCK_K):
        w = _load_w(w_ptr, rows, stride_w, k0, K, EVEN_K, BLOCK_K)
        acc, sq = _gemv_step(acc, sq, w, k0, x_ptr, r_ptr, s_ptr, nw_ptr, K, sum_len, offset, SILU_MUL, NORM,
                             HAS_RES, GEMMA, EVEN_K, BLOCK_K)
    y = tl.sum(acc, axis=1)
    if NORM:
        y = y / tl.sqrt(tl.sum(sq, 0) / K + eps)
    if HAS_BIAS:
        y += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=mask_n)


def _config(n: int, k: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps) by shape, from benchmarks/gemv_bench.py on an H200 (results/gemv_h200.json):
    the configs sit within ~5% of each other; wide outputs like 2 rows per program, narrow ones 16."""
    block_k = min(1024, triton.next_power_of_2(k))
    if n >= 6144:
        return 2, block_k, 4
    return min(16, triton.next_power_of_2(max(1, n // 256))), block_k, 8 if block_k >= 1024 else 4


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, silu_mul: bool = False,
         norm_weight: Optional[torch.Tensor] = None, residual: Optional[torch.Tensor] = None, eps: float = 1e-6,
         weight_offset: float = 0.0, config: Optional[tuple[int, int, int]] = None
         ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One row x [..., K] (or [..., 2K] gate|up with silu_mul) times weight [N, K]^T -> [..., N].

    norm_weight: x is first RMS-normalised (Llama rounding, or Gemma's (offset + w) form), after adding `residual`
    when given; then (y, x + residual) is returned, like fused_add_rmsnorm's (normed, sum).
    """
    n, k = weight.shape
    width = 2 * k if silu_mul else k
    if x.shape[-1] != width or x.numel() != width:
        raise ValueError(f"gemv takes one row of width {width}, got {tuple(x.shape)}")
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    xr = x.reshape(width).contiguous()
    res = residual.reshape(k).contiguous() if residual is not None else xr
    y = torch.empty(*x.shape[:-1], n, dtype=x.dtype, device=x.device)
    s = torch.empty_like(x) if residual is not None else y
    block_n, block_k, warps = config or _config(n, k)
    _gemv_kernel[(triton.cdiv(n, block_n),)](
        xr, weight, bias if bias is not None else weight, y, res, s, norm_weight if norm_weight is not None else xr,
        n, k, weight.stride(0), float(eps), float(weight_offset),
        HAS_BIAS=bias is not None, SILU_MUL=silu_mul, NORM=norm_weight is not None, HAS_RES=residual is not None,
        GEMMA=weight_offset != 0.0, EVEN_K=k % block_k == 0, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
        **pdl.launch_kwargs(x))
    return (y, s) if residual is not None else y
