"""auto_deploy::torch_causal_conv1d: a depthwise causal 1-D convolution over the sequence (Mamba2 / DeltaNet).

    input [b, s, C] (channels last), weight [C, 1, K] (nn.Conv1d's depthwise layout), bias [C] or None,
    activation None | "silu" -> out [b, s, C] in the input's dtype

out[t, c] = act(bias[c] + sum_j weight[c, 0, j] * input[t - K + 1 + j, c]), tokens before the prompt are zero.
A cached backend keeps the last K - 1 inputs of each sequence as its conv state ([C, K - 1] per slot).

Sharding (the `mamba` tp_plan): channels are independent, so weight and bias split along C with the channels of
the projection that feeds the conv (no collective).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

ACTIVATIONS = (None, "silu", "swish")  # what the op applies itself (swish == silu)


def activate(x: torch.Tensor, activation: Optional[str]) -> torch.Tensor:
    if activation is None:
        return x
    if activation in ("silu", "swish"):
        return F.silu(x)
    raise ValueError(f"torch_causal_conv1d: unsupported activation {activation!r} (supported: {ACTIVATIONS})")


def conv_with_state(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: Optional[str],
                    state: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [b, s, C], state [b, C, K-1] (the previous inputs, None = zeros) -> (out [b, s, C], new state [b, C, K-1]).
    Computed in the weight's dtype, like HF's reference."""
    b, s, C = x.shape
    K = weight.shape[-1]
    xt = x.transpose(1, 2).to(weight.dtype)  # [b, C, s]
    prev = xt.new_zeros(b, C, K - 1) if state is None else state.to(weight.dtype)
    full = torch.cat([prev, xt], dim=-1)  # [b, C, K - 1 + s]
    out = F.conv1d(full, weight, bias, groups=C)  # [b, C, s]
    out = activate(out, activation).transpose(1, 2).to(x.dtype)
    return out, full[:, :, full.shape[-1] - (K - 1):]


@torch.library.custom_op("auto_deploy::torch_causal_conv1d", mutates_args=())
def torch_causal_conv1d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
) -> torch.Tensor:
    """Depthwise causal conv over whole prompts: see the module docstring."""
    out, _ = conv_with_state(input, weight, bias, activation)
    return out


@torch_causal_conv1d.register_fake
def _torch_causal_conv1d_fake(input, weight, bias=None, activation=None):
    return torch.empty_like(input)
