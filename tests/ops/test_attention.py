"""torch_attention (the op other helpers build on): native GQA, causal bottom-right, sliding window, soft-cap,
sinks and both layouts, against F.scaled_dot_product_attention and explicit formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from autodeploy_cli.ops import load_ops

load_ops()
ATTN = torch.ops.auto_deploy.torch_attention


def _qkv(b=2, n=4, n_kv=2, s=6, s_kv=6, d=8):
    return torch.randn(b, n, s, d), torch.randn(b, n_kv, s_kv, d), torch.randn(b, n_kv, s_kv, d)


def test_gqa_causal_equals_sdpa_in_both_layouts():
    q, k, v = _qkv()
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(ATTN(q, k, v, is_causal=True, layout="bnsd"), want)
    got = ATTN(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=True, layout="bsnd")
    torch.testing.assert_close(got, want.transpose(1, 2))


def test_causal_is_bottom_right_for_a_query_suffix():
    q, k, v = _qkv(s=2, s_kv=5)  # 2 new tokens after 3 cached ones
    mask = torch.ones(2, 5, dtype=torch.bool).tril(diagonal=3)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(ATTN(q, k, v, is_causal=True, layout="bnsd"), want)


def test_sliding_window_bool_and_additive_masks():
    q, k, v = _qkv(s=7, s_kv=7)
    i = torch.arange(7)
    visible = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < 3)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, enable_gqa=True)
    torch.testing.assert_close(ATTN(q, k, v, is_causal=True, sliding_window=3, layout="bnsd"), want)
    torch.testing.assert_close(ATTN(q, k, v, attn_mask=visible, is_causal=False, layout="bnsd"), want)
    additive = torch.zeros(7, 7).masked_fill(~visible, -1e30)
    torch.testing.assert_close(ATTN(q, k, v, attn_mask=additive, is_causal=False, layout="bnsd"), want)


def test_logit_cap_and_scale():
    q, k, v = _qkv(n_kv=4)
    scores = q @ k.transpose(-1, -2) * 0.3
    scores = 20.0 * torch.tanh(scores / 20.0)
    scores = scores.masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), -math.inf)
    want = torch.softmax(scores, -1) @ v
    torch.testing.assert_close(ATTN(q, k, v, is_causal=True, scale=0.3, logit_cap=20.0, layout="bnsd"), want)


def test_sinks_join_the_softmax():
    q, k, v = _qkv(n_kv=4, s=3, s_kv=3)
    sinks = torch.randn(4)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    scores = scores.masked_fill(~torch.ones(3, 3, dtype=torch.bool).tril(), -math.inf)
    full = torch.cat([scores, sinks.view(1, 4, 1, 1).expand(2, 4, 3, 1)], dim=-1)
    want = torch.softmax(full, -1)[..., :-1] @ v
    torch.testing.assert_close(ATTN(q, k, v, is_causal=True, sinks=sinks, layout="bnsd"), want)


@pytest.mark.parametrize("layout", ["bnsd", "bsnd"])
def test_opcheck(layout):
    q, k, v = _qkv(s=3, s_kv=3)
    if layout == "bsnd":
        q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    torch.library.opcheck(ATTN.default, (q, k, v), {"layout": layout}, test_utils=("test_schema", "test_faketensor"))


def test_alibi_equals_hf_absolute_key_bias():
    """HF (Bloom) adds slopes[h] * k_pos; ours adds slopes[h] * (k_pos - q_pos): equal after the softmax."""
    q, k, v = _qkv(n_kv=4, s=5, s_kv=5)
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625])
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(8) + slopes.view(1, 4, 1, 1) * torch.arange(5.0)
    scores = scores.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), -math.inf)
    want = torch.softmax(scores, -1) @ v
    torch.testing.assert_close(ATTN(q, k, v, is_causal=True, alibi_slopes=slopes, layout="bnsd"), want)


def test_alibi_on_a_query_suffix_equals_the_full_rows():
    """What a KV cache relies on: the last 2 queries over 6 keys give the last 2 rows of the full attention."""
    q, k, v = _qkv(n=4, n_kv=1, s=6, s_kv=6)
    slopes = torch.tensor([0.7, 0.3, 0.1, 0.02])
    full = ATTN(q, k, v, is_causal=True, alibi_slopes=slopes, layout="bnsd")
    suffix = ATTN(q[:, :, 4:], k, v, is_causal=True, alibi_slopes=slopes, layout="bnsd")
    torch.testing.assert_close(suffix, full[:, :, 4:])


def test_opcheck_alibi():
    q, k, v = _qkv(s=3, s_kv=3)
    torch.library.opcheck(ATTN.default, (q, k, v), {"layout": "bnsd", "alibi_slopes": torch.rand(4)},
                          test_utils=("test_schema", "test_faketensor"))
