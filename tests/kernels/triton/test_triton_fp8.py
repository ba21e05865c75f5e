"""Triton FP8 kernels vs the torch reference ops: the single-token GEMV (prologues, static / dynamic activation
scales, per-tensor / per-channel weights), the activation quantizer + scaled_mm, the block-scaled GEMV / GEMM, and
CUDA-graph replay of the ops. CPU runs go through Triton's interpreter at small sizes; `-m gpu` at 8B sizes."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.ops import load_ops
from autodeploy_cli.ops.quant import FP8, quantize_weight, to_fp8
from kernels.triton import activation, fp8_ops, fp8_quant, norm  # noqa: F401 - fp8_ops registers the ops

load_ops()
AD = torch.ops.auto_deploy
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _case(device, n, k, gran, static, rows, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, s = quantize_weight(torch.randn(n, k, generator=g) / 8, gran)
    x = torch.randn(1, rows, k, generator=g)
    r, nw = torch.randn(1, rows, k, generator=g), torch.rand(k, generator=g) + 0.5
    gu = torch.randn(1, rows, 2 * k, generator=g)
    isc = torch.tensor(0.02) if static else None
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return to(q), to(s), cast(x), cast(r), cast(nw), cast(gu), to(isc)


def _reference(mode, x, r, nw, gu, q, s, isc):
    if mode == "silu_mul":
        return AD.torch_quant_fp8_linear(activation.silu_and_mul(gu), q, None, isc, s), None
    if mode == "norm":
        return AD.torch_quant_fp8_linear(norm.rmsnorm(x, nw, 1e-5), q, None, isc, s), None
    if mode == "add_norm":
        normed, total = norm.add_rmsnorm(x, r, nw, 1e-5)
        return AD.torch_quant_fp8_linear(normed, q, None, isc, s), total
    return AD.torch_quant_fp8_linear(x, q, None, isc, s), None


def _w8a16(mode, x, r, nw, gu, q, s, isc):
    """What the default one-token GEMV computes: the unfused activation (not quantized) @ the dequantized weight."""
    from autodeploy_cli.ops.quant import dequantize_weight

    w = dequantize_weight(q, s).to(x.dtype)
    if mode == "silu_mul":
        return torch.nn.functional.linear(activation.silu_and_mul(gu), w), None
    if mode == "norm":
        return torch.nn.functional.linear(norm.rmsnorm(x, nw, 1e-5), w), None
    if mode == "add_norm":
        normed, total = norm.add_rmsnorm(x, r, nw, 1e-5)
        return torch.nn.functional.linear(normed, w), total
    return torch.nn.functional.linear(x, w), None


def _ours(mode, x, r, nw, gu, q, s, isc, n, exact=True):
    tail = (n, False, exact)  # out_features, fast_accum, gemv_act_quant
    if mode == "silu_mul":
        return AD.triton_quant_fp8_silu_mul_linear(gu, q, None, isc, s, *tail), None
    if mode == "norm":
        return AD.triton_quant_fp8_rmsnorm_linear(x, nw, 1e-5, 0.0, q, None, isc, s, *tail), None
    if mode == "add_norm":
        return AD.triton_quant_fp8_add_rmsnorm_linear(x, r, nw, 1e-5, 0.0, q, None, isc, s, *tail)
    return AD.triton_quant_fp8_linear(x, q, None, isc, s, *tail), None


@pytest.mark.parametrize("mode", ["plain", "silu_mul", "norm", "add_norm"])
@pytest.mark.parametrize("gran,static", [("tensor", True), ("channel", False)])
@pytest.mark.parametrize("rows", [1, 5])  # one token: the GEMV; five: the quantizer + scaled_mm
def test_fp8_linear_ops_match_the_reference(device, mode, gran, static, rows):
    q, s, x, r, nw, gu, isc = _case(device, 48, 64, gran, static, rows)
    (out, total), (ref, ref_total) = _ours(mode, x, r, nw, gu, q, s, isc, 48), _reference(mode, x, r, nw, gu, q, s,
                                                                                          isc)
    assert out.shape == ref.shape == (1, rows, 48)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    if mode == "add_norm":
        assert torch.equal(total, ref_total)


@pytest.mark.parametrize("mode", ["plain", "silu_mul", "norm", "add_norm"])
def test_default_gemv_reads_the_activation_unquantized(device, mode):
    q, s, x, r, nw, gu, isc = _case(device, 48, 64, "channel", False, 1)
    (out, total), (ref, ref_total) = _ours(mode, x, r, nw, gu, q, s, isc, 48, exact=False), _w8a16(mode, x, r, nw,
                                                                                                    gu, q, s, isc)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    if mode == "add_norm":
        assert torch.equal(total, ref_total)


def test_quantizer_rounds_like_torch_and_pads(device):
    x = torch.tensor([[1.9733, -0.4898, 0.0055, 300.0, -700.0]]).to(device)  # round-ups that carry, a clamp
    q, scale, _ = fp8_quant.quantize_rows(x, torch.tensor(1.0, device=device), k_out=16)
    assert q.shape == (1, 16) and q[0, 5:].float().abs().sum() == 0
    assert q[0, :5].float().tolist() == to_fp8(x, torch.tensor(1.0, device=device))[0].float().tolist()
    qd, sd, _ = fp8_quant.quantize_rows(x, None)
    assert sd.shape == (1, 1) and sd.item() == pytest.approx(700.0 / 448)


def test_gemv_skips_padded_rows_and_columns(device):
    q, s, x, *_ = _case(device, 40, 40, "channel", False, 1)
    qp = torch.zeros(48, 48, dtype=torch.uint8, device=device)
    qp[:40, :40] = q.view(torch.uint8)
    sp = torch.ones(48, device=device)
    sp[:40] = s
    out = AD.triton_quant_fp8_linear(x, qp.view(FP8), None, None, sp, 40, False, True)
    torch.testing.assert_close(out, AD.torch_quant_fp8_linear(x, q, None, None, s), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 7])
def test_block_linear_matches_the_reference(device, rows):
    g = torch.Generator().manual_seed(rows)
    q, s = quantize_weight(torch.randn(48, 80, generator=g), "block", (16, 32))  # ragged last block in K
    x = torch.randn(1, rows, 80, generator=g).to(device)
    q, s = q.to(device), s.to(device)
    out = AD.triton_quant_fp8_block_linear(x, q, None, s, 16, 32)
    torch.testing.assert_close(out, AD.torch_quant_fp8_block_linear(x, q, None, s, 16, 32), rtol=1e-5, atol=1e-4)


# --- GPU: 8B sizes, bf16 activations, decode and prefill --------------------------------------------------------
def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("mode,n,k", [("add_norm", 6144, 4096), ("plain", 4096, 4096), ("add_norm", 28672, 4096),
                                      ("silu_mul", 4096, 14336)])
@pytest.mark.parametrize("rows,exact", [(1, True), (1, False), (256, True), (2048, True)])
@pytest.mark.parametrize("gran,static", [("tensor", True), ("channel", False)])
def test_gpu_8b_shapes(mode, n, k, rows, exact, gran, static):
    q, s, x, r, nw, gu, isc = _case("cuda", n, k, gran, static, rows, dtype=torch.bfloat16)
    oracle = _reference if exact else _w8a16  # the default one-token GEMV keeps the activation in bf16
    (out, total), (ref, ref_total) = _ours(mode, x, r, nw, gu, q, s, isc, n, exact), oracle(mode, x, r, nw, gu, q,
                                                                                             s, isc)
    # FP8 rounding of the same inputs: only fp32 summation order and bf16 output rounding differ
    assert _rel(out, ref) < 1e-2
    if mode == "add_norm":
        assert torch.equal(total, ref_total)


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("fast", [False, True])
def test_gpu_scaled_mm_fast_accumulation(fast):
    q, s, x, *_ = _case("cuda", 4096, 4096, "channel", False, 512, dtype=torch.bfloat16)
    out = AD.triton_quant_fp8_linear(x, q, None, None, s, 4096, fast, True)
    assert _rel(out, AD.torch_quant_fp8_linear(x, q, None, None, s)) < (2e-2 if fast else 1e-2)


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("rows", [1, 512])
def test_gpu_block_fp8_qwen3_shapes(rows):
    g = torch.Generator().manual_seed(0)
    q, s = quantize_weight(torch.randn(12288, 4096, generator=g) / 64, "block", (128, 128))
    q, s = q.cuda(), s.cuda()
    x = torch.randn(1, rows, 4096, generator=g).to("cuda", torch.bfloat16)
    out = AD.triton_quant_fp8_block_linear(x, q, None, s, 128, 128)
    assert _rel(out, AD.torch_quant_fp8_block_linear(x, q, None, s, 128, 128)) < 1e-2


@pytest.mark.gpu
@GPU
def test_gpu_ops_replay_in_a_cuda_graph():
    q, s, x, r, nw, gu, isc = _case("cuda", 6144, 4096, "tensor", True, 1, dtype=torch.bfloat16)
    qb, sb = (t.cuda() for t in quantize_weight(torch.randn(1024, 4096) / 64, "block", (128, 128)))
    step = lambda: (AD.triton_quant_fp8_add_rmsnorm_linear(x, r, nw, 1e-5, 0.0, q, None, isc, s, 6144, False,  # noqa
                                                           True)[0],
                    AD.triton_quant_fp8_linear(x, q, None, None, s, 6144),
                    AD.triton_quant_fp8_block_linear(x, qb, None, sb, 128, 128))
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = step()
    x.copy_(torch.randn_like(x))  # new input, same buffers
    r.copy_(torch.randn_like(r))
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(outs, step()):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
