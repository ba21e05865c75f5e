"""Triton fused MoE: auto_deploy::triton_moe_fused (the contract is in autodeploy_cli/ops/moe_fused.py).

Two paths, both sync-free (no host read, every grid sized from shapes only, so CUDA graphs capture them):

* pairwise (decode: few (token, slot) pairs, P = T * k <= E / 2): no sort at all. Kernel 1, one program per
  (pair, block of I): streams the pair's expert gate|up rows once, GEMV-style, with the activation fused
  (SiLU-and-mul, GELU, relu2, gpt-oss's clamped SwiGLU, biases) -> a [P, I]. Kernel 2, one program per (token,
  block of h): loops over the token's k slots, streams each expert's down rows, applies the routing weight and
  sums the top-k in registers -> out [T, h]. Two launches per layer and each touched weight byte read once (a
  repeated expert is read again, mostly from L2).
* grouped (prefill and larger decode batches): token -> expert alignment on the device, then grouped GEMMs.
  `_count_kernel` counts pairs per expert with atomics (the returned old count is the pair's rank in its expert);
  `_scatter_kernel` places each pair at padded_start[e] + rank, where every expert's run is padded to BLOCK_M rows
  (padded starts are recomputed from the counts in every program: no extra launch). The GEMM grid is the upper
  bound cdiv(P + min(E, P) * (BLOCK_M - 1), BLOCK_M) row blocks; a block past the padded total does no work, and
  each block finds its expert and valid rows from the counts. Gate|up GEMM with the activation fused -> a [P, I];
  down GEMM -> y [P, h] (the expert output, rounded to x's dtype like HF); `_sum_topk_kernel` applies the
  routing weights and reduces the top-k in float32.

Ids outside [0, E) are skipped everywhere (masked loads: no weight bytes are read for them), which is what expert
parallelism needs. Block sizes: `pick_config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from autodeploy_cli.ops.moe import check_moe_args
from autodeploy_cli.ops.moe_fused import FUSED_SCHEMA

ACT_IDS = {"silu": 0, "gelu": 1, "gelu_tanh": 2, "relu": 3, "relu2": 4, "swiglu_oai": 5}


@triton.jit
def _activation(g, u, alpha, limit, ACT: tl.constexpr, GATED: tl.constexpr):
    """act(g) (* u when gated) in float32; ACT as in ACT_IDS."""
    if ACT == 5:  # gpt-oss: clamped SwiGLU with the (up + 1) form
        gc = tl.minimum(g, limit)
        a = (tl.minimum(tl.maximum(u, -limit), limit) + 1.0) * (gc * tl.sigmoid(gc * alpha))
    elif ACT == 0:
        a = g * tl.sigmoid(g)
    elif ACT == 1:
        a = 0.5 * g * (1.0 + tl.math.erf(g * 0.7071067811865476))
    elif ACT == 2:  # tanh approximation; 1 + tanh(z) = 2 * sigmoid(2z)
        z = 0.7978845608028654 * (g + 0.044715 * g * g * g)
        a = g * tl.sigmoid(2.0 * z)
    elif ACT == 3:
        a = tl.maximum(g, 0.0)
    else:
        r = tl.maximum(g, 0.0)
        a = r * r
    if GATED and ACT != 5:
        a = a * u
    return a


@triton.jit
def _bcast(flag, like):
    """A scalar condition as a mask shaped like `like` (the CPU interpreter cannot mix scalar and vector masks)."""
    return (like * 0 + flag.to(tl.int32)) != 0


# --- pairwise path (decode) -----------------------------------------------------------------------------------
@triton.jit
def _pair_up_kernel(x_ptr, ids_ptr, rw_ptr, w_ptr, b_ptr, a_ptr, N, K, E, top_k, stride_xt, stride_we, stride_wn,
                    stride_be, stride_ap, alpha, limit, ACT: tl.constexpr, GATED: tl.constexpr,
                    HAS_BIAS: tl.constexpr, ROUTE_IN: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pair = tl.program_id(0)
    e = tl.load(ids_ptr + pair).to(tl.int64)
    valid = (e >= 0) & (e < E)
    e = tl.where(valid, e, 0)
    tok = (pair // top_k).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = (offs_n < N) & _bcast(valid, offs_n)
    rows = w_ptr + e * stride_we + offs_n[:, None].to(tl.int64) * stride_wn
    acc_g = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    rw = tl.load(rw_ptr + pair).to(tl.float32)
    for k0 in range(0, tl.where(valid, K, 0), BLOCK_K):  # an ignored pair reads nothing
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        xv = tl.load(x_ptr + tok * stride_xt + offs_k, mask=mask_k, other=0.0)
        if ROUTE_IN:
            xv = (xv.to(tl.float32) * rw).to(x_ptr.dtype.element_ty)
        xf = xv.to(tl.float32)[None, :]
        m = mask_n[:, None] & mask_k[None, :]
        acc_g += tl.load(rows + offs_k[None, :], mask=m, other=0.0, eviction_policy="evict_first").to(tl.float32) * xf
        if GATED:
            wu = tl.load(rows + N * stride_wn + offs_k[None, :], mask=m, other=0.0, eviction_policy="evict_first")
            acc_u += wu.to(tl.float32) * xf
    g = tl.sum(acc_g, axis=1)
    u = tl.sum(acc_u, axis=1)
    if HAS_BIAS:
        g += tl.load(b_ptr + e * stride_be + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        if GATED:
            u += tl.load(b_ptr + e * stride_be + N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    dt = a_ptr.dtype.element_ty  # projections rounded to the model dtype first, like the unfused ops
    a = _activation(g.to(dt).to(tl.float32), u.to(dt).to(tl.float32), alpha, limit, ACT, GATED)
    tl.store(a_ptr + pair * stride_ap + offs_n, a.to(dt), mask=offs_n < N)


@triton.jit
def _pair_down_kernel(a_ptr, ids_ptr, rw_ptr, w_ptr, b_ptr, out_ptr, N, K, E, stride_ap, stride_we, stride_wn,
                      stride_be, stride_ot, HAS_BIAS: tl.constexpr, ROUTE_IN: tl.constexpr, TOP_K: tl.constexpr,
                      ONE_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """ONE_K (BLOCK_K >= K): no K loop, so the unrolled top-k slots are straight-line code and their weight loads
    are all in flight at once (a decode step has few programs here: one per block of h)."""
    t = tl.program_id(0)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        pair = t * TOP_K + j
        e = tl.load(ids_ptr + pair).to(tl.int64)
        valid = (e >= 0) & (e < E)
        e = tl.where(valid, e, 0)
        mask_n = (offs_n < N) & _bcast(valid, offs_n)
        rows = w_ptr + e * stride_we + offs_n[:, None].to(tl.int64) * stride_wn
        a_row = a_ptr + pair.to(tl.int64) * stride_ap
        if ONE_K:
            offs_k = tl.arange(0, BLOCK_K)
            mask_k = offs_k < K
            av = tl.load(a_row + offs_k, mask=mask_k, other=0.0).to(tl.float32)
            wt = tl.load(rows + offs_k[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0.0,
                         eviction_policy="evict_first")
            y = tl.sum(wt.to(tl.float32) * av[None, :], axis=1)
        else:
            part = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
            for k0 in range(0, tl.where(valid, K, 0), BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                mask_k = offs_k < K
                av = tl.load(a_row + offs_k, mask=mask_k, other=0.0).to(tl.float32)
                wt = tl.load(rows + offs_k[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0.0,
                             eviction_policy="evict_first")
                part += wt.to(tl.float32) * av[None, :]
            y = tl.sum(part, axis=1)
        if HAS_BIAS:
            y += tl.load(b_ptr + e * stride_be + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        y = y.to(out_ptr.dtype.element_ty).to(tl.float32)  # the expert output in the model dtype, like HF
        if ROUTE_IN:
            acc += tl.where(valid, y, 0.0)
        else:
            acc += y * tl.where(valid, tl.load(rw_ptr + pair).to(tl.float32), 0.0)
    tl.store(out_ptr + t.to(tl.int64) * stride_ot + offs_n, acc.to(out_ptr.dtype.element_ty), mask=offs_n < N)


# --- grouped path: alignment ----------------------------------------------------------------------------------
@triton.jit
def _count_kernel(ids_ptr, counts_ptr, rank_ptr, P, E, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < P
    e = tl.load(ids_ptr + offs, mask=m, other=-1)
    valid = m & (e >= 0) & (e < E)
    rank = tl.atomic_add(counts_ptr + tl.where(valid, e, 0), 1, mask=valid)
    tl.store(rank_ptr + offs, rank, mask=valid)


@triton.jit
def _padded_layout(counts_ptr, E, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr):
    """(expert lane ids, counts, padded starts, padded ends) with every expert's run padded to BLOCK_M rows."""
    offs_e = tl.arange(0, BLOCK_E)
    counts = tl.load(counts_ptr + offs_e, mask=offs_e < E, other=0)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    end = tl.cumsum(padded, axis=0)
    return offs_e, counts, end - padded, end


@triton.jit
def _scatter_kernel(ids_ptr, rank_ptr, counts_ptr, sorted_ptr, P, E, BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr,
                    BLOCK_E: tl.constexpr):
    offs = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    m = offs < P
    e = tl.load(ids_ptr + offs, mask=m, other=-1)
    valid = m & (e >= 0) & (e < E)
    rank = tl.load(rank_ptr + offs, mask=valid, other=0)
    offs_e, counts, start, end = _padded_layout(counts_ptr, E, BLOCK_M, BLOCK_E)
    e_start = tl.sum(tl.where(offs_e[None, :] < e[:, None], end[None, :] - start[None, :], 0), axis=1)
    tl.store(sorted_ptr + e_start + rank, offs, mask=valid)


@triton.jit
def _block_rows(sorted_ptr, counts_ptr, E, BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr):
    """This row block's (expert, pair ids, row mask, active): which expert the padded block belongs to."""
    m_start = tl.program_id(0) * BLOCK_M
    offs_e, counts, start, end = _padded_layout(counts_ptr, E, BLOCK_M, BLOCK_E)
    active = m_start < tl.sum(end - start, axis=0)
    e = tl.sum((end <= m_start).to(tl.int32), axis=0)  # experts whose padded run ends before this block
    e_start = tl.sum(tl.where(offs_e == e, start, 0), axis=0)
    e_count = tl.sum(tl.where(offs_e == e, counts, 0), axis=0)
    rows = m_start - e_start + tl.arange(0, BLOCK_M)
    mask_m = (rows < e_count) & _bcast(active, rows)
    pairs = tl.load(sorted_ptr + m_start + tl.arange(0, BLOCK_M), mask=mask_m, other=0)
    return tl.where(active, e, 0).to(tl.int64), pairs.to(tl.int64), mask_m, active


@triton.jit
def _mma(a, b, acc, FP32: tl.constexpr):
    if FP32:  # CPU interpreter and float32 builds: no TF32 rounding
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _grouped_up_kernel(x_ptr, sorted_ptr, counts_ptr, rw_ptr, w_ptr, b_ptr, a_ptr, N, K, E, top_k, stride_xt,
                       stride_we, stride_wn, stride_be, stride_ap, alpha, limit, ACT: tl.constexpr,
                       GATED: tl.constexpr, HAS_BIAS: tl.constexpr, ROUTE_IN: tl.constexpr, FP32: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr):
    e, pairs, mask_m, active = _block_rows(sorted_ptr, counts_ptr, E, BLOCK_M, BLOCK_E)
    toks = pairs // top_k
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    cols = w_ptr + e * stride_we + offs_n[None, :].to(tl.int64) * stride_wn  # [BLOCK_K, BLOCK_N] tiles of W^T
    rw = tl.load(rw_ptr + pairs, mask=mask_m, other=0.0).to(tl.float32)
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, tl.where(active, K, 0), BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        xb = tl.load(x_ptr + toks[:, None] * stride_xt + offs_k[None, :], mask=mask_m[:, None] & mask_k[None, :],
                     other=0.0)
        if ROUTE_IN:
            xb = (xb.to(tl.float32) * rw[:, None]).to(x_ptr.dtype.element_ty)
        mw = mask_k[:, None] & mask_n[None, :]
        acc_g = _mma(xb, tl.load(cols + offs_k[:, None], mask=mw, other=0.0), acc_g, FP32)
        if GATED:
            acc_u = _mma(xb, tl.load(cols + N * stride_wn + offs_k[:, None], mask=mw, other=0.0), acc_u, FP32)
    if HAS_BIAS:
        acc_g += tl.load(b_ptr + e * stride_be + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if GATED:
            acc_u += tl.load(b_ptr + e * stride_be + N + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    dt = a_ptr.dtype.element_ty
    a = _activation(acc_g.to(dt).to(tl.float32), acc_u.to(dt).to(tl.float32), alpha, limit, ACT, GATED)
    tl.store(a_ptr + pairs[:, None] * stride_ap + offs_n[None, :], a.to(dt), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _grouped_down_kernel(a_ptr, sorted_ptr, counts_ptr, w_ptr, b_ptr, y_ptr, N, K, E, stride_ap, stride_we,
                         stride_wn, stride_be, stride_yp, HAS_BIAS: tl.constexpr, FP32: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr):
    e, pairs, mask_m, active = _block_rows(sorted_ptr, counts_ptr, E, BLOCK_M, BLOCK_E)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    cols = w_ptr + e * stride_we + offs_n[None, :].to(tl.int64) * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, tl.where(active, K, 0), BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        ab = tl.load(a_ptr + pairs[:, None] * stride_ap + offs_k[None, :], mask=mask_m[:, None] & mask_k[None, :],
                     other=0.0)
        acc = _mma(ab, tl.load(cols + offs_k[:, None], mask=mask_k[:, None] & mask_n[None, :], other=0.0), acc,
                   FP32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + e * stride_be + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + pairs[:, None] * stride_yp + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _sum_topk_kernel(y_ptr, ids_ptr, rw_ptr, out_ptr, N, E, stride_yp, stride_ot, ROUTE_IN: tl.constexpr,
                     TOP_K: tl.constexpr, BLOCK_N: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        pair = t * TOP_K + j
        e = tl.load(ids_ptr + pair)
        valid = (e >= 0) & (e < E)
        y = tl.load(y_ptr + pair * stride_yp + offs_n, mask=mask_n & _bcast(valid, offs_n), other=0.0)
        y = y.to(tl.float32)
        if ROUTE_IN:
            acc += y
        else:
            acc += y * tl.where(valid, tl.load(rw_ptr + pair).to(tl.float32), 0.0)
    tl.store(out_ptr + t * stride_ot + offs_n, acc.to(out_ptr.dtype.element_ty), mask=mask_n)


# --- host side ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MoeConfig:
    """Launch parameters: `pairwise` (decode) uses block_n/block_k/num_warps for the gate|up GEMV and
    down_block_n/down_block_k for the down one (down_block_k 0: block_k); the grouped path uses block_m/n/k,
    num_warps and num_stages."""

    pairwise: bool
    block_n: int = 16
    block_k: int = 512
    down_block_n: int = 8
    down_block_k: int = 0
    block_m: int = 16
    num_warps: int = 4
    num_stages: int = 3


def pick_config(num_pairs: int, num_experts: int, tokens: int, inter: int, hidden: int) -> MoeConfig:
    """Decode (P <= E / 2): weight-streaming GEMVs with enough programs to fill the GPU (>= ~512 per kernel).
    Otherwise grouped GEMMs, BLOCK_M by the mean pairs per expert (16 for decode batches, 64 for prefill)."""
    if num_pairs <= max(1, num_experts // 2):
        block_n = 16
        while block_n > 4 and num_pairs * triton.cdiv(inter, block_n) < 512:
            block_n //= 2
        down_k = triton.next_power_of_2(inter) if inter <= 1024 else 512  # <= 1024: one tile, no K loop
        down_n = 16
        while down_n > 2 and (tokens * triton.cdiv(hidden, down_n) < 512 or down_n * down_k > 4096):
            down_n //= 2
        return MoeConfig(True, block_n, min(512, triton.next_power_of_2(hidden)), down_n, down_k, num_warps=4)
    per_expert = num_pairs / num_experts
    if per_expert <= 16:
        return MoeConfig(False, block_n=64, block_k=128, block_m=16, num_warps=4, num_stages=4)
    if per_expert <= 96:
        return MoeConfig(False, block_n=128, block_k=64, block_m=32, num_warps=4, num_stages=4)
    return MoeConfig(False, block_n=128, block_k=64, block_m=64, num_warps=8, num_stages=3)


def _pairwise(xt, ids, rw, w13, w2, b13, b2, out, act, gated, route_in, alpha, limit, cfg):
    t = xt.shape[0]
    k = ids.shape[0] // t
    num_experts, hidden = w13.shape[0], xt.shape[1]
    inter = w2.shape[2]
    a = torch.empty(ids.shape[0], inter, dtype=xt.dtype, device=xt.device)
    _pair_up_kernel[(ids.shape[0], triton.cdiv(inter, cfg.block_n))](
        xt, ids, rw, w13, b13 if b13 is not None else w13, a, inter, hidden, num_experts, k, xt.stride(0),
        w13.stride(0), w13.stride(1), b13.stride(0) if b13 is not None else 0, a.stride(0), alpha, limit,
        ACT=ACT_IDS[act], GATED=gated, HAS_BIAS=b13 is not None, ROUTE_IN=route_in, BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k, num_warps=cfg.num_warps)
    block_k = min(cfg.down_block_k or cfg.block_k, triton.next_power_of_2(inter))
    _pair_down_kernel[(t, triton.cdiv(hidden, cfg.down_block_n))](
        a, ids, rw, w2, b2 if b2 is not None else w2, out, hidden, inter, num_experts, a.stride(0), w2.stride(0),
        w2.stride(1), b2.stride(0) if b2 is not None else 0, out.stride(0), HAS_BIAS=b2 is not None,
        ROUTE_IN=route_in, TOP_K=k, ONE_K=block_k >= inter, BLOCK_N=cfg.down_block_n, BLOCK_K=block_k,
        num_warps=cfg.num_warps)


def _grouped(xt, ids, rw, w13, w2, b13, b2, out, act, gated, route_in, alpha, limit, cfg):
    t, num_pairs = xt.shape[0], ids.shape[0]
    k = num_pairs // t
    num_experts, hidden, inter = w13.shape[0], xt.shape[1], w2.shape[2]
    dev, bm = xt.device, cfg.block_m
    block_e = triton.next_power_of_2(num_experts)
    counts = torch.zeros(num_experts, dtype=torch.int32, device=dev)
    rank = torch.empty(num_pairs, dtype=torch.int32, device=dev)
    max_rows = num_pairs + min(num_experts, num_pairs) * (bm - 1)  # upper bound of the padded total
    sorted_pairs = torch.empty(max_rows, dtype=torch.int32, device=dev)
    _count_kernel[(triton.cdiv(num_pairs, 1024),)](ids, counts, rank, num_pairs, num_experts, BLOCK=1024)
    block_p = max(16, min(128, 8192 // block_e))
    _scatter_kernel[(triton.cdiv(num_pairs, block_p),)](ids, rank, counts, sorted_pairs, num_pairs, num_experts,
                                                         BLOCK_M=bm, BLOCK_P=block_p, BLOCK_E=block_e)
    m_blocks = triton.cdiv(max_rows, bm)
    fp32 = xt.dtype == torch.float32
    a = torch.empty(num_pairs, inter, dtype=xt.dtype, device=dev)
    _grouped_up_kernel[(m_blocks, triton.cdiv(inter, cfg.block_n))](
        xt, sorted_pairs, counts, rw, w13, b13 if b13 is not None else w13, a, inter, hidden, num_experts, k,
        xt.stride(0), w13.stride(0), w13.stride(1), b13.stride(0) if b13 is not None else 0, a.stride(0), alpha,
        limit, ACT=ACT_IDS[act], GATED=gated, HAS_BIAS=b13 is not None, ROUTE_IN=route_in, FP32=fp32, BLOCK_M=bm,
        BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, BLOCK_E=block_e, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages)
    y = torch.empty(num_pairs, hidden, dtype=xt.dtype, device=dev)
    _grouped_down_kernel[(m_blocks, triton.cdiv(hidden, cfg.block_n))](
        a, sorted_pairs, counts, w2, b2 if b2 is not None else w2, y, hidden, inter, num_experts, a.stride(0),
        w2.stride(0), w2.stride(1), b2.stride(0) if b2 is not None else 0, y.stride(0), HAS_BIAS=b2 is not None,
        FP32=fp32, BLOCK_M=bm, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, BLOCK_E=block_e,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    block_h = min(1024, triton.next_power_of_2(hidden))
    _sum_topk_kernel[(t, triton.cdiv(hidden, block_h))](y, ids, rw, out, hidden, num_experts, y.stride(0),
                                                        out.stride(0), ROUTE_IN=route_in, TOP_K=k, BLOCK_N=block_h)


def fused_moe(x: torch.Tensor, selected_experts: torch.Tensor, routing_weights: torch.Tensor, w13: torch.Tensor,
              w2: torch.Tensor, b13: Optional[torch.Tensor] = None, b2: Optional[torch.Tensor] = None,
              act: str = "silu", gated: bool = True, routing_on_input: bool = False, alpha: float = 1.702,
              limit: float = 7.0, config: Optional[MoeConfig] = None) -> torch.Tensor:
    """The fused MoE (contract: autodeploy_cli/ops/moe_fused.py); `config` overrides `pick_config`."""
    check_moe_args(act, gated, w13.shape[0], selected_experts.shape, routing_weights.shape)
    shape = x.shape
    xt = x.reshape(-1, shape[-1]).contiguous()
    t = xt.shape[0]
    ids = selected_experts.reshape(t, -1)
    k = ids.shape[1]
    ids = ids.reshape(-1).contiguous()
    rw = routing_weights.reshape(-1).contiguous()
    w13, w2 = (w if w.stride(-1) == 1 else w.contiguous() for w in (w13, w2))
    out = torch.empty_like(xt)
    if t == 0:
        return out.reshape(shape)
    cfg = config or pick_config(t * k, w13.shape[0], t, w2.shape[2], xt.shape[1])
    run = _pairwise if cfg.pairwise else _grouped
    run(xt, ids, rw, w13, w2, b13, b2, out, act, gated, routing_on_input, float(alpha), float(limit), cfg)
    return out.reshape(shape)


@torch.library.custom_op("auto_deploy::triton_moe_fused", mutates_args=(), schema=FUSED_SCHEMA)
def triton_moe_fused(x, selected_experts, routing_weights, w13, w2, b13=None, b2=None, act="silu", gated=True,
                     routing_on_input=False, alpha=1.702, limit=7.0):
    """The Triton backend of the fused MoE family; ids outside [0, E) are skipped (the expert-parallel contract of
    autodeploy_cli/ops/moe_fused.py: a rank passes its expert slice and ids - start)."""
    return fused_moe(x, selected_experts, routing_weights, w13, w2, b13, b2, act, gated, routing_on_input, alpha,
                     limit)


@triton_moe_fused.register_fake
def _triton_moe_fused_fake(x, selected_experts, routing_weights, w13, w2, b13=None, b2=None, act="silu", gated=True,
                           routing_on_input=False, alpha=1.702, limit=7.0):
    return torch.empty_like(x)
