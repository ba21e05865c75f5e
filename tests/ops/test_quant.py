"""FP8 quantization math and the canonical FP8 linear ops (torch references, CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from autodeploy_cli.ops import load_ops
from autodeploy_cli.ops.quant import (FP8, FP8_MAX, dequantize_weight, fake_quant_activation, quantize_weight,
                                      requantize_to_max_scale, to_fp8, token_scales)

load_ops()
AD = torch.ops.auto_deploy


def _w(n=24, k=40, seed=0):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("gran,block,shape", [("tensor", None, ()), ("channel", None, (24,)),
                                              ("block", (16, 16), (2, 3))])
def test_quantize_weight_scales_and_round_trip(gran, block, shape):
    w = _w()
    q, s = quantize_weight(w, gran, block)
    assert q.dtype == FP8 and q.shape == w.shape and tuple(s.shape) == shape and s.dtype == torch.float32
    back = dequantize_weight(q, s, block)
    # e4m3 keeps 3 mantissa bits: each value within half a step (1/16 relative) of the original, plus subnormals
    assert ((back - w).abs() <= w.abs() / 16 + s.max() / 64 + 1e-7).all()
    # the largest magnitude of each group maps to 448 exactly
    assert q.float().abs().max().item() == FP8_MAX


def test_to_fp8_clamps_instead_of_overflowing():
    q = to_fp8(torch.tensor([1000.0, -1000.0, 3.0]), torch.tensor(1.0))
    assert q.float().tolist() == [448.0, -448.0, 3.0]


def test_dynamic_activation_scales_per_token_and_group():
    x = torch.tensor([[1.0, -4.0, 2.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    assert token_scales(x).flatten().tolist() == pytest.approx([4 / 448, 1e-12 / 448])
    assert token_scales(x, 2)[0].tolist() == pytest.approx([4 / 448, 2 / 448])
    fq = fake_quant_activation(x, None)
    assert fq[0, 1].item() == -4.0 and torch.equal(fq[1], x[1])  # the amax is exact; zeros stay zeros


@pytest.mark.parametrize("static", [True, False])
@pytest.mark.parametrize("gran", ["tensor", "channel"])
def test_fp8_linear_is_dequantize_then_matmul(static, gran):
    w, b = _w(), torch.randn(24)
    x = torch.randn(2, 3, 40)
    q, s = quantize_weight(w, gran)
    in_scale = torch.tensor(0.02) if static else None
    out = AD.torch_quant_fp8_linear(x, q, b, in_scale, s)
    xs = in_scale if static else x.abs().amax(-1, keepdim=True) / 448
    manual = ((x / xs).clamp(-448, 448).to(FP8).float() * xs) @ dequantize_weight(q, s).t() + b
    torch.testing.assert_close(out, manual, rtol=1e-6, atol=1e-5)
    assert (out - F.linear(x, w, b)).abs().max() < 0.1 * F.linear(x, w, b).abs().max()  # close to the real layer
    assert out.shape == (2, 3, 24) and out.dtype == x.dtype


def test_fp8_linear_keeps_bf16_inputs_bf16():
    q, s = quantize_weight(_w(), "channel")
    out = AD.torch_quant_fp8_linear(torch.randn(3, 40, dtype=torch.bfloat16), q, None, None, s)
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("k", [40, 48])  # 40: the last activation group and weight block are ragged
def test_block_linear_groups_activations_by_block_k(k):
    w = _w(32, k)
    q, s = quantize_weight(w, "block", (16, 16))
    x = torch.randn(5, k)
    out = AD.torch_quant_fp8_block_linear(x, q, None, s, 16, 16)
    pad = torch.nn.functional.pad(x, (0, -k % 16))
    xg = pad.unflatten(-1, (-1, 16))
    sx = xg.abs().amax(-1, keepdim=True) / 448
    xq = ((xg / sx).to(FP8).float() * sx).flatten(-2)[:, :k]
    torch.testing.assert_close(out, xq @ dequantize_weight(q, s, (16, 16)).t(), rtol=1e-6, atol=1e-5)


def test_requantize_to_max_scale_copies_the_largest_exactly():
    a, sa = quantize_weight(_w(8, 16, 1) * 3, "tensor")
    b, sb = quantize_weight(_w(4, 16, 2), "tensor")
    fused, s = requantize_to_max_scale([a, b], [sa, sb])
    assert s == sa and fused.shape == (12, 16)
    assert torch.equal(fused[:8].view(torch.uint8), a.view(torch.uint8))
    back = fused[8:].float() * s
    want = b.float() * sb
    assert ((back - want).abs() <= want.abs() / 16 + s / 64 + 1e-7).all()


def test_opcheck():
    q, s = quantize_weight(_w(), "channel")
    qb, sb = quantize_weight(_w(), "block", (16, 16))
    x = torch.randn(3, 40)
    torch.library.opcheck(AD.torch_quant_fp8_linear.default, (x, q, None, torch.tensor(0.1), s),
                          test_utils=("test_faketensor",))  # test_schema multiplies fp8 on CPU
    torch.library.opcheck(AD.torch_quant_fp8_block_linear.default, (x, qb, None, sb, 16, 16),
                          test_utils=("test_faketensor",))  # test_schema multiplies fp8 on CPU
