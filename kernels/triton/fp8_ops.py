"""Triton-backend FP8 linear ops (auto_deploy::triton_quant_fp8_*), inserted by fuse_fp8_linear after load.

Each op picks its kernel by the step's row count: one token -> the FP8 weight-streaming GEMV (prologue and
activation quantization inside); more -> the Triton activation quantizer (same prologue) and torch._scaled_mm
(block-scaled weights: a Triton FP8 GEMM). Weights may be padded to multiples of 16 (scaled_mm's rule);
`out_features` is the real N, and the output is cut back to it.

  triton_quant_fp8_linear(x, w, bias, input_scale, weight_scale, out_features, fast_accum, gemv_act_quant)
  triton_quant_fp8_rmsnorm_linear(x, norm_w, eps, offset, w, bias, input_scale, weight_scale, out_features, fast_accum)
  triton_quant_fp8_add_rmsnorm_linear(x, residual, norm_w, eps, offset, w, ...) -> (y, x + residual)
  triton_quant_fp8_silu_mul_linear(x [.., 2K] gate|up, w, ...)
  triton_quant_fp8_block_linear(x, w, bias, weight_scale, block_n, block_k)
`gemv_act_quant`: the one-token GEMV quantizes its activation like the reference (exact numerics, slower); off, it
reads the activation in its own dtype (see kernels/triton/fp8_gemv.py).
"""

from __future__ import annotations

from typing import Optional

import torch

from autodeploy_cli.ops.quant import torch_quant_fp8_block_linear
from kernels.triton.fp8_block import block_gemm, block_gemv
from kernels.triton.fp8_gemv import fp8_gemv
from kernels.triton.fp8_quant import quantize_rows, scaled_mm

Tensor = torch.Tensor


def _one_row(x: Tensor) -> bool:
    return x.numel() == x.shape[-1]


def _gemm(x: Tensor, q: Tensor, a_scale: Tensor, weight: Tensor, weight_scale: Tensor, bias: Optional[Tensor],
          out_features: int, fast_accum: bool, lead: tuple) -> Tensor:
    y = scaled_mm(q, weight, a_scale, weight_scale, x.dtype, None, fast_accum)
    if y.shape[-1] != out_features:
        y = y[:, :out_features].contiguous()
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.view(*lead, out_features)


@torch.library.custom_op("auto_deploy::triton_quant_fp8_linear", mutates_args=())
def triton_quant_fp8_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], input_scale: Optional[Tensor],
                            weight_scale: Tensor, out_features: int, fast_accum: bool = False,
                            gemv_act_quant: bool = False) -> Tensor:
    if _one_row(x):
        return fp8_gemv(x, weight, weight_scale, input_scale, bias, out_features, act_quant=gemv_act_quant)
    q, a_scale, _ = quantize_rows(x, input_scale, k_out=weight.shape[1])
    return _gemm(x, q, a_scale, weight, weight_scale, bias, out_features, fast_accum, x.shape[:-1])


@torch.library.custom_op("auto_deploy::triton_quant_fp8_silu_mul_linear", mutates_args=())
def triton_quant_fp8_silu_mul_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], input_scale: Optional[Tensor],
                                     weight_scale: Tensor, out_features: int, fast_accum: bool = False,
                                     gemv_act_quant: bool = False) -> Tensor:
    if _one_row(x):
        return fp8_gemv(x, weight, weight_scale, input_scale, bias, out_features, silu_mul=True,
                        act_quant=gemv_act_quant)
    q, a_scale, _ = quantize_rows(x, input_scale, k_out=weight.shape[1], silu_mul=True)
    return _gemm(x, q, a_scale, weight, weight_scale, bias, out_features, fast_accum, x.shape[:-1])


@torch.library.custom_op("auto_deploy::triton_quant_fp8_rmsnorm_linear", mutates_args=())
def triton_quant_fp8_rmsnorm_linear(x: Tensor, norm_weight: Tensor, eps: float, weight_offset: float, weight: Tensor,
                                    bias: Optional[Tensor], input_scale: Optional[Tensor], weight_scale: Tensor,
                                    out_features: int, fast_accum: bool = False,
                                    gemv_act_quant: bool = False) -> Tensor:
    if _one_row(x):
        return fp8_gemv(x, weight, weight_scale, input_scale, bias, out_features, norm_weight=norm_weight, eps=eps,
                        weight_offset=weight_offset, act_quant=gemv_act_quant)
    q, a_scale, _ = quantize_rows(x, input_scale, k_out=weight.shape[1], norm_weight=norm_weight, eps=eps,
                                  weight_offset=weight_offset)
    return _gemm(x, q, a_scale, weight, weight_scale, bias, out_features, fast_accum, x.shape[:-1])


@torch.library.custom_op("auto_deploy::triton_quant_fp8_add_rmsnorm_linear", mutates_args=())
def triton_quant_fp8_add_rmsnorm_linear(x: Tensor, residual: Tensor, norm_weight: Tensor, eps: float,
                                        weight_offset: float, weight: Tensor, bias: Optional[Tensor],
                                        input_scale: Optional[Tensor], weight_scale: Tensor, out_features: int,
                                        fast_accum: bool = False, gemv_act_quant: bool = False
                                        ) -> tuple[Tensor, Tensor]:
    if _one_row(x):
        return fp8_gemv(x, weight, weight_scale, input_scale, bias, out_features, norm_weight=norm_weight,
                        residual=residual, eps=eps, weight_offset=weight_offset, act_quant=gemv_act_quant)
    q, a_scale, total = quantize_rows(x, input_scale, k_out=weight.shape[1], norm_weight=norm_weight,
                                      residual=residual, eps=eps, weight_offset=weight_offset)
    return _gemm(x, q, a_scale, weight, weight_scale, bias, out_features, fast_accum, x.shape[:-1]), total


@torch.library.custom_op("auto_deploy::triton_quant_fp8_block_linear", mutates_args=())
def triton_quant_fp8_block_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], weight_scale: Tensor,
                                  block_n: int, block_k: int) -> Tensor:
    if block_k & (block_k - 1) or block_k < 16:  # the kernels tile by block_k: powers of two only
        return torch_quant_fp8_block_linear(x, weight, bias, weight_scale, block_n, block_k)
    if _one_row(x):
        return block_gemv(x, weight, weight_scale, block_n, block_k, bias)
    return block_gemm(x, weight, weight_scale, block_n, block_k, bias)


def _out(x: Tensor, out_features: int) -> Tensor:
    return x.new_empty(*x.shape[:-1], out_features)


@triton_quant_fp8_linear.register_fake
def _linear_fake(x, weight, bias, input_scale, weight_scale, out_features, fast_accum=False, gemv_act_quant=False):
    return _out(x, out_features)


@triton_quant_fp8_silu_mul_linear.register_fake
def _silu_mul_fake(x, weight, bias, input_scale, weight_scale, out_features, fast_accum=False,
                   gemv_act_quant=False):
    return _out(x, out_features)


@triton_quant_fp8_rmsnorm_linear.register_fake
def _rmsnorm_fake(x, norm_weight, eps, weight_offset, weight, bias, input_scale, weight_scale, out_features,
                  fast_accum=False, gemv_act_quant=False):
    return _out(x, out_features)


@triton_quant_fp8_add_rmsnorm_linear.register_fake
def _add_rmsnorm_fake(x, residual, norm_weight, eps, weight_offset, weight, bias, input_scale, weight_scale,
                      out_features, fast_accum=False, gemv_act_quant=False):
    return _out(x, out_features), torch.empty_like(x)


@triton_quant_fp8_block_linear.register_fake
def _block_fake(x, weight, bias, weight_scale, block_n, block_k):
    return _out(x, weight.shape[0])
