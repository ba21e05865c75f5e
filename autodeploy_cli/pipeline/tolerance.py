"""How far `ad build --verify` lets the built model's logits be from HF's, derived from what the step computes.

The metric of every row is max|ours - ref| / max|ref| over the probe's logits. Both sides hold the same weights;
they differ in op order (fused kernels, GEMM tiling, paged attention's blockwise softmax, gathered LM head) and,
with a quantized KV cache or quantized weights, in what is stored. The bound is the largest of the terms that apply.

Parameter dtype (u = unit roundoff of the dtype):
- float32 (u = 6e-8): every reordered reduction differs by ~sqrt(k) u relative (k = reduction length <= 1e4), i.e.
  ~1e-5 at worst per op; a few ops per layer feed the residual stream and the LM head reads it once. 1e-4 is ~10x
  that bound for the tiny models and ~3x for 32 layers; measured: 1e-7 to 5e-6 on the registry's families.
- bfloat16 (u = 3.9e-3): each matmul, norm and activation rounds its output once per side, and the rounding points
  differ (fused ops skip one); a pre-norm residual stream carries ~u per layer of relative error into the head,
  where the logit differences of two independent roundings reach a few u: 3e-2 ~ 8u.
- float16 (u = 4.9e-4): the same count as bf16 but with a 8x smaller u, plus overflow-safe accumulation differences
  in softmax: 2e-2 (~40u; float16 models are rare and their activations large, so the head amplifies more).
A row over the float32 bound right after insert_cached_attention is not rounding: the cached graph runs the probe's
sequences back to back ([1, T]), so anything that mixes tokens outside a cached form leaks between them. LFM2's short
convolutions measured 1.2e-7 with one sequence and 2.8e-4 with two (5e-4 for LFM2-MoE): a real difference, which
`require_cached_forms` now refuses at build time; the bound stays.
KV cache dtype (only where the cache stores K/V):
- fp8 e4m3 (u = 2^-4 = 6.25e-2 per stored element): scores q.k carry <= u relative error per key and the output is
  a convex combination of V rows (error <= u, ~u/sqrt(context) on average); the attention branch adds that to a
  residual stream whose other terms are exact, so the logits move by a fraction of u: 0.1 (1.6u) bounds it
  (measured 4.4e-2 to 4.8e-2 on the tiny default model); a corrupted cache errs by O(1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PARAM_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 2e-2}
KV_TOLERANCE = {"fp8": 0.1}


@dataclass(frozen=True)
class Tolerance:
    bound: float
    reason: str  # which term set the bound (shown in the report next to every row)


def tolerance_for(param_dtype: torch.dtype, kv_dtype: str = "auto", cached: bool = False) -> Tolerance:
    """The bound for a row: the parameter dtype's, or the KV cache's once the graph stores K/V (the larger)."""
    bound = PARAM_TOLERANCE.get(param_dtype, 3e-2)
    reason = f"{str(param_dtype).replace('torch.', '')} parameters"
    kv = KV_TOLERANCE.get(kv_dtype)
    if cached and kv is not None and kv > bound:
        bound, reason = kv, f"{kv_dtype} KV cache"
    return Tolerance(bound, reason)
