"""torch_rope_*: the reference ops equal the HF/DeepSeek/Meta-Llama formulas; fake impls keep shapes."""

from __future__ import annotations

import pytest
import torch

from autodeploy_cli.ops import load_ops

load_ops()
AD = torch.ops.auto_deploy


def _tables(b, s, d, dtype=torch.float32):
    angles = torch.rand(b, s, d // 2) * 6
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


@pytest.mark.parametrize("layout,udim", [("bnsd", 1), ("bsnd", 2)])
def test_explicit_cos_sin_equals_hf(layout, udim):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q, k = torch.randn(2, 4, 6, 16), torch.randn(2, 2, 6, 16)  # bnsd
    cos, sin = _tables(2, 6, 16)
    want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
    if layout == "bsnd":
        q, k, want_q, want_k = (t.transpose(1, 2) for t in (q, k, want_q, want_k))
    got_q, got_k = AD.torch_rope_with_explicit_cos_sin(q, k, cos, sin, udim)
    torch.testing.assert_close(got_q, want_q, rtol=0, atol=0)
    torch.testing.assert_close(got_k, want_k, rtol=0, atol=0)


def test_qk_interleaving_equals_deepseek():
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import apply_rotary_pos_emb_interleave

    q, k = torch.randn(2, 4, 5, 8), torch.randn(2, 1, 5, 8)
    cos, sin = _tables(2, 5, 8)
    want = apply_rotary_pos_emb_interleave(q, k, cos, sin, unsqueeze_dim=1)
    got = AD.torch_rope_with_qk_interleaving(q, k, cos, sin, 1)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_complex_freqs_equals_meta_llama():
    """Meta-Llama's complex RoPE rotates each interleaved pair (x[2i], x[2i+1]) by the angle of freqs[:, i]; the
    reference here is that rotation in real arithmetic, not a complex product like the op's."""
    xq, xk = torch.randn(2, 5, 4, 8), torch.randn(2, 5, 2, 8)  # bsnd
    theta = torch.rand(5, 4) * 6  # [s, d/2]
    freqs = torch.polar(torch.ones(5, 4), theta)

    def rotate_pairs(x):
        c, s = theta.cos().view(1, 5, 1, 4), theta.sin().view(1, 5, 1, 4)
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(3)

    got_q, got_k = AD.torch_rope_with_complex_freqs(xq, xk, freqs.unsqueeze(0), 2)
    torch.testing.assert_close(got_q, rotate_pairs(xq))
    torch.testing.assert_close(got_k, rotate_pairs(xk))


def test_bfloat16_keeps_dtype_and_shapes():
    """bf16 in, bf16 out, with HF's bf16 RoPE's values (bsnd layout, so unsqueeze_dim 2)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q, k = torch.randn(1, 3, 2, 8, dtype=torch.bfloat16), torch.randn(1, 3, 1, 8, dtype=torch.bfloat16)
    cos, sin = _tables(1, 3, 8, torch.bfloat16)
    out = AD.torch_rope_with_explicit_cos_sin(q, k, cos, sin, 2)
    assert [(t.shape, t.dtype) for t in out] == [(q.shape, torch.bfloat16), (k.shape, torch.bfloat16)]
    want = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
    torch.testing.assert_close(out[0], want[0])
    torch.testing.assert_close(out[1], want[1])


def _qk(n_first: bool):
    if n_first:  # [b, n, s, d]
        return torch.randn(2, 4, 3, 8), torch.randn(2, 2, 3, 8)
    return torch.randn(2, 3, 4, 8), torch.randn(2, 3, 2, 8)


@pytest.mark.parametrize("op,args", [
    ("torch_rope_with_explicit_cos_sin", lambda: (*_qk(False), *_tables(2, 3, 8), 2)),
    ("torch_rope_with_qk_interleaving", lambda: (*_qk(True), *_tables(2, 3, 8), 1)),
    ("torch_rope_with_complex_freqs", lambda: (*_qk(False), torch.polar(torch.ones(1, 3, 4), torch.rand(1, 3, 4)), 2)),
])
def test_opcheck(op, args):
    torch.library.opcheck(getattr(AD, op).default, args(), test_utils=("test_schema", "test_faketensor"))
