"""The `triton` causal-conv backend: our varlen Triton conv over conv-state slots behind the mixer interface.

    auto_deploy::triton_cached_causal_conv1d(input [1, T, C], weight [C, 1, K], bias, batch_info_host, cu_seqlen,
                                             use_initial_states, slots, conv_state, activation) -> [1, T, C]

One launch for the outputs of every sequence (prefill chunks and decodes alike) and one for the new states. A
decode batch (T == B) reads nothing from the host (CUDA-graph safe). Kernels: kernels/triton/causal_conv.py.
"""

from __future__ import annotations

from typing import Optional

import torch

from autodeploy_cli.ops.mixer_interface import MixerNodeInfo, register_mixer_backend
from kernels.torch.causal_conv import CausalConvDescriptorBase
from kernels.triton import causal_conv as kt


@torch.library.custom_op("auto_deploy::triton_cached_causal_conv1d", mutates_args=("conv_state",))
def triton_cached_causal_conv1d(
    input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], batch_info_host: torch.Tensor,
    cu_seqlen: torch.Tensor, use_initial_states: torch.Tensor, slots: torch.Tensor, conv_state: torch.Tensor,
    activation: Optional[str] = None,
) -> torch.Tensor:
    x = input[0]
    T, nb = x.shape[0], slots.shape[0]
    max_q_len = 1 if T == nb else int(batch_info_host[5])
    out = kt.causal_conv_varlen(x, weight, bias, conv_state, cu_seqlen, slots, use_initial_states, max_q_len,
                                silu=activation in ("silu", "swish"))
    return out.unsqueeze(0)


@triton_cached_causal_conv1d.register_fake
def _fake(input, weight, bias, batch_info_host, cu_seqlen, use_initial_states, slots, conv_state, activation=None):
    return torch.empty_like(input)


@register_mixer_backend("causal_conv", "triton")
class TritonCachedCausalConv(CausalConvDescriptorBase):
    """Triton varlen causal conv (GPU; CPU only under TRITON_INTERPRET=1)."""

    metadata_fields = ("batch_info_host", "cu_seqlen")

    @classmethod
    def cached_op(cls):
        return torch.ops.auto_deploy.triton_cached_causal_conv1d.default

    @classmethod
    def unsupported_reason(cls, info: MixerNodeInfo) -> Optional[str]:
        if info.constants[0] not in (None, "silu", "swish"):
            return f"activation {info.constants[0]!r} (the kernel applies silu or none)"
        return None
