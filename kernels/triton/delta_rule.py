"""Triton (gated) delta rule over per-sequence state slots (the `triton` delta_rule backend's kernel).

Layouts (T flat tokens; sequence b owns rows cu_seqlen[b]:cu_seqlen[b+1]): q, k [T, Hk, K], v [T, Hv, V],
g/beta [T, Hv], state [num_slots, Hv, K, V]; o [T, Hv, V] in v's dtype. Value head h reads key head h // (Hv/Hk).

  delta_rule_varlen  one program per (sequence, value head, V block) keeps its state [K, V block] in registers and
                     walks the sequence's tokens (the recurrent form: exact, and one launch for prefill, decode and
                     mixed batches); q and k are L2-normalised in the kernel. The grid depends on shapes only, so a
                     decode batch can be captured in a CUDA graph.

fla-core 0.6.0 (pure Triton) was considered: its gated-delta-rule kernels take per-sequence initial states
without slot indirection, so they would need a gather and a scatter of every state per step; this kernel reads and
writes the slots in place.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _delta_kernel(q_ptr, k_ptr, v_ptr, g_ptr, beta_ptr, o_ptr, state_ptr, cu_ptr, slot_ptr, init_ptr,
                  q_t, q_h, k_t, k_h, v_t, v_h, g_t, b_t, o_t, o_h, s_slot, s_head, s_k, KD, VD, hv_per_hk, scale,
                  BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr, L2NORM: tl.constexpr, HAS_G: tl.constexpr):
    seq = tl.program_id(0)
    hv = tl.program_id(1)
    hk = hv // hv_per_hk
    offs_k = tl.arange(0, BLOCK_K)
    offs_v = tl.program_id(2) * BLOCK_V + tl.arange(0, BLOCK_V)
    mk, mv = offs_k < KD, offs_v < VD
    start = tl.load(cu_ptr + seq).to(tl.int64)  # int64 token offsets: the loop variable indexes large tensors
    end = tl.load(cu_ptr + seq + 1).to(tl.int64)
    slot = tl.load(slot_ptr + seq).to(tl.int64)
    use_init = tl.load(init_ptr + seq) != 0
    sp = state_ptr + slot * s_slot + hv * s_head + offs_k[:, None] * s_k + offs_v[None, :]
    m2 = mk[:, None] & mv[None, :]
    S = tl.where(use_init, tl.load(sp, mask=m2, other=0.0).to(tl.float32), 0.0)  # [BK, BV]
    for t64 in range(start, end):
        q = tl.load(q_ptr + t64 * q_t + hk * q_h + offs_k, mask=mk, other=0.0).to(tl.float32)
        k = tl.load(k_ptr + t64 * k_t + hk * k_h + offs_k, mask=mk, other=0.0).to(tl.float32)
        if L2NORM:
            q = q / tl.sqrt(tl.sum(q * q, 0) + 1e-6)
            k = k / tl.sqrt(tl.sum(k * k, 0) + 1e-6)
        q = q * scale
        v = tl.load(v_ptr + t64 * v_t + hv * v_h + offs_v, mask=mv, other=0.0).to(tl.float32)
        beta = tl.load(beta_ptr + t64 * b_t + hv).to(tl.float32)
        if HAS_G:
            S = S * tl.exp(tl.load(g_ptr + t64 * g_t + hv).to(tl.float32))
        delta = (v - tl.sum(S * k[:, None], 0)) * beta
        S = S + k[:, None] * delta[None, :]
        o = tl.sum(S * q[:, None], 0)
        tl.store(o_ptr + t64 * o_t + hv * o_h + offs_v, o.to(o_ptr.dtype.element_ty), mask=mv)
    tl.store(sp, S.to(state_ptr.dtype.element_ty), mask=m2)


def delta_rule_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor | None, beta: torch.Tensor,
                      state: torch.Tensor, cu_seqlen: torch.Tensor, slots: torch.Tensor,
                      use_initial_states: torch.Tensor, scale: float | None, use_qk_l2norm: bool) -> torch.Tensor:
    """q/k [T, Hk, K], v [T, Hv, V], g/beta [T, Hv] -> o [T, Hv, V]; the sequences' state slots are updated."""
    T, Hk, KD = q.shape
    Hv, VD = v.shape[1], v.shape[2]
    q, k, v, beta = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v, beta))
    o = torch.empty_like(v)
    nseq = slots.shape[0]
    if T == 0 or nseq == 0:
        return o
    block_k = max(16, triton.next_power_of_2(KD))
    block_v = max(16, min(32 if block_k >= 128 else 64, triton.next_power_of_2(VD)))
    init = use_initial_states.to(torch.int8)
    gg = g if g is not None else beta
    _delta_kernel[(nseq, Hv, triton.cdiv(VD, block_v))](
        q, k, v, gg, beta, o, state, cu_seqlen, slots, init, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        v.stride(0), v.stride(1), gg.stride(0), beta.stride(0), o.stride(0), o.stride(1), state.stride(0),
        state.stride(1), state.stride(2), KD, VD, Hv // Hk, KD ** -0.5 if scale is None else float(scale),
        BLOCK_K=block_k, BLOCK_V=block_v, L2NORM=bool(use_qk_l2norm), HAS_G=g is not None, num_warps=4)
    return o
