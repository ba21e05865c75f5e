"""The `torch` SSM backend: Mamba2 SSD over per-sequence state slots in plain torch (CPU and GPU), the reference.

    auto_deploy::torch_cached_ssm(hidden_states [1, T, H, P], A, B [1, T, G, N], C, D, dt [1, T, H], dt_bias,
                                  batch_info_host, cu_seqlen_host, use_initial_states, slots, ssm_state,
                                  time_step_limit, chunk_size) -> y [1, T, H, P] float32
    ssm_state [num_slots, H, P, N] (kv_cache_config.mamba_ssm_cache_dtype), updated in place.

One token per sequence (T == B): one vectorised recurrence step, no host reads (CUDA-graph safe). Otherwise each
prefill sequence runs the chunked SSD from its slot's state (or zero) and writes its final state back; the decode
sequences after them take the one-step path.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from autodeploy_cli.ops.cache import CacheConfig, StateSpec
from autodeploy_cli.ops.mixer_interface import MixerDescriptor, MixerNodeInfo, register_mixer_backend, state_dtype
from autodeploy_cli.ops.ssm import discretize_dt, ssd_chunked, ssm_step
from kernels.torch.mixer_metadata import masked_states, mixer_prepare_metadata, prefill_spans


def _decode(x, dt, A, B, C, D, use_initial, slots, state) -> torch.Tensor:
    """x [n, H, P], dt [n, H] discretised, B/C [n, G, N] -> y [n, H, P]; state slots updated."""
    y, h = ssm_step(masked_states(state, slots, use_initial), x, dt, A, B, C, D)
    state.index_copy_(0, slots, h.to(state.dtype))
    return y


@torch.library.custom_op("auto_deploy::torch_cached_ssm", mutates_args=("ssm_state",))
def torch_cached_ssm(
    hidden_states: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor],
    dt: torch.Tensor, dt_bias: torch.Tensor, batch_info_host: torch.Tensor, cu_seqlen_host: torch.Tensor,
    use_initial_states: torch.Tensor, slots: torch.Tensor, ssm_state: torch.Tensor, time_step_limit: List[float],
    chunk_size: int,
) -> torch.Tensor:
    x, Bf, Cf = hidden_states[0], B[0], C[0]
    dtd = discretize_dt(dt[0], dt_bias, time_step_limit)  # [T, H]
    T, nb = x.shape[0], slots.shape[0]
    if T == nb:
        return _decode(x, dtd, A, Bf, Cf, D, use_initial_states, slots, ssm_state).unsqueeze(0)
    out = x.new_empty(x.shape, dtype=torch.float32)
    spans = prefill_spans(batch_info_host, cu_seqlen_host)
    for i, (s0, s1) in enumerate(spans):
        init = masked_states(ssm_state, slots[i: i + 1], use_initial_states[i: i + 1])
        y, h = ssd_chunked(x[None, s0:s1], dtd[None, s0:s1], A, Bf[None, s0:s1], Cf[None, s0:s1], D, chunk_size,
                           init)
        out[s0:s1] = y[0]
        ssm_state.index_copy_(0, slots[i: i + 1], h.to(ssm_state.dtype))
    p, npt = len(spans), spans[-1][1] if spans else 0
    if npt < T:
        out[npt:] = _decode(x[npt:], dtd[npt:], A, Bf[npt:], Cf[npt:], D, use_initial_states[p:], slots[p:],
                            ssm_state)
    return out.unsqueeze(0)


@torch_cached_ssm.register_fake
def _fake(hidden_states, A, B, C, D, dt, dt_bias, batch_info_host, cu_seqlen_host, use_initial_states, slots,
          ssm_state, time_step_limit, chunk_size):
    return hidden_states.new_empty(hidden_states.shape, dtype=torch.float32)


class SsmDescriptorBase(MixerDescriptor):
    """What every SSM backend shares: the inputs taken from torch_ssm and the state layout [slots, H, P, N]."""

    tensor_inputs = ("hidden_states", "A", "B", "C", "D", "dt", "dt_bias")

    @classmethod
    def prepare_metadata(cls, cache_config: CacheConfig):
        return mixer_prepare_metadata()

    @classmethod
    def state_initializers(cls, info: MixerNodeInfo, cache_config: CacheConfig) -> dict[str, StateSpec]:
        d = info.dims
        shape = (d["heads"], d["head_dim"], d["state_size"])
        return {"ssm_state": StateSpec(shape, state_dtype(info, cache_config))}


@register_mixer_backend("ssm", "torch")
class TorchCachedSsm(SsmDescriptorBase):
    @classmethod
    def cached_op(cls):
        return torch.ops.auto_deploy.torch_cached_ssm.default
