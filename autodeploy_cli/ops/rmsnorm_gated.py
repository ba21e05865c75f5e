"""auto_deploy::torch_rmsnorm_gated: the gated RMSNorm after a Mamba2 / Gated DeltaNet mixer (per group of channels).

    x [..., h], gate [..., h], weight [h]; statistics per group of `group_size` channels, in float32
    norm_before_gate=False (Mamba2 mixers): y = weight * rms_norm(x * silu(gate)).to(x.dtype)
    norm_before_gate=True  (Qwen3-Next):    y = (weight * rms_norm(x).to(x.dtype)) * silu(gate), cast to x.dtype
The result dtype is what HF computes: promote(weight, x) for the Mamba2 form, x's dtype for the Qwen3-Next form.
Sharding: groups are per head block, so the op splits with the heads (group_size divides the per-rank width).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _group_norm(xf: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    *prefix, h = xf.shape
    g = xf.view(*prefix, h // group_size, group_size)
    return (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)).view(*prefix, h)


@torch.library.custom_op("auto_deploy::torch_rmsnorm_gated", mutates_args=())
def torch_rmsnorm_gated(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float, group_size: int,
                        norm_before_gate: bool = False) -> torch.Tensor:
    if norm_before_gate:
        y = weight * _group_norm(x.float(), group_size, eps).to(x.dtype)
        return (y * F.silu(gate.float())).to(x.dtype)
    return weight * _group_norm(x.float() * F.silu(gate.float()), group_size, eps).to(x.dtype)


@torch_rmsnorm_gated.register_fake
def _fake(x, gate, weight, eps, group_size, norm_before_gate=False):
    dtype = x.dtype if norm_before_gate else torch.promote_types(weight.dtype, x.dtype)
    return x.new_empty(x.shape, dtype=dtype)
