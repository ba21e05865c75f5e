"""The `torch` causal-conv backend: depthwise causal conv1d over per-sequence conv states in plain torch.

    auto_deploy::torch_cached_causal_conv1d(input [1, T, C], weight [C, 1, K], bias, batch_info_host, cu_seqlen_host,
                                            use_initial_states, slots, conv_state, activation) -> [1, T, C]
    conv_state [num_slots, C, K - 1] (the model dtype): the last K - 1 inputs of each sequence, updated in place.

One token per sequence (T == B): vectorised, no host reads (CUDA-graph safe); otherwise per prefill sequence.
"""

from __future__ import annotations

from typing import Optional

import torch

from autodeploy_cli.ops.cache import CacheConfig, StateSpec
from autodeploy_cli.ops.causal_conv import conv_with_state
from autodeploy_cli.ops.mixer_interface import MixerDescriptor, MixerNodeInfo, register_mixer_backend
from kernels.torch.mixer_metadata import masked_states, mixer_prepare_metadata, prefill_spans


def _run(x, weight, bias, activation, use_initial, slots, state) -> torch.Tensor:
    """x [n, s, C] for n sequences of s tokens each -> out [n, s, C]; their slots updated."""
    out, new = conv_with_state(x, weight, bias, activation, masked_states(state, slots, use_initial))
    state.index_copy_(0, slots, new.to(state.dtype))
    return out


@torch.library.custom_op("auto_deploy::torch_cached_causal_conv1d", mutates_args=("conv_state",))
def torch_cached_causal_conv1d(
    input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], batch_info_host: torch.Tensor,
    cu_seqlen_host: torch.Tensor, use_initial_states: torch.Tensor, slots: torch.Tensor, conv_state: torch.Tensor,
    activation: Optional[str] = None,
) -> torch.Tensor:
    x = input[0]  # [T, C]
    T, nb = x.shape[0], slots.shape[0]
    if T == nb:
        return _run(x[:, None], weight, bias, activation, use_initial_states, slots, conv_state)[:, 0].unsqueeze(0)
    out = torch.empty_like(x)
    spans = prefill_spans(batch_info_host, cu_seqlen_host)
    for i, (s0, s1) in enumerate(spans):
        out[s0:s1] = _run(x[None, s0:s1], weight, bias, activation, use_initial_states[i: i + 1], slots[i: i + 1],
                          conv_state)[0]
    p, npt = len(spans), spans[-1][1] if spans else 0
    if npt < T:
        out[npt:] = _run(x[npt:, None], weight, bias, activation, use_initial_states[p:], slots[p:], conv_state)[:, 0]
    return out.unsqueeze(0)


@torch_cached_causal_conv1d.register_fake
def _fake(input, weight, bias, batch_info_host, cu_seqlen_host, use_initial_states, slots, conv_state,
          activation=None):
    return torch.empty_like(input)


class CausalConvDescriptorBase(MixerDescriptor):
    """Shared by every causal-conv backend: inputs from torch_causal_conv1d, state [slots, C, K - 1]."""

    tensor_inputs = ("input", "weight", "bias")

    @classmethod
    def prepare_metadata(cls, cache_config: CacheConfig):
        return mixer_prepare_metadata()

    @classmethod
    def state_initializers(cls, info: MixerNodeInfo, cache_config: CacheConfig) -> dict[str, StateSpec]:
        return {"conv_state": StateSpec((info.dims["channels"], info.dims["kernel"] - 1), info.dtype)}


@register_mixer_backend("causal_conv", "torch")
class TorchCachedCausalConv(CausalConvDescriptorBase):
    @classmethod
    def cached_op(cls):
        return torch.ops.auto_deploy.torch_cached_causal_conv1d.default
