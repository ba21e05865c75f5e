"""Triton depthwise causal conv1d over per-sequence conv states (the `triton` causal_conv backend's kernels).

Layouts: x [T, C] (the flat batch, sequence b owns rows cu_seqlen[b]:cu_seqlen[b+1]), weight [C, K], bias [C],
conv_state [num_slots, C, K - 1] (the K - 1 inputs before each sequence's first new token, oldest first).

  causal_conv_varlen  one launch for the outputs (token blocks x channel blocks per sequence), then one for the
                      new states (after every output read the old ones). Sequence b starts from its slot's state
                      when use_initial_states[b], else from zeros.
  A decode batch (one token per sequence) is one launch with one token block that also writes the new states (the
  slot's taps 1..K-1); every size comes from shapes (max_q_len is passed by the caller), so it can be captured in a
  CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _conv_kernel(x_ptr, w_ptr, b_ptr, state_ptr, out_ptr, cu_ptr, slot_ptr, init_ptr, C, stride_x, stride_o,
                 stride_ss, stride_sc, K: tl.constexpr, KP: tl.constexpr, BLOCK_T: tl.constexpr,
                 BLOCK_C: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, STORE_STATE: tl.constexpr):
    seq = tl.program_id(0)
    start = tl.load(cu_ptr + seq)
    end = tl.load(cu_ptr + seq + 1)
    t0 = start + tl.program_id(1) * BLOCK_T
    if t0 >= end:
        return
    slot = tl.load(slot_ptr + seq).to(tl.int64)
    use_init = tl.load(init_ptr + seq) != 0
    offs_t = t0 + tl.arange(0, BLOCK_T)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mc = offs_c < C
    mt = offs_t < end
    acc = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)
    for j in tl.static_range(K):
        w = tl.load(w_ptr + offs_c * K + j, mask=mc, other=0.0).to(tl.float32)
        src = offs_t - (K - 1) + j  # input position of tap j
        in_seq = src >= start
        xv = tl.load(x_ptr + src[:, None].to(tl.int64) * stride_x + offs_c[None, :],
                     mask=(mt & in_seq)[:, None] & mc[None, :], other=0.0).to(tl.float32)
        sidx = (K - 1) + (src - start)  # before the sequence: the state column
        sv = tl.load(state_ptr + slot * stride_ss + offs_c[None, :] * stride_sc + sidx[:, None],
                     mask=(mt & (~in_seq))[:, None] & mc[None, :], other=0.0).to(tl.float32)
        sv = tl.where(use_init, sv, 0.0)  # a new sequence starts from zeros (its slot may be stale)
        acc += (xv + sv) * w[None, :]
        if STORE_STATE:
            if j >= 1:  # one token per sequence: the new state is taps 1..K-1 (each stored after its slot was read)
                tl.store(state_ptr + slot * stride_ss + offs_c[None, :] * stride_sc + (j - 1),
                         (xv + sv).to(state_ptr.dtype.element_ty), mask=mt[:, None] & mc[None, :])
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_c, mask=mc, other=0.0).to(tl.float32)[None, :]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(out_ptr + offs_t[:, None].to(tl.int64) * stride_o + offs_c[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=mt[:, None] & mc[None, :])


@triton.jit
def _state_kernel(x_ptr, state_ptr, cu_ptr, slot_ptr, init_ptr, C, stride_x, stride_ss, stride_sc,
                  K: tl.constexpr, KP: tl.constexpr, BLOCK_C: tl.constexpr):
    """new state = the last K - 1 inputs of the sequence (from the old state where the sequence is shorter)."""
    seq = tl.program_id(0)
    start = tl.load(cu_ptr + seq)
    end = tl.load(cu_ptr + seq + 1)
    slot = tl.load(slot_ptr + seq).to(tl.int64)
    use_init = tl.load(init_ptr + seq) != 0
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mc = offs_c < C
    j = tl.arange(0, KP)
    mj = j < K - 1
    src = end - (K - 1) + j
    in_seq = src >= start
    xv = tl.load(x_ptr + src[None, :].to(tl.int64) * stride_x + offs_c[:, None],
                 mask=mc[:, None] & (mj & in_seq)[None, :], other=0.0)
    sidx = (K - 1) + (src - start)
    base = state_ptr + slot * stride_ss + offs_c[:, None] * stride_sc
    sv = tl.load(base + sidx[None, :], mask=mc[:, None] & (mj & (~in_seq))[None, :], other=0.0)
    sv = tl.where(use_init, sv, tl.zeros_like(sv))
    new = tl.where(in_seq[None, :], xv.to(state_ptr.dtype.element_ty), sv)
    tl.store(base + j[None, :], new, mask=mc[:, None] & mj[None, :])


def causal_conv_varlen(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv_state: torch.Tensor,
                       cu_seqlen: torch.Tensor, slots: torch.Tensor, use_initial_states: torch.Tensor,
                       max_q_len: int, silu: bool) -> torch.Tensor:
    """x [T, C] -> out [T, C] (x's dtype) for the sequences of cu_seqlen; their conv-state slots are updated."""
    T, C = x.shape
    K = weight.shape[-1]
    w = weight.reshape(C, K)
    w = w if w.is_contiguous() else w.contiguous()
    x = x if x.stride(-1) == 1 else x.contiguous()
    out = torch.empty_like(x)
    B = slots.shape[0]
    if T == 0 or B == 0:
        return out
    block_t = min(64, triton.next_power_of_2(max(1, max_q_len)))
    block_c = 64 if block_t > 1 else 256
    kp = triton.next_power_of_2(max(K - 1, 1))
    init = use_initial_states.to(torch.int8) if use_initial_states.dtype == torch.bool else use_initial_states
    grid = (B, triton.cdiv(max(1, max_q_len), block_t), triton.cdiv(C, block_c))
    fused = max_q_len == 1 and T == B  # decode: each program updates its own slot, no second launch
    _conv_kernel[grid](x, w, bias if bias is not None else w, conv_state, out, cu_seqlen, slots, init, C, x.stride(0),
                       out.stride(0), conv_state.stride(0), conv_state.stride(1), K=K, KP=kp, BLOCK_T=block_t,
                       BLOCK_C=block_c, HAS_BIAS=bias is not None, SILU=silu, STORE_STATE=fused, num_warps=4)
    if K > 1 and not fused:
        _state_kernel[(B, triton.cdiv(C, 128))](x, conv_state, cu_seqlen, slots, init, C, x.stride(0),
                                                 conv_state.stride(0), conv_state.stride(1), K=K, KP=kp,
                                                 BLOCK_C=128, num_warps=4)
    return out
