"""FP8 linear layers as canonical ops, with plain-torch references (dequantize, then matmul; any device).

  auto_deploy::torch_quant_fp8_linear(x, weight, bias, input_scale, weight_scale)
      weight [N, K] float8_e4m3fn; weight_scale [] (per tensor) or [N] (per output channel), fp32;
      input_scale [] fp32 (static, from the checkpoint) or None (dynamic: one scale per token, amax / 448).
  auto_deploy::torch_quant_fp8_block_linear(x, weight, bias, weight_scale, block_n, block_k)
      weight_scale [ceil(N / block_n), ceil(K / block_k)] fp32 (DeepSeek-V3 / Qwen3-FP8 layout); activations are
      quantized per token and per group of block_k input features (dynamic).

Semantics shared by every backend: a real value is fp8 value * scale. The activation is quantized exactly as a
kernel would (x / scale, clamped to +-448, rounded to e4m3) before the matmul, so kernels and references agree up
to fp32 summation order. Outputs have x's dtype. Helpers for load-time quantization live here too, so transforms,
the model factory and the kernels share one definition.
"""

from __future__ import annotations

from typing import Optional

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
SCALE_EPS = 1e-12  # the smallest amax a scale is computed from (an all-zero row gets a tiny, finite scale)


# --- quantization math ---------------------------------------------------------------------------------------------
def to_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale, clamped to the e4m3 range and rounded (scale broadcasts against x)."""
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)


def token_scales(x: torch.Tensor, group: Optional[int] = None) -> torch.Tensor:
    """Dynamic activation scales: amax / 448 per token [..., 1], or per token and group of `group` features
    [..., K / group] (K must be a multiple of group)."""
    xf = x.float().abs()
    if group is None:
        return xf.amax(-1, keepdim=True).clamp(min=SCALE_EPS) / FP8_MAX
    return xf.unflatten(-1, (-1, group)).amax(-1).clamp(min=SCALE_EPS) / FP8_MAX


def fake_quant_activation(x: torch.Tensor, input_scale: Optional[torch.Tensor], group: Optional[int] = None
                          ) -> torch.Tensor:
    """x rounded through fp8 as a kernel sees it (fp32): static scale, or dynamic per token (and group)."""
    if input_scale is not None:
        return to_fp8(x, input_scale).float() * input_scale
    s = token_scales(x, group)
    if group is None:
        return to_fp8(x, s).float() * s
    xg = x.float().unflatten(-1, (-1, group))
    return (to_fp8(xg, s.unsqueeze(-1)).float() * s.unsqueeze(-1)).flatten(-2)


def expand_block_scales(scale: torch.Tensor, n: int, k: int, block_n: int, block_k: int) -> torch.Tensor:
    """[ceil(N / bn), ceil(K / bk)] block scales -> [N, K] (one scale per weight element)."""
    return scale.repeat_interleave(block_n, 0)[:n].repeat_interleave(block_k, 1)[:, :k]


def dequantize_weight(weight: torch.Tensor, scale: torch.Tensor, block: Optional[tuple[int, int]] = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """fp8 weight [N, K] and its scale (scalar, [N], [N, 1] or block) -> real values in `dtype`."""
    w = weight.float()
    if block is not None:
        return (w * expand_block_scales(scale.float(), *w.shape, *block)).to(dtype)
    s = scale.float()
    return (w * (s.reshape(-1, 1) if s.numel() > 1 else s.reshape(()))).to(dtype)


def quantize_weight(w: torch.Tensor, granularity: str, block: Optional[tuple[int, int]] = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """A real weight [N, K] -> (fp8 weight, scale): granularity "tensor" (scale []), "channel" (scale [N]) or
    "block" (scale [ceil(N / bn), ceil(K / bk)]); scale = amax / 448 over each group."""
    wf = w.detach().float()
    if granularity == "tensor":
        scale = wf.abs().amax().clamp(min=SCALE_EPS) / FP8_MAX
        return to_fp8(wf, scale), scale
    if granularity == "channel":
        scale = wf.abs().amax(1).clamp(min=SCALE_EPS) / FP8_MAX
        return to_fp8(wf, scale[:, None]), scale
    if granularity == "block" and block is not None:
        n, k = wf.shape
        bn, bk = block
        padded = wf.new_zeros(-(-n // bn) * bn, -(-k // bk) * bk)
        padded[:n, :k] = wf
        blocks = padded.reshape(padded.shape[0] // bn, bn, padded.shape[1] // bk, bk)
        scale = blocks.abs().amax((1, 3)).clamp(min=SCALE_EPS) / FP8_MAX
        return to_fp8(wf, expand_block_scales(scale, n, k, bn, bk)), scale
    raise ValueError(f"unknown weight granularity {granularity!r} (block {block})")


def requantize_to_max_scale(weights: list[torch.Tensor], scales: list[torch.Tensor]
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor fp8 weights with different scales -> one concatenated fp8 weight (dim 0) with the largest scale
    (each part re-rounded to w * s_i / s_max; the part that already has the largest scale is copied exactly)."""
    s_max = torch.stack([s.float().reshape(()) for s in scales]).max()
    parts = [w if bool(s.float() == s_max) else to_fp8(w.float() * s.float(), s_max) for w, s in zip(weights, scales)]
    return torch.cat([p.view(torch.uint8) for p in parts], 0).view(FP8), s_max


# --- canonical ops -------------------------------------------------------------------------------------------------
@torch.library.custom_op("auto_deploy::torch_quant_fp8_linear", mutates_args=())
def torch_quant_fp8_linear(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                           input_scale: Optional[torch.Tensor], weight_scale: torch.Tensor) -> torch.Tensor:
    """y = fq(x) @ (weight * weight_scale).T + bias: x [..., K] -> [..., N] in x's dtype (see the module doc)."""
    x = fake_quant_activation(input, input_scale)
    y = x @ dequantize_weight(weight, weight_scale).t()
    if bias is not None:
        y = y + bias.float()
    return y.to(input.dtype)


@torch_quant_fp8_linear.register_fake
def _quant_fp8_linear_fake(input, weight, bias, input_scale, weight_scale):
    return input.new_empty(*input.shape[:-1], weight.shape[0])


@torch.library.custom_op("auto_deploy::torch_quant_fp8_block_linear", mutates_args=())
def torch_quant_fp8_block_linear(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                                 weight_scale: torch.Tensor, block_n: int, block_k: int) -> torch.Tensor:
    """Block-scaled FP8 linear: activations per token and per block_k group, weights per block_n x block_k block."""
    k = weight.shape[1]
    pad = -k % block_k
    x = torch.nn.functional.pad(input.float(), (0, pad)) if pad else input.float()
    x = fake_quant_activation(x, None, block_k)[..., :k]
    y = x @ dequantize_weight(weight, weight_scale, (block_n, block_k)).t()
    if bias is not None:
        y = y + bias.float()
    return y.to(input.dtype)


@torch_quant_fp8_block_linear.register_fake
def _quant_fp8_block_linear_fake(input, weight, bias, weight_scale, block_n, block_k):
    return input.new_empty(*input.shape[:-1], weight.shape[0])
