"""Rounding to FP8 e4m3 inside Triton kernels (the activation quantizers, the FP8 KV-cache write)."""

from __future__ import annotations

import os

import triton
import triton.language as tl


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def to_fp8(v, INTERP: tl.constexpr):
    """v (fp32) clamped to +-448 and rounded to e4m3 (nearest, ties to even)."""
    v = tl.minimum(tl.maximum(v, -448.0), 448.0)
    if INTERP:  # Triton 3.9's interpreter drops the carry when rounding up the mantissa (1.97 -> 1.0): round here
        a = tl.abs(v)
        step = tl.exp2(tl.maximum(tl.floor(tl.log2(tl.maximum(a, 1.0e-30))), -6.0) - 3.0)
        t = a / step
        f = tl.floor(t)
        d = t - f
        up = (d > 0.5) | ((d == 0.5) & ((f - 2.0 * tl.floor(f * 0.5)) == 1.0))
        r = (f + tl.where(up, 1.0, 0.0)) * step
        v = tl.where(v < 0, -r, r)
    return v.to(tl.float8e4nv)
