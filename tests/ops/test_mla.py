"""torch_mla: equals HF's expanded-K/V MLA (per-head K = [kv_b_proj(latent)_nope, kpe], V = kv_b_proj(latent)_v,
then attention), in both layouts, causal bottom-right for a query suffix; the fake keeps shapes."""

from __future__ import annotations

import torch

from autodeploy_cli.ops import load_ops
from autodeploy_cli.ops.attention import torch_attention
from autodeploy_cli.ops.mla import split_kv_b_proj

load_ops()
MLA = torch.ops.auto_deploy.torch_mla
N, NOPE, ROPE, R, V = 4, 16, 8, 32, 12


def _inputs(b=2, s=5, s_kv=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    q_nope = torch.randn(b, s, N, NOPE, generator=g)
    q_pe = torch.randn(b, s, N, ROPE, generator=g)
    ckv = torch.randn(b, s_kv, R, generator=g)
    kpe = torch.randn(b, s_kv, 1, ROPE, generator=g)
    w = torch.randn(N * (NOPE + V), R, generator=g) / R ** 0.5
    return q_nope, q_pe, ckv, kpe, w


def _expanded(q_nope, q_pe, ckv, kpe, w, scale):
    """HF's formula: kv_b_proj up-projects the latent to per-head k_nope and v; k = [k_nope, kpe]."""
    b, s_kv = ckv.shape[:2]
    kv = (ckv @ w.T).view(b, s_kv, N, NOPE + V)
    k = torch.cat([kv[..., :NOPE], kpe.expand(b, s_kv, N, ROPE)], dim=-1)
    q = torch.cat([q_nope, q_pe], dim=-1)
    return torch_attention(q, k, kv[..., NOPE:], scale=scale, layout="bsnd")


def test_equals_expanded_attention_with_scale_and_default_scale():
    x = _inputs()
    torch.testing.assert_close(MLA(*x, True, 0.3, "bsnd"), _expanded(*x, 0.3))
    torch.testing.assert_close(MLA(*x), _expanded(*x, (NOPE + ROPE) ** -0.5))


def test_query_suffix_is_causal_bottom_right_and_bnsd_layout():
    x = _inputs(s=2, s_kv=6)  # 2 new tokens after 4 cached ones
    want = _expanded(*x, 0.25)
    torch.testing.assert_close(MLA(*x, True, 0.25, "bsnd"), want)
    q_nope, q_pe, ckv, kpe, w = x
    got = MLA(q_nope.transpose(1, 2), q_pe.transpose(1, 2), ckv, kpe.transpose(1, 2), w, True, 0.25, "bnsd")
    torch.testing.assert_close(got, want.transpose(1, 2))
    # the last query sees every key: changing the first key changes it
    ckv2 = ckv.clone()
    ckv2[:, 0] += 1.0
    assert not torch.allclose(MLA(q_nope, q_pe, ckv2, kpe, w, True, 0.25)[:, -1], want[:, -1])


def test_split_kv_b_proj_is_per_head_nope_then_v():
    w = torch.arange(N * (NOPE + V) * R, dtype=torch.float32).view(N * (NOPE + V), R)
    w_uk, w_uv = split_kv_b_proj(w, N, NOPE)
    assert w_uk.shape == (N, NOPE, R) and w_uv.shape == (N, V, R)
    torch.testing.assert_close(w_uk[1], w[NOPE + V: 2 * NOPE + V])
    torch.testing.assert_close(w_uv[1], w[2 * NOPE + V: 2 * (NOPE + V)])
    assert w_uk.data_ptr() == w.data_ptr()  # views


def test_fake_keeps_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        x = [mode.from_tensor(t) for t in _inputs(b=3, s=2, s_kv=7)]
        assert MLA(*x).shape == (3, 2, N, V)
