"""Triton kernels for multi-head latent attention over the compressed paged cache.

Conventions (the runtime's flattened batch; see kernels/triton/attention.py for the metadata fields):
  ckv_cache   [num_pages, page_size, R]     the latent (after kv_a_layernorm), R = kv_lora_rank
  kpe_cache   [num_pages, page_size, P]     the RoPE'd shared key, P = qk_rope_head_dim
  slot_mapping [T] int64                    page * page_size + offset of each new token's row (-1: not written)

Kernels:
  write_mla_cache        one launch writes this step's latent and RoPE key rows
  mla_decode             decode (one query per sequence) with absorbed weights: q_lat [B, n, R] = q_nope @ W_uk,
                         attention over [ckv | kpe] as one shared KV head (MQA, values = ckv), split-KV then a
                         merge -> [B, n, R] (the caller applies W_uv). It lives in kernels/triton/mla_decode.py
                         (with its launch policy, decode_launch / decode_num_splits) and is re-exported here.
  mla_prefill            ragged causal attention on expanded K/V (k_nope, v per head from kv_b_proj; the RoPE key
                         shared by the heads), queries at the end of each sequence's keys (chunked prefill)

No launch reads the host, so decode can be captured in a CUDA graph.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels.triton.mla_decode import LOG2E, _NEG_INIT, _blk, _prec, decode_launch, decode_num_splits, mla_decode

__all__ = ["write_mla_cache", "mla_decode", "decode_launch", "decode_num_splits", "mla_prefill", "history_rows",
           "new_token_slots", "absorb_q", "unabsorb_out", "expand_kv", "rope_qk_interleaved"]


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
