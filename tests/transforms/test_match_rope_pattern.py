"""match_rope_pattern: rotate-half RoPE (HF), the interleaved variant (DeepSeek) and complex frequencies (Meta
Llama) become one torch_rope_* op per q/k pair."""

from __future__ import annotations

import torch
from torch import nn

from autodeploy_cli.ops import load_ops
from tests.transforms.pattern_helpers import (
    count, export_tiny, export_toy, matches, max_rel_err, nodes_of, ops_in, run_transforms,
)

load_ops()
AD = torch.ops.auto_deploy
aten = torch.ops.aten


def _rotate_half(x):
    return torch.cat((-x[..., x.shape[-1] // 2:], x[..., : x.shape[-1] // 2]), dim=-1)


def test_hf_rotate_half_rope_becomes_one_op_per_layer():
    tiny = export_tiny("llama", "eager")
    assert count(tiny.gm, aten.neg.default) == 4
    records, ctx = run_transforms(tiny.gm, ["match_rope_pattern"])
    assert matches(records) == {"match_rope_pattern": 2}
    ropes = nodes_of(tiny.gm, AD.torch_rope_with_explicit_cos_sin.default)
    assert len(ropes) == 2 and [n.args[4] for n in ropes] == [1, 1]
    assert [(n.args[0].meta["val"].shape[1], n.args[1].meta["val"].shape[1]) for n in ropes] == [(4, 2)] * 2  # q, k
    assert count(tiny.gm, aten.neg.default) == 0 and count(tiny.gm, aten.cat.default) == 1  # only cos/sin's cat
    assert max_rel_err(tiny.gm, tiny.ref, ctx) < 1e-5

    records, _ = run_transforms(tiny.gm, ["match_rope_pattern"])
    assert matches(records) == {"match_rope_pattern": 0}


def test_phi3_partial_rotary_pairs_q_and_k_and_drops_the_empty_pass_through():
    tiny = export_tiny("phi3", "eager")
    records, ctx = run_transforms(tiny.gm, ["match_rope_pattern"])
    assert matches(records) == {"match_rope_pattern": 2}
    assert count(tiny.gm, aten.cat.default) == 1
    assert max_rel_err(tiny.gm, tiny.ref, ctx) < 1e-5


class _InterleavedRope(nn.Module):
    """DeepSeek's apply_rotary_pos_emb_interleave on [b, n, s, d]."""

    def forward(self, q, k, cos, sin):
        def deinterleave(x):
            b, h, s, d = x.shape
            return x.view(b, h, s, d // 2, 2).transpose(4, 3).reshape(b, h, s, d)

        q, k = deinterleave(q), deinterleave(k)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


class _ComplexRope(nn.Module):
    """Meta Llama's apply_rotary_emb on [b, s, n, d] with freqs_cis [s, d/2]."""

    def forward(self, xq, xk, freqs_cis):
        xq_ = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
        xk_ = torch.view_as_complex(xk.float().reshape(*xk.shape[:-1], -1, 2))
        freqs = freqs_cis.view(1, xq_.shape[1], 1, xq_.shape[-1])
        xq_out = torch.view_as_real(xq_ * freqs).flatten(3)
        xk_out = torch.view_as_real(xk_ * freqs).flatten(3)
        return xq_out.type_as(xq), xk_out.type_as(xk)


def _tables(b, s, d):
    angles = torch.rand(b, s, d // 2) * 3
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos(), emb.sin()


def test_interleaved_rope():
    module = _InterleavedRope()
    cos, sin = _tables(2, 5, 8)
    args = (torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8), cos, sin)
    dyn = {0: {0: "b", 2: "s"}, 1: {0: "b", 2: "s"}, 2: {0: "b", 1: "s"}, 3: {0: "b", 1: "s"}}
    gm = export_toy(module, *args, dynamic=dyn)
    records, _ = run_transforms(gm, ["match_rope_pattern"])
    assert matches(records) == {"match_rope_pattern": 1}
    assert count(gm, AD.torch_rope_with_qk_interleaving.default) == 1 and count(gm, aten.neg.default) == 0
    cos, sin = _tables(3, 7, 8)
    args = (torch.randn(3, 4, 7, 8), torch.randn(3, 2, 7, 8), cos, sin)
    for got, want in zip(gm(*args), module(*args)):
        torch.testing.assert_close(got, want)


def test_complex_freqs_rope():
    module = _ComplexRope()
    freqs = torch.polar(torch.ones(5, 4), torch.rand(5, 4) * 3)
    args = (torch.randn(2, 5, 4, 8), torch.randn(2, 5, 2, 8), freqs)
    gm = export_toy(module, *args, dynamic={0: {0: "b", 1: "s"}, 1: {0: "b", 1: "s"}, 2: {0: "s"}})
    records, _ = run_transforms(gm, ["match_rope_pattern"])
    assert matches(records) == {"match_rope_pattern": 1}
    (rope,) = nodes_of(gm, AD.torch_rope_with_complex_freqs.default)
    assert rope.args[3] == 2 and count(gm, aten.view_as_complex.default) == 0
    freqs = torch.polar(torch.ones(7, 4), torch.rand(7, 4) * 3)
    args = (torch.randn(3, 7, 4, 8), torch.randn(3, 7, 2, 8), freqs)
    for got, want in zip(gm(*args), module(*args)):
        torch.testing.assert_close(got, want)


class _NotRope(nn.Module):
    def forward(self, x, c, s):  # the sin factor is a 4-D input, not unsqueeze(sin, head dim)
        return x * c.unsqueeze(1) + _rotate_half(x) * s


def test_graph_without_the_pattern_is_unchanged():
    args = (torch.randn(2, 3, 5, 8), torch.randn(2, 5, 8), torch.randn(2, 1, 5, 8))
    gm = export_toy(_NotRope(), *args, dynamic={0: {0: "b"}, 1: {0: "b"}, 2: {0: "b"}})
    before = ops_in(gm)
    records, ctx = run_transforms(gm, ["match_rope_pattern"])
    assert matches(records) == {"match_rope_pattern": 0}
    assert ops_in(gm) == before
    (miss,) = ctx.misses["rope"]
    assert miss["reason"] == "cos/sin are not unsqueezed on the head dim (1 or 2)"


def test_views_after_the_rope_become_reshapes():
    """GPT-NeoX-Japanese: cat([rope(q_rot), q_pass]).view(b * n, s, d) relied on the strides of HF's own result;
    after the match those views are reshapes, and the graph still equals HF."""
    tiny = export_tiny("gpt_neox_japanese", "eager")
    views = count(tiny.gm, aten.view.default)
    records, ctx = run_transforms(tiny.gm, ["match_rope_pattern"])
    assert matches(records) == {"match_rope_pattern": 2}
    assert count(tiny.gm, aten.view.default) < views and count(tiny.gm, aten.reshape.default) >= 4
    assert max_rel_err(tiny.gm, tiny.ref, ctx) < 1e-5


def test_a_scalar_operand_is_not_a_rope_and_does_not_crash():
    """GPT-1 adds and multiplies by Python numbers where rotate-half would sit (`is_op` of a float is False)."""
    tiny = export_tiny("openai-gpt", "eager")
    before = ops_in(tiny.gm)
    records, ctx = run_transforms(tiny.gm, ["match_rope_pattern"])
    assert matches(records) == {"match_rope_pattern": 0} and ops_in(tiny.gm) == before
    assert not [r for r in records if r.error]


def test_gpt_oss_halves_with_half_width_tables():
    """GPT-OSS: lo * c - hi * s, hi * c + lo * s over chunk halves (c, s of width d/2) is the explicit op with
    doubled tables, in the real model and with the same logits."""
    tiny = export_tiny("gpt_oss", "eager")
    records, ctx = run_transforms(tiny.gm, ["match_rope_pattern"])
    assert matches(records) == {"match_rope_pattern": 2}
    ropes = nodes_of(tiny.gm, AD.torch_rope_with_explicit_cos_sin.default)
    assert len(ropes) == 2 and count(tiny.gm, aten.chunk.default) == 0
    assert max_rel_err(tiny.gm, tiny.ref, ctx) < 1e-5
