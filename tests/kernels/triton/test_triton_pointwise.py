"""Triton RMSNorm, fused add+RMSNorm, RoPE (q and k, shared cos/sin cache) and SiLU-and-mul vs torch references.
The bf16 RoPE is also held to HF's own bf16 RoPE, both against float64 (issue 22)."""

from __future__ import annotations

import pytest
import torch

from kernels.triton import activation, norm, rope
from tests.tiny_models import tiny_hf_config

LLAMA3 = dict(head_dim=32, max_position_embeddings=8192,
              rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                original_max_position_embeddings=1024, rope_theta=500000.0))


def _ref_rmsnorm(x, w, eps):
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def _ref_rope(x, positions, inv_freq, interleaved, rot):
    freqs = positions.float()[:, None] * inv_freq.float()[None]  # [T, rot/2]
    xr, tail = x[..., :rot], x[..., rot:]
    if interleaved:
        xc = torch.view_as_complex(xr.float().reshape(*xr.shape[:-1], -1, 2))
        out = torch.view_as_real(xc * torch.polar(torch.ones_like(freqs), freqs)[:, None]).flatten(-2)
        return torch.cat([out.to(x.dtype), tail], -1)
    emb = torch.cat([freqs, freqs], -1)[:, None]
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    return torch.cat([xr * cos + _rotate_half(xr) * sin, tail], -1)


def _rel(a, b):
    return ((a.float().cpu() - b.float().cpu()).norm() / b.float().cpu().norm()).item()


@pytest.mark.parametrize("hidden", [16, 24])
def test_rmsnorm(device, hidden):
    x = torch.randn(5, 3, hidden, device=device)
    w = torch.randn(hidden, device=device)
    assert _rel(norm.rmsnorm(x, w, 1e-6), _ref_rmsnorm(x, w, 1e-6)) < 1e-6


def test_add_rmsnorm_returns_norm_and_sum(device):
    x, r = torch.randn(7, 32, device=device), torch.randn(7, 32, device=device)
    w = torch.randn(32, device=device)
    y, s = norm.add_rmsnorm(x, r, w, 1e-5)
    assert torch.allclose(s, x + r)
    assert _rel(y, _ref_rmsnorm(x + r, w, 1e-5)) < 1e-6


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("rot", [16, 8])  # full and partial rotary
def test_rope_qk(device, interleaved, rot):
    T, d = 6, 16
    q, k = torch.randn(T, 4, d, device=device), torch.randn(T, 2, d, device=device)
    positions = torch.tensor([0, 1, 2, 7, 3, 30], device=device)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot, 2, device=device).float() / rot))
    cache = rope.build_cos_sin_cache(inv_freq, 64)
    yq, yk = rope.rope_qk(q, k, positions, cache, interleaved=interleaved)
    assert _rel(yq, _ref_rope(q, positions, inv_freq, interleaved, rot)) < 1e-5
    assert _rel(yk, _ref_rope(k, positions, inv_freq, interleaved, rot)) < 1e-5


def test_rope_accepts_bsnd_inputs(device):
    q, k = torch.randn(2, 3, 4, 16, device=device), torch.randn(2, 3, 2, 16, device=device)
    positions = torch.arange(3, device=device).repeat(2, 1)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 16, 2, device=device).float() / 16))
    yq, yk = rope.rope_qk(q, k, positions, rope.build_cos_sin_cache(inv_freq, 8))
    ref = _ref_rope(q.reshape(6, 4, 16), positions.reshape(-1), inv_freq, False, 16).reshape(q.shape)
    assert yq.shape == q.shape and yk.shape == k.shape and _rel(yq, ref) < 1e-5


def _rms_rel(out, ref):
    return ((out.double() - ref).norm() / ref.norm()).item()


def _max_rel(out, ref):
    return ((out.double() - ref).abs().max() / ref.abs().max()).item()


def _llama3_case(device, tokens):
    """q [1, T, 4, 32], k [1, T, 2, 32] (bf16) at positions up to 4095 of a Llama-3-scaled RoPE; HF's bf16 and fp32
    cos/sin for them, and float64 references of both rotations."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    emb = LlamaRotaryEmbedding(tiny_hf_config("llama", **LLAMA3)).to(device)
    g = torch.Generator().manual_seed(22)
    q = torch.randn(1, tokens, 4, 32, generator=g).to(device, torch.bfloat16)
    k = torch.randn(1, tokens, 2, 32, generator=g).to(device, torch.bfloat16)
    pos = torch.cat([torch.tensor([0, 4095]), torch.randint(1, 4095, (tokens - 2,), generator=g)])[None].to(device)
    freqs = pos[0].double()[:, None] * emb.inv_freq.double()[None]
    e = torch.cat([freqs, freqs], -1)[None]
    c64, s64 = e.cos() * emb.attention_scaling, e.sin() * emb.attention_scaling
    refs = apply_rotary_pos_emb(q.double(), k.double(), c64, s64, unsqueeze_dim=2)
    hf = apply_rotary_pos_emb(q, k, *emb(q, pos), unsqueeze_dim=2)  # HF's bf16 RoPE: bf16 tables and products
    fp32 = emb(q.float(), pos)
    ideal = [y.bfloat16() for y in apply_rotary_pos_emb(q.float(), k.float(), *fp32, unsqueeze_dim=2)]
    return q, k, pos, emb.inv_freq, fp32, refs, hf, ideal


def _assert_no_worse_than_hf(outs, refs, hf, ideal):
    for out, ref, h, best in zip(outs, refs, hf, ideal):
        assert out.dtype == torch.bfloat16
        assert _rms_rel(out, ref) <= _rms_rel(h, ref) and _max_rel(out, ref) <= _max_rel(h, ref)
        # fp32 from fp32 tables, one rounding: as close as that (1% for a different fused multiply-add order)
        assert _rms_rel(out, ref) <= 1.01 * _rms_rel(best, ref)


def _check_llama3_bf16(device, tokens):
    q, k, pos, inv_freq, (cos, sin), refs, hf, ideal = _llama3_case(device, tokens)
    _assert_no_worse_than_hf(rope.rope_qk_cos_sin(q, k, cos, sin), refs, hf, ideal)
    cache = rope.build_cos_sin_cache(inv_freq, 4096)  # the position-indexed path, same numbers
    _assert_no_worse_than_hf(rope.rope_qk(q, k, pos, cache), refs, hf, ideal)


def test_rope_bf16_llama3_no_worse_than_hf(device):
    """Issue 22: the fused bf16 RoPE (head_dim 32, Llama-3 scaled) was less accurate than HF's eager bf16 RoPE."""
    _check_llama3_bf16(device, 96)


@pytest.mark.parametrize("inter", [8, 12])
def test_silu_and_mul(device, inter):
    x = torch.randn(4, 2 * inter, device=device)
    ref = torch.nn.functional.silu(x[:, :inter]) * x[:, inter:]
    assert _rel(activation.silu_and_mul(x), ref) < 1e-6


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bf16_8b_shapes():
    x = torch.randn(37, 4096, device="cuda", dtype=torch.bfloat16)
    r = torch.randn_like(x)
    w = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
    assert _rel(norm.rmsnorm(x, w, 1e-5), _ref_rmsnorm(x, w, 1e-5)) < 1e-2
    y, s = norm.add_rmsnorm(x, r, w, 1e-5)
    assert torch.equal(s, x + r) and _rel(y, _ref_rmsnorm(x + r, w, 1e-5)) < 1e-2
    g = torch.randn(37, 2 * 14336, device="cuda", dtype=torch.bfloat16)
    ref = torch.nn.functional.silu(g[:, :14336]) * g[:, 14336:]
    assert _rel(activation.silu_and_mul(g), ref) < 1e-2
    q, k = torch.randn(37, 32, 128, device="cuda", dtype=torch.bfloat16), torch.randn(37, 8, 128, device="cuda",
                                                                                      dtype=torch.bfloat16)
    pos = torch.randint(0, 4096, (37,), device="cuda")
    inv_freq = 1.0 / (500000 ** (torch.arange(0, 128, 2, device="cuda").float() / 128))
    yq, yk = rope.rope_qk(q, k, pos, rope.build_cos_sin_cache(inv_freq, 4096))
    assert _rel(yq, _ref_rope(q, pos, inv_freq, False, 128)) < 1e-2
    assert _rel(yk, _ref_rope(k, pos, inv_freq, False, 128)) < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_rope_bf16_llama3_no_worse_than_hf():
    _check_llama3_bf16("cuda", 4096)
