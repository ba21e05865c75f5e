"""Triton single-token GEMV (kernels/triton/gemv.py): plain, SiLU-and-mul prologue, RMSNorm / add+RMSNorm prologue,
and the triton_*linear ops that dispatch to it for one row and to cuBLAS otherwise."""

from __future__ import annotations

import pytest
import torch

from kernels.triton import activation, fused_ops, gemv, norm, pdl  # noqa: F401 - fused_ops registers the ops

F = torch.nn.functional
AD = torch.ops.auto_deploy


def _reference(mode, x, w, b, nw, r, offset):
    k = w.shape[1]
    if mode == "silu_mul":
        return F.linear(activation.silu_and_mul(x), w, b), None
    if mode == "norm":
        return F.linear(norm.rmsnorm(x, nw, 1e-5, offset), w, b), None
    if mode == "add_norm":
        normed, s = norm.add_rmsnorm(x, r, nw, 1e-5, offset)
        return F.linear(normed, w, b), s
    assert x.shape[-1] == k
    return F.linear(x, w, b), None


def _run(mode, x, w, b, nw, r, offset, config=None):
    kw = {"norm": dict(norm_weight=nw, eps=1e-5, weight_offset=offset),
          "add_norm": dict(norm_weight=nw, residual=r, eps=1e-5, weight_offset=offset),
          "silu_mul": dict(silu_mul=True)}.get(mode, {})
    out = gemv.gemv(x, w, b, config=config, **kw)
    return out if mode == "add_norm" else (out, None)


@pytest.mark.parametrize("mode", ["plain", "silu_mul", "norm", "add_norm"])
@pytest.mark.parametrize("n,k,bias,offset", [(40, 64, False, 0.0), (33, 96, True, 1.0)])  # 96: a ragged K block
def test_gemv_matches_unfused_ops(device, mode, n, k, bias, offset):
    g = torch.Generator().manual_seed(n + k)
    w = torch.randn(n, k, generator=g).to(device)
    b = torch.randn(n, generator=g).to(device) if bias else None
    x = torch.randn(1, 1, 2 * k if mode == "silu_mul" else k, generator=g).to(device)
    r, nw = torch.randn(1, 1, k, generator=g).to(device), torch.randn(k, generator=g).to(device)
    (out, s), (ref, ref_s) = _run(mode, x, w, b, nw, r, offset, config=(8, 64, 2)), _reference(mode, x, w, b, nw, r,
                                                                                               offset)
    assert out.shape == ref.shape == (1, 1, n)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    if mode == "add_norm":
        assert torch.equal(s, ref_s)


def test_gemv_rejects_more_than_one_row(device):
    with pytest.raises(ValueError, match="one row of width 8"):
        gemv.gemv(torch.zeros(2, 8, device=device), torch.zeros(4, 8, device=device))


def _torch_rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


@pytest.mark.parametrize("rows", [1, 3])
def test_linear_ops_dispatch_by_row_count(device, rows, monkeypatch):
    """One row runs the GEMV kernel (once per op), more rows never do; both give the torch formulas' values."""
    calls = []
    real = fused_ops.gemv.gemv
    monkeypatch.setattr(fused_ops.gemv, "gemv", lambda *a, **k: calls.append(k) or real(*a, **k))
    g = torch.Generator().manual_seed(rows)
    w, nw = torch.randn(24, 32, generator=g).to(device), torch.randn(32, generator=g).to(device)
    x, r = torch.randn(1, rows, 32, generator=g).to(device), torch.randn(1, rows, 32, generator=g).to(device)
    gu = torch.randn(1, rows, 64, generator=g).to(device)
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(AD.triton_linear(x, w), x @ w.T, **tol)
    torch.testing.assert_close(AD.triton_silu_mul_linear(gu, w), (F.silu(gu[..., :32]) * gu[..., 32:]) @ w.T, **tol)
    torch.testing.assert_close(AD.triton_rmsnorm_linear(x, nw, 1e-6, 0.0, w), _torch_rmsnorm(x, nw, 1e-6) @ w.T,
                               **tol)
    y, s = AD.triton_add_rmsnorm_linear(x, r, nw, 1e-6, 0.0, w)
    torch.testing.assert_close(y, _torch_rmsnorm(x + r, nw, 1e-6) @ w.T, **tol)
    torch.testing.assert_close(s, x + r, rtol=0, atol=0)
    assert len(calls) == (4 if rows == 1 else 0)
    if rows == 1:  # the fused prologues ran inside the GEMV, not before it
        assert [sorted(k) for k in calls] == [[], ["silu_mul"], ["eps", "norm_weight", "weight_offset"],
                                              ["eps", "norm_weight", "residual", "weight_offset"]]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode,n,k", [("plain", 6144, 4096), ("add_norm", 28672, 4096), ("silu_mul", 4096, 14336),
                                      ("norm", 4096, 4096)])
def test_gpu_bf16_8b_shapes(mode, n, k):
    bf = dict(device="cuda", dtype=torch.bfloat16)
    w, x = torch.randn(n, k, **bf) / 64, torch.randn(1, 1, 2 * k if mode == "silu_mul" else k, **bf)
    r, nw = torch.randn(1, 1, k, **bf), torch.rand(k, **bf) + 0.5
    (out, s), (ref, ref_s) = _run(mode, x, w, None, nw, r, 0.0), _reference(mode, x, w, None, nw, r, 0.0)
    rel = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    assert rel < 1e-2  # the fused norm skips one bf16 rounding of the normalised input
    if mode == "add_norm":
        assert torch.equal(s, ref_s)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_pdl_chain_in_a_cuda_graph_equals_no_pdl(monkeypatch):
    """A chain of GEMVs, each reading the one before (launched with programmatic dependent launch), captured in a
    CUDA graph: every replay gives the chain run without PDL, bit for bit (a missing wait would read stale x)."""
    bf = dict(device="cuda", dtype=torch.bfloat16)
    g = torch.Generator(device="cuda").manual_seed(3)
    ws = [torch.randn(4096, 4096, generator=g, **bf) / 64 for _ in range(6)]
    nw = torch.rand(4096, generator=g, **bf) + 0.5
    x = torch.randn(1, 1, 4096, generator=g, **bf)

    def chain(x):
        for i, w in enumerate(ws):
            x = gemv.gemv(x, w, norm_weight=nw, eps=1e-5) if i % 2 else gemv.gemv(x, w)
        return x

    assert pdl.enabled(torch.cuda.current_device())  # an H200: launched with PDL
    monkeypatch.setenv("AD_TRITON_PDL", "0")
    pdl.enabled.cache_clear()
    want = chain(x)
    monkeypatch.delenv("AD_TRITON_PDL")
    pdl.enabled.cache_clear()
    assert torch.equal(chain(x), want)
    graph = torch.cuda.CUDAGraph()
    chain(x)  # warm-up outside the capture
    with torch.cuda.graph(graph):
        out = chain(x)
    for _ in range(20):
        out.zero_()
        graph.replay()
        assert torch.equal(out, want)


def test_pdl_is_off_in_the_interpreter_and_by_env(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pdl.enabled.cache_clear()
    assert not pdl.enabled(0) and pdl.launch_kwargs(torch.zeros(1)) == {}
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("AD_TRITON_PDL", "0")
    pdl.enabled.cache_clear()
    assert not pdl.enabled(0)
    pdl.enabled.cache_clear()
