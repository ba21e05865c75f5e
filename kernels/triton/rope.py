"""Triton rotary embedding applied to q and k in one launch, reading one cos/sin cache shared by all layers.

cos_sin_cache [max_positions, rot_dim] holds cos in the first rot_dim/2 columns and sin in the rest (fp32).
positions [T] index it. Two layouts: "neox" (rotate halves, HF's rotate_half) and "interleaved" (pairs 2i, 2i+1,
the complex-multiplication form). Dimensions past rot_dim (partial rotary) pass through unchanged.
Precision: the rotation runs in fp32 from cos/sin as given (pass fp32 tables; bf16 ones cost accuracy) and each output
is rounded once, to nearest even: in bf16 that is more accurate than HF's eager RoPE, which rounds cos/sin and each
product to bf16.
"""

from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from kernels.triton import pdl
from kernels.triton.fp8_round import interpreting


@triton.jit
def _round(v, out_ty: tl.constexpr, BF16_BITS: tl.constexpr):
    """fp32 -> out_ty, to nearest even."""
    if BF16_BITS:  # Triton's CPU interpreter truncates fp32 -> bf16 (a 1-ulp bias): round on the bits here
        u = v.to(tl.uint32, bitcast=True)
        u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        return u.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return v.to(out_ty)


@triton.jit
def _rope_heads(x_ptr, y_ptr, t, cos, sin, i, im, stride_xt, stride_xh, stride_yt, stride_yh, n_heads, D, HALF,
                BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, INTERLEAVED: tl.constexpr, BF16_BITS: tl.constexpr):
    if INTERLEAVED:
        i1 = 2 * i
        i2 = 2 * i + 1
    else:
        i1 = i
        i2 = i + HALF
    for h0 in range(0, n_heads, BLOCK_H):
        heads = h0 + tl.arange(0, BLOCK_H)
        hm = heads < n_heads
        xb = x_ptr + t * stride_xt + heads[:, None] * stride_xh
        yb = y_ptr + t * stride_yt + heads[:, None] * stride_yh
        m = hm[:, None] & im[None, :]
        x1 = tl.load(xb + i1[None, :], mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(xb + i2[None, :], mask=m, other=0.0).to(tl.float32)
        out_ty = y_ptr.dtype.element_ty
        tl.store(yb + i1[None, :], _round(x1 * cos[None, :] - x2 * sin[None, :], out_ty, BF16_BITS), mask=m)
        tl.store(yb + i2[None, :], _round(x2 * cos[None, :] + x1 * sin[None, :], out_ty, BF16_BITS), mask=m)
        if BLOCK_D > 0:  # partial rotary: copy the tail
            j = 2 * HALF + tl.arange(0, BLOCK_D)
            mt = hm[:, None] & (j[None, :] < D)
            tl.store(yb + j[None, :], tl.load(xb + j[None, :], mask=mt, other=0.0), mask=mt)


@triton.jit
def _rope_qk_kernel(q_ptr, k_ptr, yq_ptr, yk_ptr, pos_ptr, cos_ptr, sin_ptr, sq_t, sq_h, sk_t, sk_h, syq_t, syq_h,
                    syk_t, syk_h, stride_cos, stride_sin, n_q, n_k, D, HALF, BLOCK_H: tl.constexpr,
                    BLOCK_HALF: tl.constexpr, BLOCK_D: tl.constexpr, INTERLEAVED: tl.constexpr,
                    HAS_POS: tl.constexpr, BF16_BITS: tl.constexpr, PDL: tl.constexpr = False):
    # one program per token: cos/sin are read once and applied to every q and k head
    if PDL:  # programmatic dependent launch (kernels/triton/pdl.py): wait for the kernel in front first
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    t = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK_HALF)
    im = i < HALF
    row = t
    if HAS_POS:  # cos/sin cache rows indexed by position; else one cos/sin row per token
        row = tl.load(pos_ptr + t).to(tl.int64)
    # fp32 throughout, from the tables as given: no rounding of cos/sin to the activation dtype (HF's bf16 RoPE
    # rounds them and each product; that is what made the fused path less accurate than it needs to be)
    cos = tl.load(cos_ptr + row * stride_cos + i, mask=im, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + row * stride_sin + i, mask=im, other=0.0).to(tl.float32)
    _rope_heads(q_ptr, yq_ptr, t, cos, sin, i, im, sq_t, sq_h, syq_t, syq_h, n_q, D, HALF, BLOCK_H, BLOCK_D,
                INTERLEAVED, BF16_BITS)
    _rope_heads(k_ptr, yk_ptr, t, cos, sin, i, im, sk_t, sk_h, syk_t, syk_h, n_k, D, HALF, BLOCK_H, BLOCK_D,
                INTERLEAVED, BF16_BITS)


def _launch(q2, k2, pos, cos, sin, half, interleaved):
    assert q2.dtype == k2.dtype, "q and k share one dtype"
    yq, yk = torch.empty_like(q2), torch.empty_like(k2)
    T = q2.shape[0]
    if T:
        d = q2.shape[-1]
        tail = d - 2 * half
        _rope_qk_kernel[(T,)](
            q2, k2, yq, yk, pos if pos is not None else q2, cos, sin, q2.stride(0), q2.stride(1), k2.stride(0),
            k2.stride(1), yq.stride(0), yq.stride(1), yk.stride(0), yk.stride(1), cos.stride(0), sin.stride(0),
            q2.shape[1], k2.shape[1], d, half, BLOCK_H=min(8, triton.next_power_of_2(max(q2.shape[1], k2.shape[1]))),
            BLOCK_HALF=triton.next_power_of_2(half), BLOCK_D=triton.next_power_of_2(tail) if tail > 0 else 0,
            INTERLEAVED=interleaved, HAS_POS=pos is not None,
            BF16_BITS=interpreting() and q2.dtype == torch.bfloat16, num_warps=4, **pdl.launch_kwargs(q2))
    return yq, yk


def _rows3(x: torch.Tensor, T: int) -> torch.Tensor:
    x = x.reshape(T, -1, x.shape[-1])
    return x if x.stride(-1) == 1 else x.contiguous()


def rope_qk(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor,
            interleaved: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """q [..., n, d], k [..., n_kv, d], positions [...] (one per token) -> rotated (q, k), same shapes/dtypes.

    cos_sin_cache [max_pos, rot]: cos in the first rot/2 columns, sin in the rest."""
    pos = positions.reshape(-1)
    T = pos.shape[0]
    half = cos_sin_cache.shape[-1] // 2
    yq, yk = _launch(_rows3(q, T), _rows3(k, T), pos, cos_sin_cache, cos_sin_cache[:, half:], half, interleaved)
    return yq.view(q.shape), yk.view(k.shape)


def rope_qk_cos_sin(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                    sin: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """HF-style (rotate-half) RoPE with per-token cos/sin [..., rot] (halves repeated, as HF builds them).

    q [b, s, n, d], k [b, s, n_kv, d], cos/sin [b or 1, s, rot] (fp32 for full accuracy) -> rotated (q, k)."""
    T = q.shape[0] * q.shape[1]
    half = cos.shape[-1] // 2
    c = cos.expand(q.shape[0], *cos.shape[1:]).reshape(T, -1)
    s = sin.expand(q.shape[0], *sin.shape[1:]).reshape(T, -1)
    c = c if c.stride(-1) == 1 else c.contiguous()
    s = s if s.stride(-1) == 1 else s.contiguous()
    yq, yk = _launch(_rows3(q, T), _rows3(k, T), None, c, s, half, False)
    return yq.view(q.shape), yk.view(k.shape)


def build_cos_sin_cache(inv_freq: torch.Tensor, max_positions: int, scaling: float = 1.0) -> torch.Tensor:
    """[max_positions, rot_dim] fp32 cache (cos | sin) from the model's inv_freq [rot_dim / 2]."""
    t = torch.arange(max_positions, dtype=torch.float32, device=inv_freq.device)
    freqs = torch.outer(t, inv_freq.float())
    return torch.cat([freqs.cos() * scaling, freqs.sin() * scaling], dim=-1).contiguous()
