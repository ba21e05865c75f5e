"""Triton token sampler: one program per logit row, no sort, no host sync (auto_deploy::triton_sample_tokens).

The semantics are auto_deploy::torch_sample_tokens' (autodeploy_cli/ops/sampling.py). Instead of sorting the
vocabulary, the top-k and top-p thresholds are found by bisection over the logits' bit patterns, read as ordered
integer keys: 17 passes over the row for bf16 logits (16-bit keys), 33 for float32. A row of 128k bf16 logits is
256 KB, so every pass after the first reads it from L2. The draw is one inverse-CDF scan with u hashed from
(seed, counter) in the kernel, so a step launches this one kernel whatever its mix of greedy and sampled rows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from autodeploy_cli.ops.sampling import MIN_TEMPERATURE


@triton.jit
def _keys(row_ptr, offs, V, KEY16: tl.constexpr):
    """(values fp32, ordered int32 keys) of one chunk, from one load; lanes past V get -inf and the smallest key."""
    m = offs < V
    raw = tl.load(row_ptr + offs, mask=m, other=float("-inf"))
    if KEY16:  # bf16: the 16-bit pattern is the key, so the bisections need 17 steps
        b = raw.to(tl.int16, bitcast=True).to(tl.int32)
        key = tl.where(b < 0, b ^ 0x7FFF, b)
    else:
        b = raw.to(tl.float32).to(tl.int32, bitcast=True)
        key = tl.where(b < 0, b ^ 0x7FFFFFFF, b)
    return raw.to(tl.float32), tl.where(m, key, -2147483647 - 1)


@triton.jit
def _kept_mass(row_ptr, V, vmax, scale, threshold, BLOCK: tl.constexpr, KEY16: tl.constexpr):
    """sum(exp((x - max) / T), key >= threshold) over the row (lane-wise partial sums, one reduction at the end)."""
    total = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        x, key = _keys(row_ptr, start + tl.arange(0, BLOCK), V, KEY16)
        total += tl.where(key >= threshold, tl.exp2((x - vmax) * scale), 0.0)
    return tl.sum(total, 0)


@triton.jit
def _count_at_least(row_ptr, V, threshold, BLOCK: tl.constexpr, KEY16: tl.constexpr):
    n = tl.zeros([BLOCK], tl.int32)
    for start in range(0, V, BLOCK):
        _, key = _keys(row_ptr, start + tl.arange(0, BLOCK), V, KEY16)
        n += (key >= threshold).to(tl.int32)
    return tl.sum(n, 0)


@triton.jit
def _uniform(seed, counter):
    """u in (0, 1): splitmix64 of seed + (counter + 1) * golden ratio, top 24 bits (as ops.sampling)."""
    z = seed.to(tl.uint64, bitcast=True) + (counter.to(tl.uint64, bitcast=True) + 1) * 0x9E3779B97F4A7C15
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    z = z ^ (z >> 31)
    return ((z >> 40).to(tl.float32) + 0.5) * (1.0 / 16777216.0)


@triton.jit
def _sample_kernel(logits_ptr, stride, temp_ptr, topk_ptr, topp_ptr, seed_ptr, counter_ptr, out_ptr, V,
                   MIN_T: tl.constexpr, BLOCK: tl.constexpr, KEY16: tl.constexpr, ITERS: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + r * stride
    # pass 1: max (and its first index), smallest and largest key, lane-wise, reduced once
    lane_max = tl.full([BLOCK], float("-inf"), tl.float32)
    lane_arg = tl.zeros([BLOCK], tl.int32)
    lane_kmin = tl.full([BLOCK], 2147483647, tl.int32)
    lane_kmax = tl.full([BLOCK], -2147483647 - 1, tl.int32)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x, key = _keys(row_ptr, offs, V, KEY16)
        lane_arg = tl.where(x > lane_max, offs, lane_arg)  # strictly greater: each lane keeps its first maximum
        lane_max = tl.maximum(lane_max, x)
        lane_kmin = tl.minimum(lane_kmin, tl.where(offs < V, key, 2147483647))
        lane_kmax = tl.maximum(lane_kmax, key)
    vmax = tl.max(lane_max, 0)
    amax = tl.min(tl.where(lane_max == vmax, lane_arg, V), 0)
    kmin = tl.min(lane_kmin, 0)
    kmax = tl.max(lane_kmax, 0)
    temp = tl.load(temp_ptr + r)
    token = amax.to(tl.int64)
    if temp >= MIN_T:
        scale = 1.4426950408889634 / temp
        top_k = tl.load(topk_ptr + r)
        top_p = tl.load(topp_ptr + r)
        # top-k: the largest key with at least k keys at or above it (bisection keeps count(lo) >= k > count(hi))
        lo = kmin.to(tl.int64)
        if (top_k > 0) & (top_k < V):
            hi = kmax.to(tl.int64) + 1
            for _ in range(ITERS):
                if hi - lo > 1:  # the keys span fewer bits than ITERS allows: the last passes are skipped
                    mid = lo + (hi - lo) // 2
                    ok = _count_at_least(row_ptr, V, mid.to(tl.int32), BLOCK, KEY16) >= top_k
                    lo = tl.where(ok, mid, lo)
                    hi = tl.where(ok, hi, mid)
        # top-p: the largest key whose kept mass still reaches top_p of the top-k set's
        if top_p < 1.0:
            goal = top_p * _kept_mass(row_ptr, V, vmax, scale, lo.to(tl.int32), BLOCK, KEY16)
            hi = kmax.to(tl.int64) + 1
            for _ in range(ITERS):
                if hi - lo > 1:
                    mid = lo + (hi - lo) // 2
                    ok = _kept_mass(row_ptr, V, vmax, scale, mid.to(tl.int32), BLOCK, KEY16) >= goal
                    lo = tl.where(ok, mid, lo)
                    hi = tl.where(ok, hi, mid)
        threshold = lo.to(tl.int32)
        target = _uniform(tl.load(seed_ptr + r), tl.load(counter_ptr + r)) * _kept_mass(
            row_ptr, V, vmax, scale, threshold, BLOCK, KEY16)
        # inverse CDF: the first token whose running kept mass exceeds target
        running = tl.zeros((), tl.float32)
        drawn = tl.full((), V, tl.int32)
        for start in range(0, V, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            x, key = _keys(row_ptr, offs, V, KEY16)
            e = tl.where(key >= threshold, tl.exp2((x - vmax) * scale), 0.0)
            cum = tl.cumsum(e, 0) + running
            drawn = tl.minimum(drawn, tl.min(tl.where(cum > target, offs, V), 0))
            running += tl.sum(e, 0)
        token = tl.where(drawn < V, drawn, amax).to(tl.int64)
    tl.store(out_ptr + r, token)


def sample_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                  seed: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """logits [R, V] -> tokens [R] int64 (see autodeploy_cli.ops.sampling for the parameters)."""
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    rows, vocab = logits.shape
    out = torch.empty(rows, dtype=torch.int64, device=logits.device)
    if rows == 0:
        return out
    key16 = logits.dtype == torch.bfloat16
    _sample_kernel[(rows,)](logits, logits.stride(0), temperature, top_k, top_p, seed, counter, out, vocab,
                            MIN_T=MIN_TEMPERATURE, BLOCK=2048, KEY16=key16, ITERS=17 if key16 else 33,
                            num_warps=8)
    return out


@torch.library.custom_op("auto_deploy::triton_sample_tokens", mutates_args=())
def triton_sample_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                         seed: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    return sample_tokens(logits, temperature, top_k, top_p, seed, counter)


@triton_sample_tokens.register_fake
def _sample_tokens_fake(logits, temperature, top_k, top_p, seed, counter):
    return logits.new_empty(logits.shape[0], dtype=torch.int64)
