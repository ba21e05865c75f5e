"""match_attention_layout: torch_attention in bnsd gets transposed inputs/outputs and layout bsnd (or back)."""

from __future__ import annotations

import torch
from torch import nn

from autodeploy_cli.ops import load_ops
from tests.transforms.pattern_helpers import (
    count, export_tiny, export_toy, matches, max_rel_err, nodes_of, ops_in, run_transforms,
)

load_ops()
ATTN = torch.ops.auto_deploy.torch_attention.default
aten = torch.ops.aten


def test_bnsd_attention_becomes_bsnd():
    tiny = export_tiny("mistral", "eager")
    run_transforms(tiny.gm, ["match_eager_attention"])
    transposes = count(tiny.gm, aten.transpose.int)
    records, ctx = run_transforms(tiny.gm, ["match_attention_layout"])
    assert matches(records) == {"match_attention_layout": 2}
    attn = nodes_of(tiny.gm, ATTN)
    assert [n.kwargs["layout"] for n in attn] == ["bsnd", "bsnd"]
    assert [tuple(n.meta["val"].shape[2:]) for n in attn] == [(4, 16), (4, 16)]  # [b, s, n, d]
    assert count(tiny.gm, aten.transpose.int) == transposes + 2 * 4  # q, k, v in + out, per layer
    assert max_rel_err(tiny.gm, tiny.ref, ctx) < 1e-5

    records, _ = run_transforms(tiny.gm, ["match_attention_layout"])
    assert matches(records) == {"match_attention_layout": 0}


class _BsndAttention(nn.Module):
    """A model that calls the canonical op directly, already in bsnd."""

    def forward(self, q, k, v):
        return torch.ops.auto_deploy.torch_attention(q, k, v, is_causal=True, layout="bsnd")


def test_back_to_bnsd_when_asked_and_untouched_when_already_right():
    args = [torch.randn(2, 5, 4, 8) for _ in range(3)]
    module = _BsndAttention()
    gm = export_toy(module, *args, dynamic={i: {0: "b", 1: "s"} for i in range(3)})
    before = ops_in(gm)
    records, _ = run_transforms(gm, ["match_attention_layout"])
    assert matches(records) == {"match_attention_layout": 0} and ops_in(gm) == before

    records, _ = run_transforms(gm, ["match_attention_layout"],
                                options={"match_attention_layout": {"attn_layout": "bnsd"}})
    assert matches(records) == {"match_attention_layout": 1}
    assert [n.kwargs["layout"] for n in nodes_of(gm, ATTN)] == ["bnsd"]
    args = [torch.randn(3, 6, 4, 8) for _ in range(3)]
    torch.testing.assert_close(gm(*args), module(*args))
