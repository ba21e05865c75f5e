"""torch_rmsnorm: equals HF's Llama RMSNorm (weight_offset 0) and Gemma RMSNorm (weight_offset 1)."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.ops import load_ops

load_ops()
RMSNORM = torch.ops.auto_deploy.torch_rmsnorm


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 0.0), (torch.bfloat16, 0.0)])
def test_llama_form(dtype, tol):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(32, eps=1e-5).to(dtype)
    norm.weight.data = torch.rand(32, dtype=dtype) + 0.5
    x = torch.randn(2, 5, 32, dtype=dtype) * 3
    got = RMSNORM(x, norm.weight, 1e-5, 0.0)
    assert got.dtype == dtype
    torch.testing.assert_close(got, norm(x), rtol=tol, atol=tol)


def test_gemma_one_plus_weight_form():
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm

    norm = GemmaRMSNorm(32, eps=1e-6)
    norm.weight.data = torch.randn(32) * 0.1
    x = torch.randn(3, 4, 2, 32)
    torch.testing.assert_close(RMSNORM(x, norm.weight, 1e-6, 1.0), norm(x), rtol=0, atol=0)


def test_opcheck():
    torch.library.opcheck(RMSNORM.default, (torch.randn(2, 3, 8), torch.rand(8), 1e-6, 0.0),
                          test_utils=("test_schema", "test_faketensor"))
