"""Triton kernels for multi-head latent attention over the compressed paged cache.

Conventions (the runtime's flattened batch; see kernels/triton/attention.py for the metadata fields):
  ckv_cache   [num_pages, page_size, R]     the latent (after kv_a_layernorm), R = kv_lora_rank
  kpe_cache   [num_pages, page_size, P]     the RoPE'd shared key, P = qk_rope_head_dim
  slot_mapping [T] int64                    page * page_size + offset of each new token's row (-1: not written)

Kernels:
  write_mla_cache        one launch writes this step's latent and RoPE key rows
  mla_decode             decode (one query per sequence) with absorbed weights: q_lat [B, n, R] = q_nope @ W_uk,
                         attention over [ckv | kpe] as one shared KV head (MQA, values = ckv), split-KV then a
                         merge; every head block of a sequence reads the latent once per split. -> [B, n, R]
                         (the caller applies W_uv)
  mla_prefill            ragged causal attention on expanded K/V (k_nope, v per head from kv_b_proj; the RoPE key
                         shared by the heads), queries at the end of each sequence's keys (chunked prefill)

No launch reads the host, so decode can be captured in a CUDA graph.
"""

from __future__ import annotations

import math
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


# --------------------------------------------------------------------------------------------- cache write
@triton.jit
def _mla_write_kernel(ckv_ptr, kpe_ptr, ckv_cache_ptr, kpe_cache_ptr, slot_ptr, stride_ckv, stride_kpe,
                      R: tl.constexpr, P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr):
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:
        offs_r = tl.arange(0, BLOCK_R)
        tl.store(ckv_cache_ptr + slot * R + offs_r, tl.load(ckv_ptr + t * stride_ckv + offs_r, mask=offs_r < R),
                 mask=offs_r < R)
        offs_p = tl.arange(0, BLOCK_P)
        tl.store(kpe_cache_ptr + slot * P + offs_p, tl.load(kpe_ptr + t * stride_kpe + offs_p, mask=offs_p < P),
                 mask=offs_p < P)


def write_mla_cache(ckv: torch.Tensor, kpe: torch.Tensor, ckv_cache: torch.Tensor, kpe_cache: torch.Tensor,
                    slot_mapping: torch.Tensor) -> None:
    """ckv [T, R], kpe [T, P] -> the cache rows named by slot_mapping [T] (negative slots are skipped)."""
    T = ckv.shape[0]
    if T == 0:
        return
    R, P = ckv_cache.shape[-1], kpe_cache.shape[-1]
    ckv = ckv.to(ckv_cache.dtype)
    kpe = kpe.to(kpe_cache.dtype)
    ckv = ckv if ckv.stride(-1) == 1 else ckv.contiguous()
    kpe = kpe if kpe.stride(-1) == 1 else kpe.contiguous()
    _mla_write_kernel[(T,)](ckv, kpe, ckv_cache, kpe_cache, slot_mapping, ckv.stride(0), kpe.stride(0), R=R, P=P,
                            BLOCK_R=triton.next_power_of_2(R), BLOCK_P=triton.next_power_of_2(P))


# --------------------------------------------------------------------------------------------- decode
@triton.jit
def _mla_decode_split_kernel(qn_ptr, qp_ptr, ckv_ptr, kpe_ptr, op_ptr, ml_ptr, input_pos_ptr, seq_len_ptr,
                             loc_ptr, cu_pages_ptr, scale_log2, stride_qn_t, stride_qn_h, stride_qp_t, stride_qp_h,
                             stride_cp, stride_ct, stride_kp, stride_kt, N_HEADS,
                             R: tl.constexpr, P: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, PS: tl.constexpr, SPLITS: tl.constexpr,
                             PREC: tl.constexpr):
    b = tl.program_id(0)
    hb = tl.program_id(1)
    split = tl.program_id(2)
    kv_len = tl.load(input_pos_ptr + b) + tl.load(seq_len_ptr + b)
    page_base = tl.load(cu_pages_ptr + b)
    heads = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = heads < N_HEADS
    offs_r = tl.arange(0, BLOCK_R)
    offs_p = tl.arange(0, BLOCK_P)
    row_q = b.to(tl.int64)  # decode: token b is sequence b's query
    qn = tl.load(qn_ptr + row_q * stride_qn_t + heads[:, None] * stride_qn_h + offs_r[None, :],
                 mask=h_ok[:, None] & (offs_r[None, :] < R), other=0.0)
    qp = tl.load(qp_ptr + row_q * stride_qp_t + heads[:, None] * stride_qp_h + offs_p[None, :],
                 mask=h_ok[:, None] & (offs_p[None, :] < P), other=0.0)

    chunk = tl.cdiv(tl.cdiv(kv_len, SPLITS), BLOCK_N) * BLOCK_N
    start = split * chunk
    end = tl.minimum(start + chunk, kv_len)
    m_i = tl.zeros([BLOCK_H], tl.float32) + _NEG_INIT
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_R], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        kpos = n0 + tl.arange(0, BLOCK_N)
        valid = kpos < end
        page = tl.load(loc_ptr + page_base + kpos // PS, mask=valid, other=0).to(tl.int64)
        c = tl.load(ckv_ptr + (page * stride_cp + (kpos % PS) * stride_ct)[:, None] + offs_r[None, :],
                    mask=valid[:, None] & (offs_r[None, :] < R), other=0.0)  # [BLOCK_N, BLOCK_R]
        k = tl.load(kpe_ptr + (page * stride_kp + (kpos % PS) * stride_kt)[:, None] + offs_p[None, :],
                    mask=valid[:, None] & (offs_p[None, :] < P), other=0.0)  # [BLOCK_N, BLOCK_P]
        s = tl.dot(qn, tl.trans(c), input_precision=PREC) + tl.dot(qp, tl.trans(k), input_precision=PREC)
        s = tl.where(valid[None, :], s * scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(c.dtype), c, input_precision=PREC)
        m_i = m_new
    base = (b * N_HEADS + heads).to(tl.int64) * SPLITS + split
    if start < kv_len:  # an empty split (short sequence) writes only its (m, l): the merge skips its row
        tl.store(op_ptr + base[:, None] * BLOCK_R + offs_r[None, :], acc, mask=h_ok[:, None])
    tl.store(ml_ptr + base * 2, m_i, mask=h_ok)
    tl.store(ml_ptr + base * 2 + 1, l_i, mask=h_ok)


@triton.jit
def _mla_decode_reduce_kernel(op_ptr, ml_ptr, o_ptr, stride_ot, stride_oh, N_HEADS, R: tl.constexpr,
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


def decode_num_splits(batch: int, head_blocks: int, max_kv_len: int, block_n: int, num_sms: int = 132) -> int:
    """Splits of the keys so batch x head blocks x splits fills the GPU ~2 programs deep; a power of two."""
    want = max(1, (2 * num_sms) // max(1, batch * head_blocks))
    cap = max(1, max_kv_len // (4 * block_n))  # each split keeps at least ~4 key blocks
    splits = min(want, cap, 64)
    return 1 << (splits.bit_length() - 1)


def decode_launch(n_heads: int) -> dict:
    """The decode kernel's launch parameters: one 16-head block per program for up to 16 heads (Moonlight,
    DeepSeek-V3 at TP8), 32-head blocks on 8 warps beyond (fewer re-reads of the latent per sequence)."""
    if n_heads > 16:
        return dict(block_h=32, block_n=32, num_warps=8, num_stages=2)
    return dict(block_h=16, block_n=32, num_warps=4, num_stages=2)


def mla_decode(q_lat: torch.Tensor, q_pe: torch.Tensor, ckv_cache: torch.Tensor, kpe_cache: torch.Tensor,
               seq_len: torch.Tensor, input_pos: torch.Tensor, cache_loc: torch.Tensor, cu_num_pages: torch.Tensor,
               scale: float, out: Optional[torch.Tensor] = None, num_splits: Optional[int] = None,
               max_kv_len: Optional[int] = None, block_h: int = 16, block_n: int = 32, num_warps: int = 4,
               num_stages: int = 2) -> torch.Tensor:
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
        num_splits = decode_num_splits(B, head_blocks, max_kv_len, block_n)
    block_r = _blk(R)
    part = torch.empty(B * n * num_splits * block_r, dtype=torch.float32, device=q_lat.device)
    ml = torch.empty(B * n * num_splits * 2, dtype=torch.float32, device=q_lat.device)
    _mla_decode_split_kernel[(B, head_blocks, num_splits)](
        q_lat, q_pe, ckv_cache, kpe_cache, part, ml, input_pos, seq_len, cache_loc, cu_num_pages, scale * LOG2E,
        q_lat.stride(0), q_lat.stride(1), q_pe.stride(0), q_pe.stride(1), ckv_cache.stride(0), ckv_cache.stride(1),
        kpe_cache.stride(0), kpe_cache.stride(1), n, R=R, P=P, BLOCK_H=block_h, BLOCK_N=block_n, BLOCK_R=block_r,
        BLOCK_P=_blk(P), PS=ps, SPLITS=num_splits, PREC=_prec(q_lat), num_warps=num_warps,
        num_stages=num_stages)
    _mla_decode_reduce_kernel[(B, n)](part, ml, out, out.stride(0), out.stride(1), n, R=R, SPLITS=num_splits,
                                      BLOCK_R=block_r, num_warps=4)
    return out


# --------------------------------------------------------------------------------------------- prefill / mixed
@triton.jit
def _mla_prefill_kernel(qn_ptr, qp_ptr, kn_ptr, kp_ptr, v_ptr, o_ptr, cu_q_ptr, cu_k_ptr, cu_qblocks_ptr, B,
                        scale_log2, s_qn_t, s_qn_h, s_qp_t, s_qp_h, s_kn_t, s_kn_h, s_kp_t, s_v_t, s_v_h, s_o_t,
                        s_o_h, NOPE: tl.constexpr, P: tl.constexpr, DV: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_NOPE: tl.constexpr, BLOCK_P: tl.constexpr,
                        BLOCK_DV: tl.constexpr, LOG_B: tl.constexpr, PREC: tl.constexpr):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    if pid < tl.load(cu_qblocks_ptr + B):
        lo = 0  # the sequence owning q block `pid`: largest b with cu_qblocks[b] <= pid
        hi = B
        for _ in tl.static_range(LOG_B):
            mid = (lo + hi) // 2
            go_right = tl.load(cu_qblocks_ptr + mid) <= pid
            lo = tl.where(go_right, mid, lo)
            hi = tl.where(go_right, hi, mid)
        b = lo
        q_start = (pid - tl.load(cu_qblocks_ptr + b)) * BLOCK_M
        tok0 = tl.load(cu_q_ptr + b)
        n_q = tl.load(cu_q_ptr + b + 1) - tok0
        key0 = tl.load(cu_k_ptr + b)
        n_k = tl.load(cu_k_ptr + b + 1) - key0
        prefix = n_k - n_q
        offs_m = q_start + tl.arange(0, BLOCK_M)
        m_ok = offs_m < n_q
        rows = (tok0 + offs_m).to(tl.int64)
        offs_d = tl.arange(0, BLOCK_NOPE)
        offs_p = tl.arange(0, BLOCK_P)
        offs_v = tl.arange(0, BLOCK_DV)
        qn = tl.load(qn_ptr + rows[:, None] * s_qn_t + h * s_qn_h + offs_d[None, :],
                     mask=m_ok[:, None] & (offs_d[None, :] < NOPE), other=0.0)
        qp = tl.load(qp_ptr + rows[:, None] * s_qp_t + h * s_qp_h + offs_p[None, :],
                     mask=m_ok[:, None] & (offs_p[None, :] < P), other=0.0)
        q_pos = prefix + offs_m
        m_i = tl.zeros([BLOCK_M], tl.float32) + _NEG_INIT
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
        kv_end = tl.minimum(prefix + q_start + BLOCK_M, n_k)
        for n0 in range(0, kv_end, BLOCK_N):
            kpos = n0 + tl.arange(0, BLOCK_N)
            k_ok = kpos < kv_end
            krow = (key0 + kpos).to(tl.int64)
            kn = tl.load(kn_ptr + krow[:, None] * s_kn_t + h * s_kn_h + offs_d[None, :],
                         mask=k_ok[:, None] & (offs_d[None, :] < NOPE), other=0.0)
            kp = tl.load(kp_ptr + krow[:, None] * s_kp_t + offs_p[None, :],
                         mask=k_ok[:, None] & (offs_p[None, :] < P), other=0.0)
            v = tl.load(v_ptr + krow[:, None] * s_v_t + h * s_v_h + offs_v[None, :],
                        mask=k_ok[:, None] & (offs_v[None, :] < DV), other=0.0)
            s = tl.dot(qn, tl.trans(kn), input_precision=PREC) + tl.dot(qp, tl.trans(kp), input_precision=PREC)
            visible = (kpos[None, :] <= q_pos[:, None]) & k_ok[None, :]
            s = tl.where(visible, s * scale_log2, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
            m_i = m_new
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(o_ptr + rows[:, None] * s_o_t + h * s_o_h + offs_v[None, :], out.to(o_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & (offs_v[None, :] < DV))


def mla_prefill(q_nope: torch.Tensor, q_pe: torch.Tensor, k_nope: torch.Tensor, kpe: torch.Tensor, v: torch.Tensor,
                cu_q: torch.Tensor, cu_k: torch.Tensor, scale: float, block_m: int = 64, block_n: int = 32,
                num_warps: int = 4, num_stages: int = 2) -> torch.Tensor:
    """Ragged causal MLA on expanded keys: q_nope [T, n, nope], q_pe [T, n, P]; k_nope [L, n, nope], kpe [L, P]
    (shared by the heads), v [L, n, dv]; sequence b owns queries cu_q[b]:cu_q[b+1] and keys cu_k[b]:cu_k[b+1],
    its queries being its last keys' positions. -> [T, n, dv]."""
    T, n, nope = q_nope.shape
    B = cu_q.shape[0] - 1
    dv = v.shape[-1]
    P = q_pe.shape[-1]
    out = q_nope.new_empty(T, n, dv)
    if T == 0 or B == 0:
        return out
    seq_q = cu_q[1:] - cu_q[:-1]
    cu_qblocks = torch.zeros(B + 1, dtype=torch.int32, device=q_nope.device)
    torch.cumsum(torch.div(seq_q + (block_m - 1), block_m, rounding_mode="floor"), 0, out=cu_qblocks[1:])
    grid = (triton.cdiv(T, block_m) + B, n)
    _mla_prefill_kernel[grid](
        q_nope, q_pe, k_nope, kpe, v, out, cu_q, cu_k, cu_qblocks, B, scale * LOG2E,
        q_nope.stride(0), q_nope.stride(1), q_pe.stride(0), q_pe.stride(1), k_nope.stride(0), k_nope.stride(1),
        kpe.stride(0), v.stride(0), v.stride(1), out.stride(0), out.stride(1), NOPE=nope, P=P, DV=dv,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_NOPE=_blk(nope), BLOCK_P=_blk(P), BLOCK_DV=_blk(dv),
        LOG_B=max(1, math.ceil(math.log2(B + 1))), PREC=_prec(q_nope), num_warps=num_warps, num_stages=num_stages)
    return out


def history_rows(seq_len: torch.Tensor, input_pos: torch.Tensor, cache_loc: torch.Tensor, cu_num_pages: torch.Tensor,
                 page_size: int, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cache rows of every sequence's keys 0 .. input_pos + seq_len - 1, back to back ([total] int64), and their
    offsets cu_k [B+1] int32. `total` (the sum of the KV lengths) comes from the host: no device sync."""
    kv_len = (input_pos + seq_len).to(torch.int64)
    cu_k = torch.zeros(kv_len.shape[0] + 1, dtype=torch.int64, device=kv_len.device)
    torch.cumsum(kv_len, 0, out=cu_k[1:])
    t = torch.arange(total, device=kv_len.device)
    b = torch.searchsorted(cu_k[1:], t, right=True)
    pos = t - cu_k[b]
    page = cache_loc.to(torch.int64)[cu_num_pages.to(torch.int64)[b] + torch.div(pos, page_size, rounding_mode="floor")]
    return page * page_size + pos % page_size, cu_k.to(torch.int32)


def new_token_slots(seq_len: torch.Tensor, input_pos: torch.Tensor, cu_seqlen: torch.Tensor, cache_loc: torch.Tensor,
                    cu_num_pages: torch.Tensor, page_size: int, num_tokens: int) -> torch.Tensor:
    """Cache row (page * page_size + offset) of every flattened new token, on the device without a sync; tokens
    past cu_seqlen[-1] (padding) map to -1."""
    t = torch.arange(num_tokens, device=seq_len.device, dtype=torch.int64)
    b = torch.searchsorted(cu_seqlen[1:].to(torch.int64), t, right=True).clamp_(max=max(seq_len.shape[0] - 1, 0))
    pos = input_pos.to(torch.int64)[b] + (t - cu_seqlen.to(torch.int64)[b])
    idx = (cu_num_pages.to(torch.int64)[b] + torch.div(pos, page_size, rounding_mode="floor"))
    idx = idx.clamp_(max=max(cache_loc.shape[0] - 1, 0))
    slots = cache_loc.to(torch.int64)[idx] * page_size + pos % page_size
    return torch.where(t < cu_seqlen[-1].to(torch.int64), slots, torch.full_like(slots, -1))


def absorb_q(q_nope: torch.Tensor, w_uk: torch.Tensor) -> torch.Tensor:
    """q_nope [T, n, nope] @ W_uk [n, nope, R] per head -> q_lat [T, n, R] (a head-major buffer, strided view)."""
    return torch.bmm(q_nope.transpose(0, 1), w_uk.to(q_nope.dtype)).transpose(0, 1)


def unabsorb_out(out_lat: torch.Tensor, w_uv: torch.Tensor) -> torch.Tensor:
    """out_lat [T, n, R] @ W_uv[h].T per head -> [T, n, v]."""
    return torch.bmm(out_lat.transpose(0, 1), w_uv.to(out_lat.dtype).transpose(1, 2)).transpose(0, 1)


def expand_kv(ckv: torch.Tensor, weight: torch.Tensor, n_heads: int, nope: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent ckv [L, R] up-projected by kv_b_proj [n * (nope + v), R] -> k_nope [L, n, nope], v [L, n, v]
    (strided views of one GEMM output)."""
    kv = torch.nn.functional.linear(ckv.to(weight.dtype), weight).view(ckv.shape[0], n_heads, -1)
    return kv[..., :nope], kv[..., nope:]


# --------------------------------------------------------------------------------------------- RoPE (pairs in)
@triton.jit
def _rope_pairs_heads(x_ptr, y_ptr, t, cos, sin, i, im, s_xt, s_xh, s_yt, s_yh, n_heads, HALF: tl.constexpr,
                      BLOCK_H: tl.constexpr):
    for h0 in range(0, n_heads, BLOCK_H):
        heads = h0 + tl.arange(0, BLOCK_H)
        m = (heads < n_heads)[:, None] & im[None, :]
        xb = x_ptr + t * s_xt + heads[:, None] * s_xh
        yb = y_ptr + t * s_yt + heads[:, None] * s_yh
        x1 = tl.load(xb + 2 * i[None, :], mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(xb + 2 * i[None, :] + 1, mask=m, other=0.0).to(tl.float32)
        tl.store(yb + i[None, :], (x1 * cos[None, :] - x2 * sin[None, :]).to(y_ptr.dtype.element_ty), mask=m)
        tl.store(yb + HALF + i[None, :], (x2 * cos[None, :] + x1 * sin[None, :]).to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _rope_pairs_kernel(q_ptr, k_ptr, yq_ptr, yk_ptr, cos_ptr, sin_ptr, sq_t, sq_h, sk_t, sk_h, syq_t, syq_h, syk_t,
                       syk_h, s_cos, s_sin, n_q, n_k, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr,
                       BLOCK_H: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)  # one program per token: cos/sin read once for every q and k head
    i = tl.arange(0, BLOCK_HALF)
    im = i < HALF
    # the eager model multiplies in the activation dtype: round cos/sin to it first
    cos = tl.load(cos_ptr + t * s_cos + i, mask=im, other=0.0).to(q_ptr.dtype.element_ty).to(tl.float32)
    sin = tl.load(sin_ptr + t * s_sin + i, mask=im, other=0.0).to(q_ptr.dtype.element_ty).to(tl.float32)
    _rope_pairs_heads(q_ptr, yq_ptr, t, cos, sin, i, im, sq_t, sq_h, syq_t, syq_h, n_q, HALF, BLOCK_H)
    _rope_pairs_heads(k_ptr, yk_ptr, t, cos, sin, i, im, sk_t, sk_h, syk_t, syk_h, n_k, HALF, BLOCK_H)


def rope_qk_interleaved(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                        sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek's interleaved RoPE in one launch: pairs (2i, 2i+1) of q [b, s, n, d], k [b, s, n_k, d] rotated by
    cos/sin [b or 1, s, d] (halves repeated, as HF builds them), written as halves (i, i + d/2), the layout of
    torch_rope_with_qk_interleaving. -> (q_embed, k_embed), contiguous."""
    b, s, n, d = q.shape
    T, half = b * s, d // 2
    q3, k3 = q.reshape(T, n, d), k.reshape(T, k.shape[2], d)
    q3 = q3 if q3.stride(-1) == 1 else q3.contiguous()
    k3 = k3 if k3.stride(-1) == 1 else k3.contiguous()
    c = cos.expand(b, *cos.shape[1:]).reshape(T, -1)
    sn = sin.expand(b, *sin.shape[1:]).reshape(T, -1)
    c = c if c.stride(-1) == 1 else c.contiguous()
    sn = sn if sn.stride(-1) == 1 else sn.contiguous()
    yq, yk = torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(k.shape, dtype=k.dtype, device=k.device)
    yq3, yk3 = yq.view(T, n, d), yk.view(T, k.shape[2], d)
    if T:
        _rope_pairs_kernel[(T,)](q3, k3, yq3, yk3, c, sn, q3.stride(0), q3.stride(1), k3.stride(0), k3.stride(1),
                                 yq3.stride(0), yq3.stride(1), yk3.stride(0), yk3.stride(1), c.stride(0), sn.stride(0),
                                 n, k.shape[2], HALF=half, BLOCK_HALF=triton.next_power_of_2(half),
                                 BLOCK_H=min(16, triton.next_power_of_2(max(n, k.shape[2]))), num_warps=4)
    return yq, yk
