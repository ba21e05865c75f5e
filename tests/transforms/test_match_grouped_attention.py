"""match_grouped_attention: attention over repeat_kv'ed K/V becomes native grouped-query torch_attention."""

from __future__ import annotations

import torch
from torch import nn

from autodeploy_cli.ops import load_ops
from tests.transforms.pattern_helpers import (
    count, export_tiny, export_toy, matches, max_rel_err, nodes_of, ops_in, run_transforms,
)

load_ops()
ATTN = torch.ops.auto_deploy.torch_attention.default
REPEAT_KV = torch.ops.auto_deploy.torch_attention_repeat_kv.default
SDPA = torch.ops.aten.scaled_dot_product_attention.default


def _kv_heads(gm):
    return [(n.args[1].meta["val"].shape[1], n.args[2].meta["val"].shape[1]) for n in nodes_of(gm, ATTN)]


def test_sdpa_over_repeated_kv_becomes_grouped_torch_attention():
    tiny = export_tiny("llama", "sdpa")
    run_transforms(tiny.gm, ["match_repeat_kv"])
    assert count(tiny.gm, SDPA) == 2 and count(tiny.gm, REPEAT_KV) == 4
    records, ctx = run_transforms(tiny.gm, ["match_grouped_attention"])
    assert matches(records) == {"match_grouped_attention": 2}
    assert count(tiny.gm, SDPA) == 0 and count(tiny.gm, REPEAT_KV) == 0
    assert _kv_heads(tiny.gm) == [(2, 2), (2, 2)]  # the 2 kv heads, not the 4 repeated ones
    assert all(n.kwargs["is_causal"] and n.kwargs["attn_mask"] is None for n in nodes_of(tiny.gm, ATTN))
    assert max_rel_err(tiny.gm, tiny.ref, ctx) < 1e-5

    records, _ = run_transforms(tiny.gm, ["match_grouped_attention"])
    assert matches(records) == {"match_grouped_attention": 0}


def test_eager_torch_attention_over_repeated_kv_drops_the_repeat():
    tiny = export_tiny("qwen2", "eager")
    run_transforms(tiny.gm, ["match_repeat_kv", "match_eager_attention"])
    assert count(tiny.gm, REPEAT_KV) == 4
    records, ctx = run_transforms(tiny.gm, ["match_grouped_attention"])
    assert matches(records) == {"match_grouped_attention": 2}
    assert count(tiny.gm, REPEAT_KV) == 0 and _kv_heads(tiny.gm) == [(2, 2), (2, 2)]
    assert max_rel_err(tiny.gm, tiny.ref, ctx) < 1e-5


class _PlainSdpa(nn.Module):
    def forward(self, q, k, v):
        return nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def test_graph_without_repeat_kv_is_unchanged():
    args = [torch.randn(2, 4, 5, 8) for _ in range(3)]
    gm = export_toy(_PlainSdpa(), *args, dynamic={i: {0: "b", 2: "s"} for i in range(3)})
    before = ops_in(gm)
    records, _ = run_transforms(gm, ["match_grouped_attention"])
    assert matches(records) == {"match_grouped_attention": 0}
    assert ops_in(gm) == before
