"""The `torch` delta-rule backend: (gated) DeltaNet over per-sequence state slots in plain torch, the reference.

    auto_deploy::torch_cached_gated_delta_rule(q [1, T, Hk, K], k, v [1, T, Hv, V], g [1, T, Hv] or None, beta,
                                               batch_info_host, cu_seqlen_host, use_initial_states, slots,
                                               delta_state, scale, use_qk_l2norm) -> o [1, T, Hv, V]
    delta_state [num_slots, Hv, K, V] (kv_cache_config.mamba_ssm_cache_dtype), updated in place.

One token per sequence (T == B): one vectorised step, no host reads (CUDA-graph safe); otherwise each prefill
sequence runs the chunked form from its slot's state and the decodes after them one step.
"""

from __future__ import annotations

from typing import Optional

import torch

from autodeploy_cli.ops.cache import CacheConfig, StateSpec
from autodeploy_cli.ops.delta_rule import delta_chunked, delta_step, prepare_qk
from autodeploy_cli.ops.mixer_interface import MixerDescriptor, MixerNodeInfo, register_mixer_backend, state_dtype
from kernels.torch.mixer_metadata import masked_states, mixer_prepare_metadata, prefill_spans


def _decode(q, k, v, g, beta, use_initial, slots, state) -> torch.Tensor:
    o, S = delta_step(masked_states(state, slots, use_initial), q, k, v, g, beta)
    state.index_copy_(0, slots, S.to(state.dtype))
    return o


@torch.library.custom_op("auto_deploy::torch_cached_gated_delta_rule", mutates_args=("delta_state",))
def torch_cached_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor], beta: torch.Tensor,
    batch_info_host: torch.Tensor, cu_seqlen_host: torch.Tensor, use_initial_states: torch.Tensor,
    slots: torch.Tensor, delta_state: torch.Tensor, scale: Optional[float] = None, use_qk_l2norm: bool = True,
) -> torch.Tensor:
    qh, kh = prepare_qk(q[0], k[0], v.shape[-2], scale, use_qk_l2norm)  # [T, Hv, K]
    vf, bf = v[0], beta[0]
    gf = None if g is None else g[0]
    T, nb = vf.shape[0], slots.shape[0]
    if T == nb:
        return _decode(qh, kh, vf, gf, bf, use_initial_states, slots, delta_state).to(v.dtype).unsqueeze(0)
    out = torch.empty_like(vf)
    spans = prefill_spans(batch_info_host, cu_seqlen_host)
    for i, (s0, s1) in enumerate(spans):
        init = masked_states(delta_state, slots[i: i + 1], use_initial_states[i: i + 1])
        o, S = delta_chunked(qh[None, s0:s1], kh[None, s0:s1], vf[None, s0:s1],
                             None if gf is None else gf[None, s0:s1], bf[None, s0:s1], init)
        out[s0:s1] = o[0].to(v.dtype)
        delta_state.index_copy_(0, slots[i: i + 1], S.to(delta_state.dtype))
    p, npt = len(spans), spans[-1][1] if spans else 0
    if npt < T:
        out[npt:] = _decode(qh[npt:], kh[npt:], vf[npt:], None if gf is None else gf[npt:], bf[npt:],
                            use_initial_states[p:], slots[p:], delta_state).to(v.dtype)
    return out.unsqueeze(0)


@torch_cached_gated_delta_rule.register_fake
def _fake(q, k, v, g, beta, batch_info_host, cu_seqlen_host, use_initial_states, slots, delta_state, scale=None,
          use_qk_l2norm=True):
    return torch.empty_like(v)


class DeltaRuleDescriptorBase(MixerDescriptor):
    """Shared by every delta-rule backend: inputs from torch_gated_delta_rule, state [slots, Hv, K, V]."""

    tensor_inputs = ("q", "k", "v", "g", "beta")

    @classmethod
    def prepare_metadata(cls, cache_config: CacheConfig):
        return mixer_prepare_metadata()

    @classmethod
    def state_initializers(cls, info: MixerNodeInfo, cache_config: CacheConfig) -> dict[str, StateSpec]:
        d = info.dims
        shape = (d["value_heads"], d["key_dim"], d["value_dim"])
        return {"delta_state": StateSpec(shape, state_dtype(info, cache_config))}


@register_mixer_backend("delta_rule", "torch")
class TorchCachedDeltaRule(DeltaRuleDescriptorBase):
    @classmethod
    def cached_op(cls):
        return torch.ops.auto_deploy.torch_cached_gated_delta_rule.default
