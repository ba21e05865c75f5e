"""Triton paged attention over the flattened batch: KV-cache write, ragged prefill (with a cached prefix) and
split-KV decode.

Conventions shared by every kernel here (the runtime's flattened batch):
  q            [T, n_heads, d]        all scheduled tokens, sequences back to back
  k, v         [T, n_kv, d]
  k/v_cache    [num_pages, page_size, n_kv, d]  (NHD pages)
  seq_len      [B]   int32  new tokens of each sequence in this step
  input_pos    [B]   int32  tokens already in the cache before this step
  cu_seqlen    [B+1] int32  start of each sequence in the flattened tokens
  cache_loc    [P]   int32  page ids of all sequences, back to back
  cu_num_pages [B+1] int32  start of each sequence's pages in cache_loc
  slot_mapping [T]   int64  page * page_size + offset of each token's cache row (-1: padding, not written)

Token j of sequence b sits at absolute position input_pos[b] + j and sees keys 0 .. input_pos[b] + j (causal,
bottom-right), minus those at or beyond `sliding_window` positions back. No host synchronisation: every launch
size depends on shapes only, so the decode path can be captured in a CUDA graph.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from kernels.triton import pdl
from kernels.triton.fp8_round import interpreting, to_fp8

LOG2E = 1.4426950408889634
_NEG_INIT = tl.constexpr(-1.0e30)  # finite start for running maxima: fully masked blocks then give exp2(-inf) = 0, never NaN


# --------------------------------------------------------------------------------------------- cache write
@triton.jit
def _kv_write_kernel(k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr, stride_kt, stride_vt, k_scale, v_scale,
                     ROW: tl.constexpr, BLOCK: tl.constexpr, FP8: tl.constexpr, INTERP: tl.constexpr,
                     PDL: tl.constexpr = False):
    if PDL:  # programmatic dependent launch (kernels/triton/pdl.py): wait for the kernel in front first
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = offs < ROW
        k = tl.load(k_ptr + t * stride_kt + offs, mask=m)
        v = tl.load(v_ptr + t * stride_vt + offs, mask=m)
        if FP8:  # the cache holds k / k_scale and v / v_scale in e4m3
            k = to_fp8(k.to(tl.float32) / k_scale, INTERP)
            v = to_fp8(v.to(tl.float32) / v_scale, INTERP)
        tl.store(kc_ptr + slot * ROW + offs, k, mask=m)
        tl.store(vc_ptr + slot * ROW + offs, v, mask=m)


def is_fp8(cache: torch.Tensor) -> bool:
    return cache.dtype == torch.float8_e4m3fn


def write_kv_cache(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor, k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    """k/v [T, n_kv, d] -> the cache rows named by slot_mapping [T] (negative slots are skipped); an FP8 cache
    stores k / k_scale and v / v_scale."""
    T = k.shape[0]
    if T == 0:
        return
    row = k_cache.shape[2] * k_cache.shape[3]
    k2, v2 = k.reshape(T, row), v.reshape(T, row)
    k2 = k2 if k2.stride(-1) == 1 else k2.contiguous()
    v2 = v2 if v2.stride(-1) == 1 else v2.contiguous()
    block = min(1024, triton.next_power_of_2(row))
    fp8 = is_fp8(k_cache)
    if not fp8:
        k2, v2 = k2.to(k_cache.dtype), v2.to(v_cache.dtype)
    _kv_write_kernel[(T, triton.cdiv(row, block))](
        k2, v2, k_cache, v_cache, slot_mapping, k2.stride(0), v2.stride(0), float(k_scale), float(v_scale),
        ROW=row, BLOCK=block, FP8=fp8, INTERP=interpreting(), **pdl.launch_kwargs(k2))


# --------------------------------------------------------------------------------------------- shared helpers
@triton.jit
def _cap(s, cap):
    # cap * tanh(s / cap), with tanh written through exp so the interpreter and every backend agree
    x = s / cap
    return cap * (1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0))


@triton.jit
def _load_kv_tile(cache_ptr, loc_ptr, page_base, kpos, kv_len, kvh, offs_d, D, PS: tl.constexpr,
                  stride_page, stride_tok, stride_head):
    valid = kpos < kv_len
    page = tl.load(loc_ptr + page_base + kpos // PS, mask=valid, other=0).to(tl.int64)
    row = page * stride_page + (kpos % PS) * stride_tok + kvh * stride_head
    tile = tl.load(cache_ptr + row[:, None] + offs_d[None, :], mask=valid[:, None] & (offs_d[None, :] < D),
                   other=0.0)
    return tile


# --------------------------------------------------------------------------------------------- prefill / mixed
@triton.jit
def _online_softmax_step(m_i, l_i, acc, s, v, PREC: tl.constexpr):
    """One key block of the online softmax (scores `s` in log2 units): the running max m_i, the running sum l_i
    and the accumulator acc rescaled to the new max, then this block's p @ v added. Shared by prefill and decode."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return m_new, l_i, acc


@triton.jit
def _prefill_kernel(q_ptr, kc_ptr, vc_ptr, o_ptr, seq_len_ptr, input_pos_ptr, cu_seqlen_ptr, loc_ptr, cu_pages_ptr,
                    cu_qblocks_ptr, sinks_ptr, B, scale_log2, cap, window, v_scale,
                    stride_qt, stride_qh, stride_ot, stride_oh, stride_page, stride_tok, stride_head,
                    D, GROUP: tl.constexpr, PS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_D: tl.constexpr, LOG_B: tl.constexpr, HAS_CAP: tl.constexpr, HAS_WINDOW: tl.constexpr,
                    HAS_SINKS: tl.constexpr, PREC: tl.constexpr, KV_FP8: tl.constexpr, alibi_ptr=None,
                    HAS_ALIBI: tl.constexpr = False):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    if pid < tl.load(cu_qblocks_ptr + B):
        # which sequence owns q block `pid`: largest b with cu_qblocks[b] <= pid (binary search, LOG_B steps)
        lo = 0
        hi = B
        for _ in tl.static_range(LOG_B):
            mid = (lo + hi) // 2
            go_right = tl.load(cu_qblocks_ptr + mid) <= pid
            lo = tl.where(go_right, mid, lo)
            hi = tl.where(go_right, hi, mid)
        b = lo
        q_start = (pid - tl.load(cu_qblocks_ptr + b)) * BLOCK_M
        n_q = tl.load(seq_len_ptr + b)
        prefix = tl.load(input_pos_ptr + b)
        tok0 = tl.load(cu_seqlen_ptr + b)
        page_base = tl.load(cu_pages_ptr + b)
        kvh = h // GROUP

        offs_m = q_start + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        m_valid = offs_m < n_q
        q = tl.load(q_ptr + (tok0 + offs_m)[:, None].to(tl.int64) * stride_qt + h * stride_qh + offs_d[None, :],
                    mask=m_valid[:, None] & (offs_d[None, :] < D), other=0.0)
        q_pos = prefix + offs_m  # absolute positions of the queries

        if HAS_SINKS:
            m_i = tl.zeros([BLOCK_M], tl.float32) + tl.load(sinks_ptr + h).to(tl.float32) * 1.4426950408889634
            l_i = tl.zeros([BLOCK_M], tl.float32) + 1.0
        else:
            m_i = tl.zeros([BLOCK_M], tl.float32) + _NEG_INIT
            l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        if HAS_ALIBI:  # ALiBi: slope * (k_pos - q_pos), in the log2 domain of the scores
            slope_log2 = tl.load(alibi_ptr + h).to(tl.float32) * 1.4426950408889634

        kv_end = tl.minimum(prefix + q_start + BLOCK_M, prefix + n_q)  # one past the last visible key
        kv_lo = 0
        if HAS_WINDOW:
            kv_lo = tl.maximum(prefix + q_start - window + 1, 0)
            kv_lo = (kv_lo // BLOCK_N) * BLOCK_N
        for n0 in range(kv_lo, kv_end, BLOCK_N):
            kpos = n0 + tl.arange(0, BLOCK_N)
            k = _load_kv_tile(kc_ptr, loc_ptr, page_base, kpos, kv_end, kvh, offs_d, D, PS, stride_page,
                              stride_tok, stride_head)
            v = _load_kv_tile(vc_ptr, loc_ptr, page_base, kpos, kv_end, kvh, offs_d, D, PS, stride_page,
                              stride_tok, stride_head)
            if KV_FP8:  # e4m3 pages: dot in q's dtype; k_scale is folded into scale_log2, v_scale applied at the end
                k = k.to(q.dtype)
                v = v.to(q.dtype)
            s = tl.dot(q, tl.trans(k), input_precision=PREC)  # [BLOCK_M, BLOCK_N], fp32
            if HAS_CAP:
                s = _cap(s * (scale_log2 / 1.4426950408889634), cap) * 1.4426950408889634
            else:
                s = s * scale_log2
            if HAS_ALIBI:
                s += slope_log2 * (kpos[None, :] - q_pos[:, None]).to(tl.float32)
            visible = (kpos[None, :] <= q_pos[:, None]) & (kpos[None, :] < kv_end)
            if HAS_WINDOW:
                visible = visible & ((q_pos[:, None] - kpos[None, :]) < window)
            s = tl.where(visible, s, float("-inf"))
            m_i, l_i, acc = _online_softmax_step(m_i, l_i, acc, s, v, PREC)
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # rows past the sequence end: 0, not NaN
        if KV_FP8:
            out = out * v_scale
        tl.store(o_ptr + (tok0 + offs_m)[:, None].to(tl.int64) * stride_ot + h * stride_oh + offs_d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=m_valid[:, None] & (offs_d[None, :] < D))


def _prec(q: torch.Tensor) -> str:
    # fp32 models stay exact (no tf32) so greedy tokens match the torch backend; half types use the tensor cores
    return "ieee" if q.dtype == torch.float32 else "tf32"


def _kscale(k_cache: torch.Tensor, k_scale: float) -> float:
    # an FP8 cache's key scale multiplies every score: folded into the softmax scale
    return float(k_scale) if is_fp8(k_cache) else 1.0


def _flags(scale: Optional[float], d: int, logit_cap: Optional[float], sliding_window: Optional[int]):
    scale = d ** -0.5 if scale is None else scale
    has_cap = logit_cap is not None and logit_cap > 0
    has_window = sliding_window is not None and sliding_window > 0
    return scale, has_cap, has_window


def prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_len: torch.Tensor,
                      input_pos: torch.Tensor, cu_seqlen: torch.Tensor, cache_loc: torch.Tensor,
                      cu_num_pages: torch.Tensor, scale: Optional[float] = None, sinks: Optional[torch.Tensor] = None,
                      sliding_window: Optional[int] = None, logit_cap: Optional[float] = None,
                      out: Optional[torch.Tensor] = None, block_m: int = 64, block_n: int = 64,
                      num_warps: int = 4, num_stages: int = 2, k_scale: float = 1.0,
                      v_scale: float = 1.0, alibi_slopes: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Causal attention of every token in q [T, n, d] over its sequence's cached keys (prefix + itself).

    Handles any mix of prefill, chunked prefill and decode sequences. The caches must already hold this step's
    k/v (call write_kv_cache first). Returns [T, n, d] in q's dtype. FP8 caches: values times k_scale / v_scale.
    """
    T, n_heads, d = q.shape
    B = seq_len.shape[0]
    n_kv, ps = k_cache.shape[2], k_cache.shape[1]
    out = torch.empty_like(q) if out is None else out
    if T == 0 or B == 0:
        return out
    scale, has_cap, has_window = _flags(scale, d, logit_cap, sliding_window)
    cu_qblocks = torch.zeros(B + 1, dtype=torch.int32, device=q.device)
    torch.cumsum(torch.div(seq_len + (block_m - 1), block_m, rounding_mode="floor"), 0, out=cu_qblocks[1:])
    grid = (triton.cdiv(T, block_m) + B, n_heads)
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, seq_len, input_pos, cu_seqlen, cache_loc, cu_num_pages, cu_qblocks,
        sinks if sinks is not None else q, B, scale * LOG2E * _kscale(k_cache, k_scale), float(logit_cap or 0.0),
        int(sliding_window or 0), float(v_scale), q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), d, GROUP=n_heads // n_kv, PS=ps, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_D=triton.next_power_of_2(d), LOG_B=max(1, math.ceil(math.log2(B + 1))),
        HAS_CAP=has_cap, HAS_WINDOW=has_window, HAS_SINKS=sinks is not None, PREC=_prec(q),
        KV_FP8=is_fp8(k_cache), num_warps=num_warps, num_stages=num_stages,
        alibi_ptr=alibi_slopes if alibi_slopes is not None else q, HAS_ALIBI=alibi_slopes is not None)
    return out


# --------------------------------------------------------------------------------------------- decode
@triton.jit
def _decode_split_kernel(q_ptr, kc_ptr, vc_ptr, op_ptr, ml_ptr, input_pos_ptr, seq_len_ptr, cu_seqlen_ptr, loc_ptr,
                         cu_pages_ptr, scale_log2, cap, window, v_scale, stride_qt, stride_qh, stride_page,
                         stride_tok, stride_head, D, N_HEADS, GROUP: tl.constexpr, BLOCK_G: tl.constexpr,
                         PS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, SPLITS: tl.constexpr,
                         HAS_CAP: tl.constexpr, HAS_WINDOW: tl.constexpr, PREC: tl.constexpr,
                         KV_FP8: tl.constexpr, o_ptr, sinks_ptr, stride_ot, stride_oh,
                         HAS_SINKS: tl.constexpr, alibi_ptr=None,
                         HAS_ALIBI: tl.constexpr = False, PDL: tl.constexpr = False):
    if PDL:  # programmatic dependent launch (kernels/triton/pdl.py): wait for the kernel in front first
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    kv_len = tl.load(input_pos_ptr + b) + tl.load(seq_len_ptr + b)
    tok = tl.load(cu_seqlen_ptr + b)
    page_base = tl.load(cu_pages_ptr + b)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    g_valid = offs_g < GROUP
    heads = kvh * GROUP + offs_g
    q = tl.load(q_ptr + tok.to(tl.int64) * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                mask=g_valid[:, None] & (offs_d[None, :] < D), other=0.0)

    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(kv_len - window, 0)
    chunk = tl.cdiv(tl.cdiv(kv_len - lo, SPLITS), BLOCK_N) * BLOCK_N
    start = lo + split * chunk
    end = tl.minimum(start + chunk, kv_len)
    m_i = tl.zeros([BLOCK_G], tl.float32) + _NEG_INIT
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    if HAS_ALIBI:  # ALiBi: slope * (k_pos - q_pos) with q_pos = kv_len - 1, in the log2 domain
        slope_log2 = tl.load(alibi_ptr + heads, mask=g_valid, other=0.0).to(tl.float32) * 1.4426950408889634
    for n0 in range(start, end, BLOCK_N):
        kpos = n0 + tl.arange(0, BLOCK_N)
        k = _load_kv_tile(kc_ptr, loc_ptr, page_base, kpos, end, kvh, offs_d, D, PS, stride_page, stride_tok,
                          stride_head)
        v = _load_kv_tile(vc_ptr, loc_ptr, page_base, kpos, end, kvh, offs_d, D, PS, stride_page, stride_tok,
                          stride_head)
        if KV_FP8:
            k = k.to(q.dtype)
            v = v.to(q.dtype)
        s = tl.dot(q, tl.trans(k), input_precision=PREC)  # [BLOCK_G, BLOCK_N]
        if HAS_CAP:
            s = _cap(s * (scale_log2 / 1.4426950408889634), cap) * 1.4426950408889634
        else:
            s = s * scale_log2
        if HAS_ALIBI:
            s += slope_log2[:, None] * (kpos - (kv_len - 1)).to(tl.float32)[None, :]
        s = tl.where((kpos < end)[None, :], s, float("-inf"))
        m_i, l_i, acc = _online_softmax_step(m_i, l_i, acc, s, v, PREC)
    if KV_FP8:
        acc = acc * v_scale
    if SPLITS == 1:  # the whole range in this program: normalise and write the output, no reduce kernel
        if HAS_SINKS:  # the sink joins the softmax denominator only
            sink = tl.load(sinks_ptr + heads, mask=g_valid, other=0.0).to(tl.float32) * 1.4426950408889634
            m_all = tl.maximum(m_i, sink)
            alpha = tl.exp2(m_i - m_all)
            acc = acc * alpha[:, None]
            l_i = l_i * alpha + tl.exp2(sink - m_all)
        l_i = tl.where(l_i == 0.0, 1.0, l_i)  # a padded (empty) sequence: zeros, never NaN
        out = acc / l_i[:, None]
        tl.store(o_ptr + tok.to(tl.int64) * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=g_valid[:, None] & (offs_d[None, :] < D))
    else:  # partial results: unnormalised acc, running max (log2 domain) and sum, per (token, head, split)
        base = (b * N_HEADS + heads).to(tl.int64) * SPLITS + split
        tl.store(op_ptr + base[:, None] * BLOCK_D + offs_d[None, :], acc, mask=g_valid[:, None])
        tl.store(ml_ptr + base * 2, m_i, mask=g_valid)
        tl.store(ml_ptr + base * 2 + 1, l_i, mask=g_valid)


@triton.jit
def _decode_reduce_kernel(op_ptr, ml_ptr, o_ptr, cu_seqlen_ptr, sinks_ptr, stride_ot, stride_oh, D, N_HEADS,
                          SPLITS: tl.constexpr, BLOCK_D: tl.constexpr, HAS_SINKS: tl.constexpr,
                          PDL: tl.constexpr = False):
    if PDL:  # programmatic dependent launch (kernels/triton/pdl.py): wait for the kernel in front first
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS)
    offs_d = tl.arange(0, BLOCK_D)
    base = (b * N_HEADS + h).to(tl.int64) * SPLITS + offs_s
    m = tl.load(ml_ptr + base * 2)
    l = tl.load(ml_ptr + base * 2 + 1)
    acc = tl.load(op_ptr + base[:, None] * BLOCK_D + offs_d[None, :])
    m_all = tl.max(m, 0)
    if HAS_SINKS:
        sink = tl.load(sinks_ptr + h).to(tl.float32) * 1.4426950408889634
        m_all = tl.maximum(m_all, sink)
    w = tl.exp2(m - m_all)
    denom = tl.sum(l * w, 0)
    if HAS_SINKS:
        denom += tl.exp2(sink - m_all)
    denom = tl.where(denom == 0.0, 1.0, denom)  # a padded (empty) sequence: zeros, never NaN
    out = tl.sum(acc * w[:, None], 0) / denom
    tok = tl.load(cu_seqlen_ptr + b)
    tl.store(o_ptr + tok.to(tl.int64) * stride_ot + h * stride_oh + offs_d, out.to(o_ptr.dtype.element_ty),
             mask=offs_d < D)


def decode_num_splits(batch: int, n_kv: int, max_kv_len: int, block_n: int = 64, num_sms: int = 132) -> int:
    """Split the keys so that batch x kv-heads x splits fills the GPU ~4 programs deep; a power of two."""
    want = max(1, (4 * num_sms) // max(1, batch * n_kv))
    cap = max(1, max_kv_len // (4 * block_n))  # each split keeps at least ~4 key blocks
    splits = min(want, cap, 32)
    return 1 << (splits.bit_length() - 1)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seq_len: torch.Tensor,
                     input_pos: torch.Tensor, cu_seqlen: torch.Tensor, cache_loc: torch.Tensor,
                     cu_num_pages: torch.Tensor, scale: Optional[float] = None, sinks: Optional[torch.Tensor] = None,
                     sliding_window: Optional[int] = None, logit_cap: Optional[float] = None,
                     out: Optional[torch.Tensor] = None, num_splits: Optional[int] = None, block_n: int = 64,
                     num_warps: int = 4, num_stages: int = 2, max_kv_len: Optional[int] = None,
                     k_scale: float = 1.0, v_scale: float = 1.0,
                     alibi_slopes: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Decode attention: every sequence has exactly one query token (seq_len == 1). q [B, n, d] -> [B, n, d].

    Flash-decoding: the keys of each (sequence, kv head) are split into `num_splits` ranges processed in
    parallel, then merged. All grouped query heads of a kv head share one pass over its keys.
    """
    T, n_heads, d = q.shape
    B = seq_len.shape[0]
    n_kv, ps = k_cache.shape[2], k_cache.shape[1]
    out = torch.empty_like(q) if out is None else out
    if B == 0:
        return out
    scale, has_cap, has_window = _flags(scale, d, logit_cap, sliding_window)
    if num_splits is None:
        if max_kv_len is None:
            max_kv_len = k_cache.shape[0] * ps // max(1, B)
        if has_window:
            max_kv_len = min(max_kv_len, sliding_window)
        num_splits = decode_num_splits(B, n_kv, max_kv_len, block_n)
    group = n_heads // n_kv
    block_d = triton.next_power_of_2(d)
    one = num_splits == 1  # the split kernel writes the output itself
    part = torch.empty(0 if one else B * n_heads * num_splits * block_d, dtype=torch.float32, device=q.device)
    ml = torch.empty(0 if one else B * n_heads * num_splits * 2, dtype=torch.float32, device=q.device)
    sinks_arg = sinks if sinks is not None else q
    _decode_split_kernel[(B, n_kv, num_splits)](
        q, k_cache, v_cache, part, ml, input_pos, seq_len, cu_seqlen, cache_loc, cu_num_pages,
        scale * LOG2E * _kscale(k_cache, k_scale), float(logit_cap or 0.0), int(sliding_window or 0), float(v_scale),
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), d, n_heads, GROUP=group,
        BLOCK_G=max(16, triton.next_power_of_2(group)), PS=ps, BLOCK_N=block_n, BLOCK_D=block_d, SPLITS=num_splits,
        HAS_CAP=has_cap, HAS_WINDOW=has_window, PREC=_prec(q), KV_FP8=is_fp8(k_cache), o_ptr=out,
        sinks_ptr=sinks_arg, stride_ot=out.stride(0), stride_oh=out.stride(1), HAS_SINKS=sinks is not None,
        num_warps=num_warps, num_stages=num_stages,
        alibi_ptr=alibi_slopes if alibi_slopes is not None else q, HAS_ALIBI=alibi_slopes is not None,
        **pdl.launch_kwargs(q))
    if not one:
        _decode_reduce_kernel[(B, n_heads)](
            part, ml, out, cu_seqlen, sinks_arg, out.stride(0), out.stride(1), d, n_heads,
            SPLITS=num_splits, BLOCK_D=block_d, HAS_SINKS=sinks is not None, num_warps=4, **pdl.launch_kwargs(q))
    return out


def slot_mapping(seq_len: torch.Tensor, input_pos: torch.Tensor, cu_seqlen: torch.Tensor, cache_loc: torch.Tensor,
                 cu_num_pages: torch.Tensor, page_size: int, num_tokens: int) -> torch.Tensor:
    """Cache row (page * page_size + offset) of every flattened token, computed on the device without a sync.

    Tokens past cu_seqlen[-1] (padding) map to -1."""
    dev = seq_len.device
    t = torch.arange(num_tokens, device=dev, dtype=torch.int64)
    b = torch.searchsorted(cu_seqlen[1:].to(torch.int64), t, right=True).clamp_(max=max(seq_len.shape[0] - 1, 0))
    pos = input_pos.to(torch.int64)[b] + (t - cu_seqlen.to(torch.int64)[b])
    idx = (cu_num_pages.to(torch.int64)[b] + torch.div(pos, page_size, rounding_mode="floor"))
    idx = idx.clamp_(max=max(cache_loc.shape[0] - 1, 0))
    slots = cache_loc.to(torch.int64)[idx] * page_size + pos % page_size
    return torch.where(t < cu_seqlen[-1].to(torch.int64), slots, torch.full_like(slots, -1))
