"""Triton gated RMSNorm (auto_deploy::triton_rmsnorm_gated, inserted by fuse_gated_rmsnorm): one program per
(row, group), one read of x and gate, one write; rounding as in auto_deploy::torch_rmsnorm_gated (HF's)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gated_kernel(x_ptr, g_ptr, w_ptr, y_ptr, stride_x, stride_g, stride_y, group_size, eps,
                  BLOCK: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * group_size + tl.arange(0, BLOCK)
    m = tl.arange(0, BLOCK) < group_size
    x = tl.load(x_ptr + row * stride_x + offs, mask=m, other=0.0)
    g = tl.load(g_ptr + row * stride_g + offs, mask=m, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=m, other=0.0)
    silu = g * tl.sigmoid(g)
    h = x.to(tl.float32)
    if not NORM_BEFORE_GATE:
        h = h * silu
    normed = h / tl.sqrt(tl.sum(h * h, 0) / group_size + eps)
    normed = normed.to(x_ptr.dtype.element_ty).to(tl.float32)  # HF rounds to the input dtype before the weight
    if NORM_BEFORE_GATE:
        y = (w.to(tl.float32) * normed).to(w.dtype).to(tl.float32) * silu  # weight x normed in their dtype first
    else:
        y = w.to(tl.float32) * normed
    tl.store(y_ptr + row * stride_y + offs, y.to(y_ptr.dtype.element_ty), mask=m)


def _rows(t: torch.Tensor) -> torch.Tensor:
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


@torch.library.custom_op("auto_deploy::triton_rmsnorm_gated", mutates_args=())
def triton_rmsnorm_gated(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float, group_size: int,
                         norm_before_gate: bool = False) -> torch.Tensor:
    dtype = x.dtype if norm_before_gate else torch.promote_types(weight.dtype, x.dtype)
    x2, g2 = _rows(x), _rows(gate)
    y = torch.empty(x2.shape, dtype=dtype, device=x.device)
    if x2.shape[0]:
        block = triton.next_power_of_2(group_size)
        _gated_kernel[(x2.shape[0], x2.shape[1] // group_size)](
            x2, g2, weight, y, x2.stride(0), g2.stride(0), y.stride(0), group_size, eps, BLOCK=block,
            NORM_BEFORE_GATE=bool(norm_before_gate), num_warps=4 if block <= 2048 else 8)
    return y.view(x.shape)


@triton_rmsnorm_gated.register_fake
def _fake(x, gate, weight, eps, group_size, norm_before_gate=False):
    dtype = x.dtype if norm_before_gate else torch.promote_types(weight.dtype, x.dtype)
    return x.new_empty(x.shape, dtype=dtype)
