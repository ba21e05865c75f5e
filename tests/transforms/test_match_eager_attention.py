"""match_eager_attention: HF eager attention (matmul, scale, soft-cap, mask, softmax, dropout, matmul) becomes
torch_attention; the masks transformers builds become is_causal / sliding_window flags."""

from __future__ import annotations

import torch
from torch import nn

from autodeploy_cli.ops import load_ops
from autodeploy_cli.graph.core import is_op
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
