"""auto_deploy::torch_rmsnorm_gated against the HF gated norms it stands for (bit for bit, fp32 and bf16), and the
version shim that reads their group size."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.export.hf_mixers import gated_norm_args
from autodeploy_cli.ops import load_ops

nemotron = pytest.importorskip("transformers.models.nemotron_h.modeling_nemotron_h")
qwen3_next = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")
load_ops()
op = torch.ops.auto_deploy.torch_rmsnorm_gated


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mamba2_form_matches_hf(dtype):
    norm = nemotron.NemotronHRMSNormGated(64, group_size=16, eps=1e-5).to(dtype)
    norm.weight.data = torch.randn(64).to(dtype)
    x, gate = torch.randn(3, 5, 64), torch.randn(3, 5, 64).to(dtype)  # x: the SSM's float32 output
    args = gated_norm_args(norm)
    assert args == (1e-5, 16, False)
    want = norm(x, gate)
    got = op(x, gate, norm.weight, *args)
    assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qwen3_next_form_matches_hf(dtype):
    norm = qwen3_next.Qwen3NextRMSNormGated(16, eps=1e-6).to(dtype)
    norm.weight.data = torch.randn(16).to(dtype)
    x, gate = torch.randn(7, 16).to(dtype), torch.randn(7, 16).to(dtype)
    args = gated_norm_args(norm)
    assert args == (1e-6, 16, True)
    want = norm(x, gate)
    got = op(x, gate, norm.weight, *args)
    assert got.dtype == want.dtype and torch.equal(got, want)


def test_a_norm_without_group_size_is_one_group_and_unknown_norms_are_left_alone():
    class MambaRMSNormGated(torch.nn.Module):  # transformers 5.17's Bamba / Mamba2 norm: no group_size
        def __init__(self):
            super().__init__()
            self.weight, self.variance_epsilon = torch.nn.Parameter(torch.ones(32)), 1e-6

    assert gated_norm_args(MambaRMSNormGated()) == (1e-6, 32, False)
    assert gated_norm_args(torch.nn.LayerNorm(8)) is None
