"""Triton Mamba2 SSD kernels over per-sequence state slots (the `triton` SSM backend's kernels).

Layouts (T flat tokens; sequence b owns rows cu_seqlen[b]:cu_seqlen[b+1]): x [T, H, P], dt [T, H] (raw: the
kernels apply softplus(dt + dt_bias) and the time-step limits), B/C [T, G, N] (head h reads group h // (H / G)),
A/D/dt_bias [H], state [num_slots, H, P, N]; y [T, H, P] float32.

  ssd_prefill   chunk scan: one program per (sequence, head, P block) walks the sequence in chunks of BLOCK_L
                tokens; inside a chunk the SSD quadratic form (C B^T masked by the cumulative decays) and the
                state's contribution are tensor-core dots; the state [P block, N] stays in registers between chunks
                and is written to the slot at the end. Chunks start at each sequence's own first token, so packed
                batches need no alignment. The kernel's chunk length is its own (the SSD is exact for any).
  ssm_update    one token per sequence (decode): h = exp(dt A) h + dt x B^T, y = h C + D x, in place in the slot.
                Sizes come from shapes only: capturable in a CUDA graph.
Both start from zero where use_initial_states[b] is false (a new prompt), else from the slot's state.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _softplus_clamped(x, lo, hi):
    """torch's softplus (threshold 20) with an accurate log1p, clamped to [lo, hi]."""
    e = tl.exp(tl.minimum(x, 20.0))
    u = 1.0 + e
    log1p = tl.where(u == 1.0, e, tl.log(u) * e / (u - 1.0))
    return tl.minimum(tl.maximum(tl.where(x > 20.0, x, log1p), lo), hi)


@triton.jit
def _ssm_update_kernel(state_ptr, x_ptr, dt_ptr, dtb_ptr, a_ptr, b_ptr, c_ptr, d_ptr, y_ptr, slot_ptr, init_ptr,
                       s_slot, s_head, s_p, x_t, x_h, dt_t, b_t, b_g, c_t, c_g, y_t, y_h, P, N, heads_per_group,
                       lo, hi, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, HAS_D: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs_p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mp, mn = offs_p < P, offs_n < N
    g = h // heads_per_group
    slot = tl.load(slot_ptr + t).to(tl.int64)
    use_init = tl.load(init_ptr + t) != 0
    dt = _softplus_clamped(tl.load(dt_ptr + t * dt_t + h).to(tl.float32) + tl.load(dtb_ptr + h).to(tl.float32),
                           lo, hi)
    dA = tl.exp(dt * tl.load(a_ptr + h).to(tl.float32))
    x = tl.load(x_ptr + t * x_t + h * x_h + offs_p, mask=mp, other=0.0).to(tl.float32)
    bv = tl.load(b_ptr + t * b_t + g * b_g + offs_n, mask=mn, other=0.0).to(tl.float32)
    cv = tl.load(c_ptr + t * c_t + g * c_g + offs_n, mask=mn, other=0.0).to(tl.float32)
    sp = state_ptr + slot * s_slot + h * s_head + offs_p[:, None] * s_p + offs_n[None, :]
    m2 = mp[:, None] & mn[None, :]
    s = tl.where(use_init, tl.load(sp, mask=m2, other=0.0).to(tl.float32), 0.0)
    s = s * dA + (dt * x)[:, None] * bv[None, :]
    tl.store(sp, s.to(state_ptr.dtype.element_ty), mask=m2)
    y = tl.sum(s * cv[None, :], 1)
    if HAS_D:
        y += tl.load(d_ptr + h).to(tl.float32) * x
    tl.store(y_ptr + t * y_t + h * y_h + offs_p, y, mask=mp)


@triton.jit
def _ssd_prefill_kernel(x_ptr, dt_ptr, dtb_ptr, a_ptr, b_ptr, c_ptr, d_ptr, y_ptr, state_ptr, cu_ptr, slot_ptr,
                        init_ptr, s_slot, s_head, s_p, x_t, x_h, dt_t, b_t, b_g, c_t, c_g, y_t, y_h, P, N,
                        heads_per_group, lo, hi, BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr,
                        BLOCK_N: tl.constexpr, HAS_D: tl.constexpr, PREC: tl.constexpr):
    seq = tl.program_id(0)
    h = tl.program_id(1)
    offs_p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    offs_l = tl.arange(0, BLOCK_L)
    mp, mn = offs_p < P, offs_n < N
    g = h // heads_per_group
    start = tl.load(cu_ptr + seq)
    end = tl.load(cu_ptr + seq + 1)
    slot = tl.load(slot_ptr + seq).to(tl.int64)
    use_init = tl.load(init_ptr + seq) != 0
    a_h = tl.load(a_ptr + h).to(tl.float32)
    dtb = tl.load(dtb_ptr + h).to(tl.float32)
    sp = state_ptr + slot * s_slot + h * s_head + offs_p[:, None] * s_p + offs_n[None, :]
    m2 = mp[:, None] & mn[None, :]
    state = tl.where(use_init, tl.load(sp, mask=m2, other=0.0).to(tl.float32), 0.0)  # [BP, BN]
    causal = offs_l[:, None] >= offs_l[None, :]
    last = offs_l == BLOCK_L - 1
    for c0 in range(start, end, BLOCK_L):
        tok = c0 + offs_l
        mt = tok < end
        t64 = tok.to(tl.int64)
        dt = _softplus_clamped(tl.load(dt_ptr + t64 * dt_t + h, mask=mt, other=0.0).to(tl.float32) + dtb, lo, hi)
        dt = tl.where(mt, dt, 0.0)  # padded tokens: no input, no decay
        a_cs = tl.cumsum(dt * a_h, 0)  # [L] log decay from the chunk start
        x = tl.load(x_ptr + t64[:, None] * x_t + h * x_h + offs_p[None, :], mask=mt[:, None] & mp[None, :],
                    other=0.0).to(tl.float32)
        bm = tl.load(b_ptr + t64[:, None] * b_t + g * b_g + offs_n[None, :], mask=mt[:, None] & mn[None, :],
                     other=0.0).to(tl.float32)
        cm = tl.load(c_ptr + t64[:, None] * c_t + g * c_g + offs_n[None, :], mask=mt[:, None] & mn[None, :],
                     other=0.0).to(tl.float32)
        xdt = x * dt[:, None]
        decay = tl.exp(tl.where(causal, a_cs[:, None] - a_cs[None, :], float("-inf")))  # [L, L]
        scores = tl.dot(cm, tl.trans(bm), input_precision=PREC) * decay
        y = tl.dot(scores, xdt, input_precision=PREC)  # within the chunk
        y += tl.exp(a_cs)[:, None] * tl.dot(cm, tl.trans(state), input_precision=PREC)  # the carried state
        if HAS_D:
            y += tl.load(d_ptr + h).to(tl.float32) * x
        tl.store(y_ptr + t64[:, None] * y_t + h * y_h + offs_p[None, :], y, mask=mt[:, None] & mp[None, :])
        a_end = tl.sum(tl.where(last, a_cs, 0.0), 0)
        w = tl.exp(a_end - a_cs)  # decay from each token to the chunk end
        state = state * tl.exp(a_end) + tl.dot(tl.trans(xdt * w[:, None]), bm, input_precision=PREC)
    tl.store(sp, state.to(state_ptr.dtype.element_ty), mask=m2)


def _blocks(P: int, N: int, prefill: bool = False) -> tuple[int, int]:
    """(P block, N block): the whole state row per program; prefill programs also hold B/C chunk tiles [L, N], so
    their P block shrinks with N to stay in registers."""
    block_n = max(16, triton.next_power_of_2(N))
    widest = (32 if block_n >= 128 else 64) if prefill else (64 if block_n <= 128 else 32)
    return max(16, min(widest, triton.next_power_of_2(P))), block_n


def _strides(state, x, dt, B, C, y) -> tuple:
    return (state.stride(0), state.stride(1), state.stride(2), x.stride(0), x.stride(1), dt.stride(0), B.stride(0),
            B.stride(1), C.stride(0), C.stride(1), y.stride(0), y.stride(1))


def _prep(*ts: torch.Tensor) -> list[torch.Tensor]:
    return [t if t.stride(-1) == 1 else t.contiguous() for t in ts]


def ssm_update(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, dt_bias: torch.Tensor, A: torch.Tensor,
               B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None, slots: torch.Tensor,
               use_initial_states: torch.Tensor, time_step_limit, out: torch.Tensor | None = None) -> torch.Tensor:
    """One token per sequence: x [n, H, P], dt [n, H], B/C [n, G, N] -> y [n, H, P] float32 (into `out` if given,
    a contiguous float32 tensor); slots updated."""
    n, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    x, dt, B, C = _prep(x, dt, B, C)
    y = torch.empty(x.shape, dtype=torch.float32, device=x.device) if out is None else out
    if n == 0:
        return y
    bp, bn = _blocks(P, N)
    init = use_initial_states.to(torch.int8)
    _ssm_update_kernel[(n, H, triton.cdiv(P, bp))](
        state, x, dt, dt_bias, A, B, C, D if D is not None else A, y, slots, init, *_strides(state, x, dt, B, C, y),
        P, N, H // G, float(time_step_limit[0]), float(time_step_limit[1]), BLOCK_P=bp, BLOCK_N=bn,
        HAS_D=D is not None, num_warps=4)
    return y


def ssd_prefill(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, dt_bias: torch.Tensor, A: torch.Tensor,
                B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None, cu_seqlen: torch.Tensor, slots: torch.Tensor,
                use_initial_states: torch.Tensor, time_step_limit, out: torch.Tensor | None = None) -> torch.Tensor:
    """Whole sequences (rows cu_seqlen[b]:cu_seqlen[b+1]): x [T, H, P] -> y [T, H, P] float32 (into `out` if
    given); final states written to their slots."""
    T, H, P = x.shape
    G, N = B.shape[1], B.shape[2]
    x, dt, B, C = _prep(x, dt, B, C)
    y = torch.empty(x.shape, dtype=torch.float32, device=x.device) if out is None else out
    nseq = slots.shape[0]
    if T == 0 or nseq == 0:
        return y
    bp, bn = _blocks(P, N, prefill=True)
    block_l = 64 if bn <= 128 else 32
    prec = "ieee" if x.dtype == torch.float32 else "tf32"
    init = use_initial_states.to(torch.int8)
    _ssd_prefill_kernel[(nseq, H, triton.cdiv(P, bp))](
        x, dt, dt_bias, A, B, C, D if D is not None else A, y, state, cu_seqlen, slots, init,
        *_strides(state, x, dt, B, C, y), P, N, H // G, float(time_step_limit[0]), float(time_step_limit[1]),
        BLOCK_L=block_l, BLOCK_P=bp, BLOCK_N=bn, HAS_D=D is not None, PREC=prec, num_warps=8)
    return y
