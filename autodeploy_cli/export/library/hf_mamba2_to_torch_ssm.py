"""Export patch: HF Mamba2 mixers (Mamba2, Nemotron-H, Bamba, GraniteMoeHybrid) run through our canonical ops.

HF's mixer forward pads the prompt to a multiple of the SSD chunk size and branches on its cache classes, so
torch.export pins the sequence length ("Specializations unexpectedly required (seq)"). Under this patch each mixer
instance runs a cache-free forward with the same math:

    zxbcdt = in_proj(h);  z, xBC, dt = split(zxbcdt)
    xBC = auto_deploy::torch_causal_conv1d(xBC, conv1d.weight, conv1d.bias, "silu")
    x, B, C = split(xBC)
    y = auto_deploy::torch_ssm(x, -exp(A_log), B, C, D, dt, dt_bias, time_step_limit, chunk_size)
    out = out_proj(auto_deploy::torch_rmsnorm_gated(y, z, norm.weight, eps, group_size, False))

The classes it applies to are listed in `autodeploy_cli/export/hf_mixers.py` (the version notes live there).
"""

from __future__ import annotations

import contextlib
import types
from typing import Iterator

import torch
from torch import nn

from autodeploy_cli.export.hf_mixers import find_mixers, gated_norm_args
from autodeploy_cli.export.patches import register_export_patch


def conv_activation(module: nn.Module) -> str | None:
    """The activation the conv op applies itself (silu), or None when the model uses another one (applied after)."""
    from autodeploy_cli.ops.causal_conv import ACTIVATIONS

    act = getattr(module, "activation", None)
    return act if act in ACTIVATIONS else None


def _mamba2_forward(self: nn.Module, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    from autodeploy_cli.ops import load_ops

    load_ops()
    b, s, _ = hidden_states.shape
    H, P, G, N = self.num_heads, self.head_dim, self.n_groups, self.ssm_state_size
    dtype = hidden_states.dtype
    zxbcdt = self.in_proj(hidden_states)
    gate, xbc, dt = zxbcdt.split([self.intermediate_size, self.conv_dim, H], dim=-1)
    act = conv_activation(self)
    xbc = torch.ops.auto_deploy.torch_causal_conv1d(xbc, self.conv1d.weight, self.conv1d.bias, act)
    if act is None and getattr(self, "activation", None) is not None:
        xbc = self.act(xbc)
    x, B, C = xbc.split([self.intermediate_size, G * N, G * N], dim=-1)
    y = torch.ops.auto_deploy.torch_ssm(
        x.reshape(b, s, H, P), -torch.exp(self.A_log.float()), B.reshape(b, s, G, N), C.reshape(b, s, G, N),
        self.D, dt, self.dt_bias, [float(t) for t in self.time_step_limit], int(self.chunk_size))
    y = y.reshape(b, s, H * P)
    norm = gated_norm_args(self.norm)
    if norm is None:
        y = self.norm(y, gate)
    else:
        y = torch.ops.auto_deploy.torch_rmsnorm_gated(y, gate, self.norm.weight, *norm)
    return self.out_proj(y.to(dtype))


@contextlib.contextmanager
def patch_forwards(model: nn.Module, kind: str, forward) -> Iterator[list[nn.Module]]:
    """Give every HF mixer of `kind` in `model` the instance forward `forward` while the context is open."""
    patched = list(find_mixers(model, kind))
    for module in patched:
        module.forward = types.MethodType(forward, module)
    try:
        yield patched
    finally:
        for module in patched:
            del module.forward  # back to the class's forward


@register_export_patch("hf_mamba2_to_torch_ssm",
                       "HF Mamba2 mixers (Mamba2, Nemotron-H, Bamba, Granite-4.0-H) export as torch_causal_conv1d + "
                       "torch_ssm, without HF's cache classes")
@contextlib.contextmanager
def hf_mamba2_to_torch_ssm(model: nn.Module) -> Iterator[None]:
    with patch_forwards(model, "mamba2", _mamba2_forward):
        yield
