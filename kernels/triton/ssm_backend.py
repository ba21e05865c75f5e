"""The `triton` SSM backend: our Triton chunk scan (prefill) and state update (decode) behind the mixer interface.

    auto_deploy::triton_cached_ssm(hidden_states [1, T, H, P], A, B, C, D, dt, dt_bias, batch_info_host,
                                   cu_seqlen_host, cu_seqlen, use_initial_states, slots, ssm_state,
                                   time_step_limit, chunk_size) -> y [1, T, H, P] float32

One token per sequence (T == B): the update kernel alone, no host reads (CUDA-graph safe). Otherwise the prefill
sequences go through the chunk scan and the decodes after them through the update kernel. Kernels:
kernels/triton/ssm.py.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from autodeploy_cli.ops.mixer_interface import register_mixer_backend
from kernels.torch.ssm import SsmDescriptorBase
from kernels.triton import ssm as kt


@torch.library.custom_op("auto_deploy::triton_cached_ssm", mutates_args=("ssm_state",))
def triton_cached_ssm(
    hidden_states: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor],
    dt: torch.Tensor, dt_bias: torch.Tensor, batch_info_host: torch.Tensor, cu_seqlen_host: torch.Tensor,
    cu_seqlen: torch.Tensor, use_initial_states: torch.Tensor, slots: torch.Tensor, ssm_state: torch.Tensor,
    time_step_limit: List[float], chunk_size: int,
) -> torch.Tensor:
    x, Bf, Cf, dtf = hidden_states[0], B[0], C[0], dt[0]
    T, nb = x.shape[0], slots.shape[0]
    if T == nb:
        return kt.ssm_update(ssm_state, x, dtf, dt_bias, A, Bf, Cf, D, slots, use_initial_states,
                             time_step_limit).unsqueeze(0)
    p, npt = int(batch_info_host[2]), int(batch_info_host[3])
    y = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    kt.ssd_prefill(ssm_state, x[:npt], dtf[:npt], dt_bias, A, Bf[:npt], Cf[:npt], D, cu_seqlen[: p + 1], slots[:p],
                   use_initial_states[:p], time_step_limit, out=y[:npt])
    if npt < T:
        kt.ssm_update(ssm_state, x[npt:], dtf[npt:], dt_bias, A, Bf[npt:], Cf[npt:], D, slots[p:],
                      use_initial_states[p:], time_step_limit, out=y[npt:])
    return y.unsqueeze(0)


@triton_cached_ssm.register_fake
def _fake(hidden_states, A, B, C, D, dt, dt_bias, batch_info_host, cu_seqlen_host, cu_seqlen, use_initial_states,
          slots, ssm_state, time_step_limit, chunk_size):
    return hidden_states.new_empty(hidden_states.shape, dtype=torch.float32)


@register_mixer_backend("ssm", "triton")
class TritonCachedSsm(SsmDescriptorBase):
    """Triton SSD (GPU; CPU only under TRITON_INTERPRET=1)."""

    metadata_fields = ("batch_info_host", "cu_seqlen_host", "cu_seqlen")

    @classmethod
    def cached_op(cls):
        return torch.ops.auto_deploy.triton_cached_ssm.default
