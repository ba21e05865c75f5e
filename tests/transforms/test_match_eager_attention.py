"""match_eager_attention: HF eager attention (matmul, scale, soft-cap, mask, softmax, dropout, matmul) becomes
torch_attention; the masks transformers builds become is_causal / sliding_window flags."""

from __future__ import annotations

import torch
from torch import nn

from autodeploy_cli.ops import load_ops
from autodeploy_cli.graph.core import is_op
from autodeploy_cli.pipeline.interface import PassContext
from tests.transforms.pattern_helpers import (
    count, export_tiny, export_toy, matches, max_rel_err, nodes_of, ops_in, run_transforms,
)

load_ops()
ATTN = torch.ops.auto_deploy.torch_attention.default
aten = torch.ops.aten


def _attn_kwargs(gm):
    return [{k: n.kwargs[k] for k in ("attn_mask", "is_causal", "scale", "sliding_window", "logit_cap", "layout")}
            for n in nodes_of(gm, ATTN)]


def test_llama_eager_attention_becomes_causal_torch_attention():
    tiny = export_tiny("llama", "eager")
    records, ctx = run_transforms(tiny.gm, ["match_eager_attention"])
    assert matches(records) == {"match_eager_attention": 2}
    assert _attn_kwargs(tiny.gm) == [dict(attn_mask=None, is_causal=True, scale=0.25, sliding_window=None,
                                          logit_cap=None, layout="bnsd")] * 2
    left = [n for n in tiny.gm.graph.nodes if is_op(n, (aten.softmax.int, aten.dropout.default, aten.matmul.default))
            and n.meta["val"].dim() == 4]  # (transformers 5.17's RoPE has a 3-D matmul of its own)
    assert not left
    assert max_rel_err(tiny.gm, tiny.ref, ctx) < 1e-5

    records, _ = run_transforms(tiny.gm, ["match_eager_attention"])
    assert matches(records) == {"match_eager_attention": 0}


def test_gemma2_soft_capping_and_sliding_window():
    tiny = export_tiny("gemma2", "eager")
    records, ctx = run_transforms(tiny.gm, ["match_eager_attention"])
    assert matches(records) == {"match_eager_attention": 2}
    kw = _attn_kwargs(tiny.gm)
    assert [k["logit_cap"] for k in kw] == [50.0, 50.0]
    assert [k["sliding_window"] for k in kw] == [4, None]  # layer 0 slides (window 4), layer 1 is global
    assert all(k["is_causal"] and k["attn_mask"] is None for k in kw)
    assert count(tiny.gm, aten.tanh.default) == 1  # only the final-logit soft-cap is left
    assert max_rel_err(tiny.gm, tiny.ref, ctx) < 1e-5


class _PaddingMaskAttention(nn.Module):
    """Eager attention with a padding mask computed from the inputs: not causal, so the mask must stay."""

    def forward(self, q, k, v, keep):  # q, k, v: [b, n, s, d]; keep: [b, s] of 0/1
        mask = (1.0 - keep)[:, None, None, :] * -1e9
        w = torch.matmul(q, k.transpose(2, 3)) / 4.0 + mask
        return torch.matmul(torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype), v)


def test_non_causal_mask_is_kept():
    module = _PaddingMaskAttention()
    args = (torch.randn(2, 2, 5, 16), torch.randn(2, 2, 5, 16), torch.randn(2, 2, 5, 16), torch.ones(2, 5))
    gm = export_toy(module, *args, dynamic={0: {0: "b", 2: "s"}, 1: {0: "b", 2: "s"}, 2: {0: "b", 2: "s"},
                                            3: {0: "b", 1: "s"}})
    records, _ = run_transforms(gm, ["match_eager_attention"])
    assert matches(records) == {"match_eager_attention": 1}
    (kw,) = _attn_kwargs(gm)
    assert kw["attn_mask"] is not None and kw["is_causal"] is False and kw["scale"] == 0.25
    q, k, v = (torch.randn(3, 2, 6, 16) for _ in range(3))
    keep = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 0]], dtype=torch.float32)
    torch.testing.assert_close(gm(q, k, v, keep), module(q, k, v, keep), rtol=1e-5, atol=1e-5)


class _NoAttention(nn.Module):
    def forward(self, x):  # a softmax that is not attention (2-D, no matmul with v)
        return torch.softmax(x @ x.transpose(0, 1), dim=-1)


def test_graph_without_the_pattern_is_unchanged():
    gm = export_toy(_NoAttention(), torch.randn(5, 8), dynamic={0: {0: "s"}})
    before = ops_in(gm)
    records, ctx = run_transforms(gm, ["match_eager_attention"])
    assert matches(records) == {"match_eager_attention": 0}
    assert ops_in(gm) == before
    assert not ctx.misses  # 2-D softmax is not an attention candidate


# --- older forms (issue 21): 3-D products between views, fills and clamps, ALiBi biases, masks from buffers ---------
def _alibi_slopes(gm):
    return [getattr(gm, n.kwargs["alibi_slopes"].target) for n in nodes_of(gm, ATTN)]


def _source_left(gm):
    return [n for n in gm.graph.nodes if is_op(n, (aten.softmax.int, aten.bmm.default, aten.baddbmm.default))
            and n.meta["val"].dim() >= 3]


def test_bloom_baddbmm_with_alibi_becomes_causal_attention_with_slopes():
    """Bloom: baddbmm(alibi, q3, k3^T) on [b*n, s, d], view to 4-D, + mask, softmax, bmm(p3, v3)."""
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    tiny = export_tiny("bloom", "eager")
    records, ctx = run_transforms(tiny.gm, ["match_eager_attention"])
    assert matches(records) == {"match_eager_attention": 2}
    assert not _source_left(tiny.gm)
    assert _attn_kwargs(tiny.gm) == [dict(attn_mask=None, is_causal=True, scale=0.25, sliding_window=None,
                                          logit_cap=None, layout="bnsd")] * 2
    hf = build_alibi_tensor(torch.ones(1, 3, dtype=torch.long), 4, torch.float32)[:, 0]  # [n, 3]: slope * k
    assert all(torch.equal(ctx.weight_hooks[n.kwargs["alibi_slopes"].target]({"w": torch.ones(1)}), hf[:, 1])
               for n in nodes_of(tiny.gm, ATTN))
    assert max_rel_err(tiny.gm, tiny.ref, ctx) < 1e-5  # two prefill shapes and a batch of 1-token sequences

    records, _ = run_transforms(tiny.gm, ["match_eager_attention"], ctx)
    assert matches(records) == {"match_eager_attention": 0}


def test_mpt_position_bias_and_masked_fill():
    """MPT: q @ k^T * scale + position_bias[..., -s:] then masked_fill(mask, min): ALiBi from a max_seq_len table."""
    tiny = export_tiny("mpt", "eager")
    records, ctx = run_transforms(tiny.gm, ["match_eager_attention"])
    assert matches(records) == {"match_eager_attention": 2}
    assert count(tiny.gm, aten.masked_fill.Scalar) == 0 and not _source_left(tiny.gm)
    assert all(n.kwargs["attn_mask"] is None and n.kwargs["is_causal"] for n in nodes_of(tiny.gm, ATTN))
    slopes = [ctx.weight_hooks[n.kwargs["alibi_slopes"].target]({"w": torch.ones(1)}) for n in nodes_of(tiny.gm, ATTN)]
    want = torch.tensor([2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8])  # MPT: 1 / 2^(8 i / n), 4 heads
    assert all(torch.allclose(s, want, rtol=1e-6) for s in slopes)
    assert max_rel_err(tiny.gm, tiny.ref, ctx) < 1e-5


def test_xglm_3d_softmax_between_views_and_max_clamp():
    """XGLM: bmm on [b*n, s, d], view 4-D + mask, max(x, finfo.min), view back to 3-D, softmax, bmm; q pre-scaled."""
    tiny = export_tiny("xglm", "eager")
    records, ctx = run_transforms(tiny.gm, ["match_eager_attention"])
    assert matches(records) == {"match_eager_attention": 2}
    assert count(tiny.gm, aten.max.other) == 0 and not _source_left(tiny.gm)
    assert _attn_kwargs(tiny.gm) == [dict(attn_mask=None, is_causal=True, scale=1.0, sliding_window=None,
                                          logit_cap=None, layout="bnsd")] * 2
    assert max_rel_err(tiny.gm, tiny.ref, ctx) < 1e-5


def test_gpt_neo_mask_buffers_give_global_and_local_layers():
    """GPT-Neo: where(bias_buffer[.., :s, :s], q @ k^T, min) + mask, no scale. The buffers (tril, and tril minus the
    window for local layers) are meta in the graph; their values come from the factory's CPU buffers."""
    import types

    tiny = export_tiny("gpt_neo", "eager")
    buffers = dict(tiny.ref.named_buffers())
    ctx = PassContext(config=None, factory=types.SimpleNamespace(buffer_values=lambda: buffers),
                      device=torch.device("cpu"))
    records, ctx = run_transforms(tiny.gm, ["match_eager_attention"], ctx)
    assert matches(records) == {"match_eager_attention": 2}
    assert [(k["sliding_window"], k["scale"], k["is_causal"], k["attn_mask"]) for k in _attn_kwargs(tiny.gm)] == [
        (None, 1.0, True, None), (4, 1.0, True, None)]
    assert max_rel_err(tiny.gm, tiny.ref, ctx) < 1e-5

    plain = export_tiny("gpt_neo", "eager")  # without buffer values the masks cannot be read: kept, with the reason
    run_transforms(plain.gm, ["match_eager_attention"])
    kept = nodes_of(plain.gm, ATTN)
    assert all(n.kwargs["attn_mask"] is not None for n in kept)
    assert kept[0].meta["ad_mask_reason"].startswith("mask is not a function of the token positions alone")


def test_scores_multiplied_by_a_mask_tensor_are_a_recorded_miss():
    """GPT-1: w * b + -1e4 * (1 - b): not a form the matcher converts; it says why and leaves the graph alone."""
    tiny = export_tiny("openai-gpt", "eager")
    before = ops_in(tiny.gm)
    records, ctx = run_transforms(tiny.gm, ["match_eager_attention"])
    assert matches(records) == {"match_eager_attention": 0} and ops_in(tiny.gm) == before
    assert {m["reason"] for m in ctx.misses["attention"]} == {"scores come from `mul.Tensor`, not a q @ k^T product"}
    assert {m["layer"] for m in ctx.misses["attention"]} == {0, 1}
