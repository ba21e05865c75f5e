"""Export patch: HF Gated DeltaNet layers (Qwen3-Next's linear attention) run through our canonical ops.

HF's forward pads the prompt to its chunk size and branches on its cache classes (the export pins the sequence
length). Under this patch each layer runs a cache-free forward with the same math:

    q, k, v, z, b, a = fix_query_key_value_ordering(in_proj_qkvz(h), in_proj_ba(h))
    qkv = auto_deploy::torch_causal_conv1d(cat(q, k, v), conv1d.weight, conv1d.bias, "silu")
    g = -exp(A_log) * softplus(a + dt_bias);  beta = sigmoid(b)
    o = auto_deploy::torch_gated_delta_rule(q, k, v, g, beta, None, True)     # q/k L2-normalised inside
    out = out_proj(auto_deploy::torch_rmsnorm_gated(o, z, norm.weight, eps, head_v_dim, True))  # per value head

The classes it applies to are listed in `autodeploy_cli/export/hf_mixers.py`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from autodeploy_cli.export.hf_mixers import gated_norm_args
from autodeploy_cli.export.library.hf_mamba2_to_torch_ssm import conv_activation, patch_forwards
from autodeploy_cli.export.patches import register_export_patch


def _gated_deltanet_forward(self: nn.Module, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    from autodeploy_cli.ops import load_ops

    load_ops()
    b, s, _ = hidden_states.shape
    q, k, v, z, beta_in, a = self.fix_query_key_value_ordering(self.in_proj_qkvz(hidden_states),
                                                              self.in_proj_ba(hidden_states))
    qkv = torch.cat([t.reshape(b, s, -1) for t in (q, k, v)], dim=-1)
    act = conv_activation(self)
    qkv = torch.ops.auto_deploy.torch_causal_conv1d(qkv, self.conv1d.weight, self.conv1d.bias, act)
    if act is None and getattr(self, "activation", None) is not None:
        from transformers.activations import ACT2FN

        qkv = ACT2FN[self.activation](qkv)
    q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
    q = q.reshape(b, s, -1, self.head_k_dim)
    k = k.reshape(b, s, -1, self.head_k_dim)
    v = v.reshape(b, s, -1, self.head_v_dim)
    g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias)
    o = torch.ops.auto_deploy.torch_gated_delta_rule(q, k, v, g, beta_in.sigmoid(), None, True)
    o, z = o.reshape(-1, self.head_v_dim), z.reshape(-1, self.head_v_dim)
    norm = gated_norm_args(self.norm)
    o = self.norm(o, z) if norm is None else torch.ops.auto_deploy.torch_rmsnorm_gated(o, z, self.norm.weight, *norm)
    return self.out_proj(o.reshape(b, s, -1))


@register_export_patch("hf_gated_deltanet_to_torch_delta_rule",
                       "HF Gated DeltaNet layers (Qwen3-Next) export as torch_causal_conv1d + torch_gated_delta_rule, "
                       "without HF's cache classes")
@contextlib.contextmanager
def hf_gated_deltanet_to_torch_delta_rule(model: nn.Module) -> Iterator[None]:
    with patch_forwards(model, "gated_deltanet", _gated_deltanet_forward):
        yield
