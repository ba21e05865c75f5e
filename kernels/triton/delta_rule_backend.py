"""The `triton` delta-rule backend: our recurrent Triton kernel over delta-state slots behind the mixer interface.

    auto_deploy::triton_cached_gated_delta_rule(q [1, T, Hk, K], k, v [1, T, Hv, V], g, beta, cu_seqlen,
                                                use_initial_states, slots, delta_state, scale, use_qk_l2norm)
        -> o [1, T, Hv, V]

One launch for every sequence of the batch (prefill, decode, mixed); nothing is read from the host, so decode steps
can be captured in CUDA graphs. Kernel: kernels/triton/delta_rule.py (why not fla-core: see there).
"""

from __future__ import annotations

from typing import Optional

import torch

from autodeploy_cli.ops.mixer_interface import register_mixer_backend
from kernels.torch.delta_rule import DeltaRuleDescriptorBase
from kernels.triton import delta_rule as kt


@torch.library.custom_op("auto_deploy::triton_cached_gated_delta_rule", mutates_args=("delta_state",))
def triton_cached_gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor], beta: torch.Tensor,
    cu_seqlen: torch.Tensor, use_initial_states: torch.Tensor, slots: torch.Tensor, delta_state: torch.Tensor,
    scale: Optional[float] = None, use_qk_l2norm: bool = True,
) -> torch.Tensor:
    o = kt.delta_rule_varlen(q[0], k[0], v[0], None if g is None else g[0], beta[0], delta_state, cu_seqlen, slots,
                             use_initial_states, scale, use_qk_l2norm)
    return o.unsqueeze(0)


@triton_cached_gated_delta_rule.register_fake
def _fake(q, k, v, g, beta, cu_seqlen, use_initial_states, slots, delta_state, scale=None, use_qk_l2norm=True):
    return torch.empty_like(v)


@register_mixer_backend("delta_rule", "triton")
class TritonCachedDeltaRule(DeltaRuleDescriptorBase):
    """Triton recurrent gated delta rule (GPU; CPU only under TRITON_INTERPRET=1)."""

    metadata_fields = ("cu_seqlen",)

    @classmethod
    def cached_op(cls):
        return torch.ops.auto_deploy.triton_cached_gated_delta_rule.default
