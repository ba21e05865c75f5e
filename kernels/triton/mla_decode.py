"""Triton MLA decode with absorbed weights over the compressed paged cache: split-KV (flash-decoding), then a merge.

One query per sequence: q_lat [B, n, R] (= q_nope @ W_uk), q_pe [B, n, P]; ckv_cache [pages, page, R] and
kpe_cache [pages, page, P] form one KV head shared by every head (MQA, values = ckv) -> out_lat [B, n, R] (the
caller applies W_uv). No launch reads the host, so decode can be captured in a CUDA graph.

Each program takes BLOCK_H heads of one sequence and one KV split: a latent tile read once feeds BLOCK_H heads
through the tensor cores (tl.dot, fp32 accumulation). The head blocks of a sequence are adjacent in the grid
(axis 0), so they run at the same time and all but the first read of a tile come from L2, not HBM.

Two MMA forms of the same math (the `swap` launch flag):
  rows  scores [BLOCK_H, BLOCK_N] = q @ ckv^T       acc [BLOCK_H, R] += p @ ckv
  swap  scores^T [BLOCK_N, BLOCK_H] = ckv @ q^T     acc^T [R, BLOCK_H] += ckv^T @ p^T
Why two: Triton puts all warps of a flash-attention-style chained dot along M, and Hopper's wgmma takes 64 rows per
warpgroup (4 warps). With heads on M, a head block under 64 falls back to mma.sync and every warp beyond the rows
repeats the score MMA; 64 heads need 8 warps to hold the fp32 [64, 512] accumulator, and then the score MMA runs
twice. With keys on M (swap), a 64-key tile fills the wgmma rows at 4 warps for any head block, and the 512 rows of
the accumulator spread over the warps (32 heads: 128 fp32 registers a thread). Many heads (128: DeepSeek-V3 on one
GPU) make decode MMA-bound; few heads (16) leave it memory-bound.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
_NEG_INIT = tl.constexpr(-1.0e30)  # finite start for running maxima: masked blocks give exp2(-inf) = 0, never NaN


def _blk(d: int) -> int:
    # tile width of a head dim: a power of two, at least 16 (the smallest tl.dot operand)
    return max(16, triton.next_power_of_2(d))


def _prec(x: torch.Tensor) -> str:
    # fp32 stays exact (greedy tokens equal the torch backend's); half types use the tensor cores
    return "ieee" if x.dtype == torch.float32 else "tf32"


# --------------------------------------------------------------------------------------------- pieces
@triton.jit
def _split_range(input_pos_ptr, seq_len_ptr, b, split, SPLITS: tl.constexpr, BLOCK_N: tl.constexpr):
    # keys [start, end) of this split; chunks are whole key blocks so only the last block of a split is ragged
    kv_len = tl.load(input_pos_ptr + b) + tl.load(seq_len_ptr + b)
    chunk = tl.cdiv(tl.cdiv(kv_len, SPLITS), BLOCK_N) * BLOCK_N
    start = split * chunk
    return kv_len, start, tl.minimum(start + chunk, kv_len)


@triton.jit
def _load_q(qn_ptr, qp_ptr, b, heads, stride_qn_t, stride_qn_h, stride_qp_t, stride_qp_h, N_HEADS,
            R: tl.constexpr, P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr):
    h_ok = heads < N_HEADS
    offs_r = tl.arange(0, BLOCK_R)
    offs_p = tl.arange(0, BLOCK_P)
    row = b.to(tl.int64)  # decode: token b is sequence b's query
    qn = tl.load(qn_ptr + row * stride_qn_t + heads[:, None] * stride_qn_h + offs_r[None, :],
                 mask=h_ok[:, None] & (offs_r[None, :] < R), other=0.0)  # [BLOCK_H, BLOCK_R]
    qp = tl.load(qp_ptr + row * stride_qp_t + heads[:, None] * stride_qp_h + offs_p[None, :],
                 mask=h_ok[:, None] & (offs_p[None, :] < P), other=0.0)  # [BLOCK_H, BLOCK_P]
    return qn, qp


@triton.jit
def _load_kv(ckv_ptr, kpe_ptr, loc_ptr, page_base, n0, end, stride_cp, stride_ct, stride_kp, stride_kt,
             R: tl.constexpr, P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
             PS: tl.constexpr):
    kpos = n0 + tl.arange(0, BLOCK_N)
    valid = kpos < end
    page = tl.load(loc_ptr + page_base + kpos // PS, mask=valid, other=0).to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R)
    offs_p = tl.arange(0, BLOCK_P)
    c = tl.load(ckv_ptr + (page * stride_cp + (kpos % PS) * stride_ct)[:, None] + offs_r[None, :],
                mask=valid[:, None] & (offs_r[None, :] < R), other=0.0)  # [BLOCK_N, BLOCK_R]
    k = tl.load(kpe_ptr + (page * stride_kp + (kpos % PS) * stride_kt)[:, None] + offs_p[None, :],
                mask=valid[:, None] & (offs_p[None, :] < P), other=0.0)  # [BLOCK_N, BLOCK_P]
    return c, k, valid


@triton.jit
def _finish(acc, l_b, heads_b, r_b, m_i, l_i, heads, b, split, start, kv_len, op_ptr, ml_ptr, o_ptr, stride_ot,
            stride_oh, N_HEADS, R: tl.constexpr, BLOCK_R: tl.constexpr, SPLITS: tl.constexpr):
    # acc is [BLOCK_H, BLOCK_R] or [BLOCK_R, BLOCK_H]; l_b, heads_b, r_b broadcast against it either way
    h_ok = heads_b < N_HEADS
    if SPLITS == 1:  # the grid fills the GPU unsplit: normalise here, no partials round trip, no merge launch
        out = acc / tl.where(l_b == 0.0, 1.0, l_b)  # a padded (empty) sequence: zeros, never NaN
        tl.store(o_ptr + b.to(tl.int64) * stride_ot + heads_b * stride_oh + r_b, out.to(o_ptr.dtype.element_ty),
                 mask=h_ok & (r_b < R))
    else:
        if start < kv_len:  # an empty split (short sequence) writes only its (m, l): the merge skips its row
            base_b = (b * N_HEADS + heads_b).to(tl.int64) * SPLITS + split
            tl.store(op_ptr + base_b * BLOCK_R + r_b, acc, mask=h_ok & (r_b < BLOCK_R))
        base = (b * N_HEADS + heads).to(tl.int64) * SPLITS + split
        tl.store(ml_ptr + base * 2, m_i, mask=heads < N_HEADS)
        tl.store(ml_ptr + base * 2 + 1, l_i, mask=heads < N_HEADS)


# --------------------------------------------------------------------------------------------- split kernels
@triton.jit
def _decode_rows_kernel(qn_ptr, qp_ptr, ckv_ptr, kpe_ptr, op_ptr, ml_ptr, o_ptr, input_pos_ptr, seq_len_ptr,
                        loc_ptr, cu_pages_ptr, scale_log2, stride_qn_t, stride_qn_h, stride_qp_t, stride_qp_h,
                        stride_cp, stride_ct, stride_kp, stride_kt, stride_ot, stride_oh, N_HEADS,
                        R: tl.constexpr, P: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, PS: tl.constexpr, SPLITS: tl.constexpr,
                        PREC: tl.constexpr):
    hb, b, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    kv_len, start, end = _split_range(input_pos_ptr, seq_len_ptr, b, split, SPLITS, BLOCK_N)
    page_base = tl.load(cu_pages_ptr + b)
    heads = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    qn, qp = _load_q(qn_ptr, qp_ptr, b, heads, stride_qn_t, stride_qn_h, stride_qp_t, stride_qp_h, N_HEADS, R, P,
                     BLOCK_R, BLOCK_P)
    m_i = tl.zeros([BLOCK_H], tl.float32) + _NEG_INIT
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_R], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        c, k, valid = _load_kv(ckv_ptr, kpe_ptr, loc_ptr, page_base, n0, end, stride_cp, stride_ct, stride_kp,
                               stride_kt, R, P, BLOCK_N, BLOCK_R, BLOCK_P, PS)
        s = tl.dot(qn, tl.trans(c), input_precision=PREC) + tl.dot(qp, tl.trans(k), input_precision=PREC)
        s = tl.where(valid[None, :], s * scale_log2, float("-inf"))  # [BLOCK_H, BLOCK_N]
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(c.dtype), c, input_precision=PREC)
        m_i = m_new
    offs_r = tl.arange(0, BLOCK_R)
    _finish(acc, l_i[:, None], heads[:, None], offs_r[None, :], m_i, l_i, heads, b, split, start, kv_len, op_ptr,
            ml_ptr, o_ptr, stride_ot, stride_oh, N_HEADS, R, BLOCK_R, SPLITS)


@triton.jit
def _decode_swap_kernel(qn_ptr, qp_ptr, ckv_ptr, kpe_ptr, op_ptr, ml_ptr, o_ptr, input_pos_ptr, seq_len_ptr,
                        loc_ptr, cu_pages_ptr, scale_log2, stride_qn_t, stride_qn_h, stride_qp_t, stride_qp_h,
                        stride_cp, stride_ct, stride_kp, stride_kt, stride_ot, stride_oh, N_HEADS,
                        R: tl.constexpr, P: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, PS: tl.constexpr, SPLITS: tl.constexpr,
                        PREC: tl.constexpr):
    hb, b, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    kv_len, start, end = _split_range(input_pos_ptr, seq_len_ptr, b, split, SPLITS, BLOCK_N)
    page_base = tl.load(cu_pages_ptr + b)
    heads = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    qn, qp = _load_q(qn_ptr, qp_ptr, b, heads, stride_qn_t, stride_qn_h, stride_qp_t, stride_qp_h, N_HEADS, R, P,
                     BLOCK_R, BLOCK_P)
    qn_t = tl.trans(qn)  # [BLOCK_R, BLOCK_H]: the B operand, read from shared memory
    qp_t = tl.trans(qp)
    m_i = tl.zeros([BLOCK_H], tl.float32) + _NEG_INIT
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc_t = tl.zeros([BLOCK_R, BLOCK_H], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        c, k, valid = _load_kv(ckv_ptr, kpe_ptr, loc_ptr, page_base, n0, end, stride_cp, stride_ct, stride_kp,
                               stride_kt, R, P, BLOCK_N, BLOCK_R, BLOCK_P, PS)
        s_t = tl.dot(c, qn_t, input_precision=PREC) + tl.dot(k, qp_t, input_precision=PREC)
        s_t = tl.where(valid[:, None], s_t * scale_log2, float("-inf"))  # [BLOCK_N, BLOCK_H]
        m_new = tl.maximum(m_i, tl.max(s_t, 0))
        alpha = tl.exp2(m_i - m_new)
        p_t = tl.exp2(s_t - m_new[None, :])
        l_i = l_i * alpha + tl.sum(p_t, 0)
        acc_t = acc_t * alpha[None, :] + tl.dot(tl.trans(c), p_t.to(c.dtype), input_precision=PREC)
        m_i = m_new
    offs_r = tl.arange(0, BLOCK_R)
    _finish(acc_t, l_i[None, :], heads[None, :], offs_r[:, None], m_i, l_i, heads, b, split, start, kv_len, op_ptr,
            ml_ptr, o_ptr, stride_ot, stride_oh, N_HEADS, R, BLOCK_R, SPLITS)


@triton.jit
def _decode_reduce_kernel(op_ptr, ml_ptr, o_ptr, stride_ot, stride_oh, N_HEADS, R: tl.constexpr,
                          SPLITS: tl.constexpr, BLOCK_R: tl.constexpr):
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS)
    offs_r = tl.arange(0, BLOCK_R)
    base0 = (b * N_HEADS + h).to(tl.int64) * SPLITS
    m = tl.load(ml_ptr + (base0 + offs_s) * 2)
    l = tl.load(ml_ptr + (base0 + offs_s) * 2 + 1)
    m_all = tl.max(m, 0)
    denom = tl.sum(l * tl.exp2(m - m_all), 0)
    denom = tl.where(denom == 0.0, 1.0, denom)  # a padded (empty) sequence: zeros, never NaN
    acc = tl.zeros([BLOCK_R], tl.float32)
    for sp in range(SPLITS):  # one latent row at a time (a [SPLITS, 512] tile would spill), empty splits skipped
        l_s = tl.load(ml_ptr + (base0 + sp) * 2 + 1)
        if l_s > 0.0:
            w = tl.exp2(tl.load(ml_ptr + (base0 + sp) * 2) - m_all)
            acc += tl.load(op_ptr + (base0 + sp) * BLOCK_R + offs_r) * w
    out = acc / denom
    tl.store(o_ptr + b.to(tl.int64) * stride_ot + h * stride_oh + offs_r, out.to(o_ptr.dtype.element_ty),
             mask=offs_r < R)


# --------------------------------------------------------------------------------------------- launch policy
# Sweep candidates for benchmarks/mla_bench.py and the GPU tests (DeepSeek widths R = 512, P = 64, bf16, pages of 64).
# `waves`: programs per SM the split count aims for (what fits at once). Compiled offline for sm_90 with Triton 3.9
# (no GPU): shared memory KB / fp32 registers a thread / spills; all keep the key loop on cp.async (pipelined) except
# num_stages=1. "S twice": the score MMA is repeated by the second warpgroup (more warps than 16 x rows, see top).
DECODE_CONFIGS = (
    dict(block_h=16, block_n=32, num_warps=4, num_stages=2, swap=False, waves=2),  # 55 KB, 196 regs: 16-head default
    dict(block_h=16, block_n=64, num_warps=4, num_stages=2, swap=False, waves=2),  # 92 KB, spills 168 B
    dict(block_h=32, block_n=64, num_warps=4, num_stages=2, swap=False, waves=1),  # 112 KB, mma.sync: old 128-head best
    dict(block_h=64, block_n=32, num_warps=8, num_stages=2, swap=False, waves=1),  # 144 KB, wgmma, S twice
    dict(block_h=64, block_n=64, num_warps=8, num_stages=2, swap=False, waves=1),  # 216 KB, S twice, spills 144 B
    dict(block_h=16, block_n=64, num_warps=4, num_stages=2, swap=True, waves=1),   # 164 KB, 246 regs, wgmma
    dict(block_h=16, block_n=64, num_warps=4, num_stages=2, swap=True, waves=2),   # (the same, twice the splits)
    dict(block_h=32, block_n=64, num_warps=4, num_stages=2, swap=True, waves=1),   # 184 KB, wgmma: many-heads default
    dict(block_h=32, block_n=64, num_warps=4, num_stages=3, swap=True, waves=1),   # 184 KB, no spill
    dict(block_h=32, block_n=64, num_warps=8, num_stages=2, swap=True, waves=1),   # 184 KB, 8 warps, S twice
    dict(block_h=64, block_n=64, num_warps=8, num_stages=2, swap=True, waves=1),   # 224 KB (of 227), S twice
    dict(block_h=32, block_n=32, num_warps=4, num_stages=2, swap=True, waves=2),   # 74 KB, scores on mma.sync
    dict(block_h=32, block_n=128, num_warps=8, num_stages=1, swap=True, waves=1),  # 180 KB, 175 regs, not pipelined
    dict(block_h=64, block_n=128, num_warps=8, num_stages=1, swap=True, waves=1),  # 216 KB, not pipelined
)


def decode_launch(n_heads: int) -> dict:
    """The decode kernel's launch parameters by head count (DECODE_CONFIGS lists the alternatives)."""
    if n_heads <= 16:
        # memory-bound (Moonlight; DeepSeek-V3 at TP8): one 16-head block, 4 warps, 2 programs per SM; measured
        # best of the H200 sweep at bs64 x 4096 (114 us, 1.25x FlashInfer)
        return dict(block_h=16, block_n=32, num_warps=4, num_stages=2, swap=False, waves=2)
    # MMA-bound (128 heads: ~73 GFLOP at bs64 x 4096): 64-head blocks on the MMA rows with 8 warps, one program per
    # SM, unsplit. Measured best of the H200 sweep at bs64 x 4096 (session 5, Triton 3.6): 330 us, 2.4x FlashInfer's
    # 138 us; the keys-on-rows (swap) form was slower there (427 us at its best, 579 us with 32-head blocks).
    return dict(block_h=64, block_n=64, num_warps=8, num_stages=2, swap=False, waves=1)


def decode_num_splits(batch: int, head_blocks: int, max_kv_len: int, block_n: int, num_sms: int = 132,
                      waves: int = 2) -> int:
    """Splits of the keys so batch x head blocks x splits fills the GPU `waves` programs per SM deep; a power of
    two. One split needs no merge pass."""
    want = max(1, (waves * num_sms) // max(1, batch * head_blocks))
    cap = max(1, max_kv_len // (4 * block_n))  # each split keeps at least ~4 key blocks
    splits = min(want, cap, 64)
    return 1 << (splits.bit_length() - 1)


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # the interpreter: the H100/H200 count, so CPU tests take the GPU's split decisions
    return torch.cuda.get_device_properties(device).multi_processor_count


def mla_decode(q_lat: torch.Tensor, q_pe: torch.Tensor, ckv_cache: torch.Tensor, kpe_cache: torch.Tensor,
               seq_len: torch.Tensor, input_pos: torch.Tensor, cache_loc: torch.Tensor, cu_num_pages: torch.Tensor,
               scale: float, out: Optional[torch.Tensor] = None, num_splits: Optional[int] = None,
               max_kv_len: Optional[int] = None, block_h: int = 16, block_n: int = 32, num_warps: int = 4,
               num_stages: int = 2, swap: bool = False, waves: int = 2) -> torch.Tensor:
    """Absorbed-weight decode: q_lat [B, n, R], q_pe [B, n, P] (one query per sequence, caches already hold this
    step's rows) -> out_lat [B, n, R] = softmax(scale * (q_lat . ckv + q_pe . kpe)) @ ckv."""
    B, n, R = q_lat.shape
    P, ps = kpe_cache.shape[-1], ckv_cache.shape[1]
    out = torch.empty_like(q_lat) if out is None else out
    if B == 0:
        return out
    head_blocks = triton.cdiv(n, block_h)
    if num_splits is None:
        max_kv_len = ckv_cache.shape[0] * ps // max(1, B) if max_kv_len is None else max_kv_len
        num_splits = decode_num_splits(B, head_blocks, max_kv_len, block_n, _num_sms(q_lat.device), waves)
    block_r = _blk(R)
    part = ml = out  # one split: the kernel writes `out` directly and never touches these
    if num_splits > 1:
        part = torch.empty(B * n * num_splits * block_r, dtype=torch.float32, device=q_lat.device)
        ml = torch.empty(B * n * num_splits * 2, dtype=torch.float32, device=q_lat.device)
    kernel = _decode_swap_kernel if swap else _decode_rows_kernel
    kernel[(head_blocks, B, num_splits)](  # head blocks fastest: the programs sharing a latent tile run together
        q_lat, q_pe, ckv_cache, kpe_cache, part, ml, out, input_pos, seq_len, cache_loc, cu_num_pages, scale * LOG2E,
        q_lat.stride(0), q_lat.stride(1), q_pe.stride(0), q_pe.stride(1), ckv_cache.stride(0), ckv_cache.stride(1),
        kpe_cache.stride(0), kpe_cache.stride(1), out.stride(0), out.stride(1), n, R=R, P=P, BLOCK_H=block_h,
        BLOCK_N=block_n, BLOCK_R=block_r, BLOCK_P=_blk(P), PS=ps, SPLITS=num_splits, PREC=_prec(q_lat),
        num_warps=num_warps, num_stages=num_stages)
    if num_splits > 1:
        _decode_reduce_kernel[(B, n)](part, ml, out, out.stride(0), out.stride(1), n, R=R, SPLITS=num_splits,
                                      BLOCK_R=block_r, num_warps=4)
    return out
