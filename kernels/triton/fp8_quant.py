"""Many-token FP8 linear layers: activation quantization in Triton (with the norm / SiLU-and-mul prologue fused
in), then `torch._scaled_mm` on the FP8 tensor cores.

quantize_rows: one program per token: the input row is formed like the unfused ops (plain, silu(gate) * up, or the
RMSNorm after a residual add), its scale is the static per-tensor one or amax / 448 of the row, and the FP8 row is
written at a width padded to 16 (zeros beyond K), as scaled_mm wants. quantize_groups: per token and per group of
`group` features (block-scaled checkpoints).

scaled_mm: torch._scaled_mm with a tensor-wise scale pair when both scales are scalars, else row-wise (per-token x
per-channel, bf16 output, the scalar expanded). Bias is added after the GEMM (row-wise scaling takes none).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels.triton.fp8_gemv import _activation
from kernels.triton.fp8_round import interpreting, to_fp8

FP8 = torch.float8_e4m3fn


@triton.jit
def _quant_rows_kernel(x_ptr, r_ptr, sum_ptr, nw_ptr, is_ptr, q_ptr, qs_ptr, K, K_OUT, stride_x, stride_r,
                       stride_sum, stride_q, eps, offset, SILU_MUL: tl.constexpr, NORM: tl.constexpr,
                       HAS_RES: tl.constexpr, GEMMA: tl.constexpr, STATIC: tl.constexpr, BLOCK_K: tl.constexpr,
                       INTERP: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row, r_row = x_ptr + row * stride_x, r_ptr + row * stride_r
    rstd = 1.0
    if NORM:
        sq = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs = k0 + tl.arange(0, BLOCK_K)
            m = offs < K
            x = tl.load(x_row + offs, mask=m, other=0.0)
            if HAS_RES:
                x = (x + tl.load(r_row + offs, mask=m, other=0.0)).to(x_ptr.dtype.element_ty)
                tl.store(sum_ptr + row * stride_sum + offs, x, mask=m)
            xf = x.to(tl.float32)
            sq += xf * xf
        rstd = 1.0 / tl.sqrt(tl.sum(sq, 0) / K + eps)
    if STATIC:
        scale = tl.load(is_ptr).to(tl.float32)
    else:
        amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs = k0 + tl.arange(0, BLOCK_K)
            a = _activation(x_row, r_row, nw_ptr, offs, offs < K, K, rstd, offset, SILU_MUL, NORM, HAS_RES, GEMMA)
            amax = tl.maximum(amax, tl.abs(a))
        scale = tl.maximum(tl.max(amax, 0), 1e-12) / 448.0
        tl.store(qs_ptr + row, scale)
    for k0 in range(0, K_OUT, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        m = offs < K
        a = _activation(x_row, r_row, nw_ptr, offs, m, K, rstd, offset, SILU_MUL, NORM, HAS_RES, GEMMA)
        q = to_fp8(tl.where(m, a / scale, 0.0), INTERP)
        tl.store(q_ptr + row * stride_q + offs, q, mask=offs < K_OUT)


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def quantize_rows(x: torch.Tensor, input_scale: Optional[torch.Tensor], k_out: Optional[int] = None,
                  silu_mul: bool = False, norm_weight: Optional[torch.Tensor] = None,
                  residual: Optional[torch.Tensor] = None, eps: float = 1e-6, weight_offset: float = 0.0):
    """x [..., K] (gate|up [..., 2K] with silu_mul) -> (q [M, k_out] fp8, scale [] static or [M, 1] dynamic, sum of
    x + residual or None). norm_weight: the RMSNorm (after the residual add) is the quantized input."""
    x2 = _rows(x)
    m, k = x2.shape[0], x2.shape[1] // 2 if silu_mul else x2.shape[1]
    k_out = k_out or k
    q = torch.empty(m, k_out, dtype=FP8, device=x.device)
    scales = torch.empty(m, 1, dtype=torch.float32, device=x.device) if input_scale is None else None
    r2 = _rows(residual) if residual is not None else x2
    total = torch.empty(m, k, dtype=x.dtype, device=x.device) if residual is not None else None
    if m:
        block = min(1024, max(16, triton.next_power_of_2(k_out)))
        _quant_rows_kernel[(m,)](
            x2, r2, total if total is not None else x2, norm_weight if norm_weight is not None else x2,
            input_scale if input_scale is not None else q, q, scales if scales is not None else q, k, k_out,
            x2.stride(0), r2.stride(0), total.stride(0) if total is not None else 0, q.stride(0), float(eps),
            float(weight_offset), SILU_MUL=silu_mul, NORM=norm_weight is not None, HAS_RES=residual is not None,
            GEMMA=weight_offset != 0.0, STATIC=input_scale is not None, BLOCK_K=block, INTERP=interpreting(),
            num_warps=4)
    out_total = total.view(x.shape) if total is not None else None
    return q, (input_scale if input_scale is not None else scales), out_total


@triton.jit
def _quant_groups_kernel(x_ptr, q_ptr, qs_ptr, K, G, stride_x, stride_q, stride_s, GROUP: tl.constexpr,
                         INTERP: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    offs = g * GROUP + tl.arange(0, GROUP)
    m = offs < K
    a = tl.load(x_ptr + row * stride_x + offs, mask=m, other=0.0).to(tl.float32)
    scale = tl.maximum(tl.max(tl.abs(a), 0), 1e-12) / 448.0
    tl.store(q_ptr + row * stride_q + offs, to_fp8(a / scale, INTERP))
    tl.store(qs_ptr + row * stride_s + g, scale)


def quantize_groups(x: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] -> (q [M, G * group] fp8, zeros past K; scales [M, G]) with G = ceil(K / group), dynamic."""
    x2 = _rows(x)
    m, k = x2.shape
    g = triton.cdiv(k, group)
    q = torch.empty(m, g * group, dtype=FP8, device=x.device)
    s = torch.empty(m, g, dtype=torch.float32, device=x.device)
    if m:
        _quant_groups_kernel[(m, g)](x2, q, s, k, g, x2.stride(0), q.stride(0), s.stride(0), GROUP=group,
                                     INTERP=interpreting(), num_warps=1 if group <= 256 else 4)
    return q, s


# --- scaled_mm ----------------------------------------------------------------------------------------------------
_SCALED_MM_OK: dict[str, bool] = {}


def _emulated_mm(q, w, a_scale, w_scale, out_dtype):
    # torch builds without a CPU _scaled_mm: the same math in fp32
    y = (q.float() * a_scale.float()) @ (w.float() * w_scale.float().reshape(-1, 1) if w_scale.numel() > 1
                                         else w.float() * w_scale.float()).t()
    return y.to(out_dtype)


def scaled_mm(q: torch.Tensor, weight: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor,
              out_dtype: torch.dtype, bias: Optional[torch.Tensor] = None, fast_accum: bool = False) -> torch.Tensor:
    """q [M, Kp] fp8 @ weight [Np, Kp]^T fp8 with a_scale [] or [M, 1] and w_scale [] or [Np] -> [M, Np]."""
    tensorwise = a_scale.numel() == 1 and w_scale.numel() == 1
    kind = q.device.type
    y = None
    if _SCALED_MM_OK.get(kind, True):
        try:
            if tensorwise:
                y = torch._scaled_mm(q, weight.t(), scale_a=a_scale.reshape(()).float(),
                                     scale_b=w_scale.reshape(()).float(), out_dtype=out_dtype,
                                     use_fast_accum=fast_accum)
            else:
                sa = a_scale.float().reshape(-1, 1).expand(q.shape[0], 1).contiguous()
                sb = w_scale.float().reshape(1, -1).expand(1, weight.shape[0]).contiguous()
                # CUDA's row-wise kernels write bf16 only
                row_dtype = out_dtype if kind == "cpu" else torch.bfloat16
                y = torch._scaled_mm(q, weight.t(), scale_a=sa, scale_b=sb, out_dtype=row_dtype,
                                     use_fast_accum=fast_accum).to(out_dtype)
            _SCALED_MM_OK[kind] = True
        except (RuntimeError, NotImplementedError):
            if kind == "cuda":
                raise
            _SCALED_MM_OK[kind] = False  # this torch has no CPU _scaled_mm
    if y is None:
        y = _emulated_mm(q, weight, a_scale, w_scale, out_dtype)
    return y if bias is None else y + bias.to(y.dtype)
